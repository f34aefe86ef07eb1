"""Loading kohya, diffusers and peft files against a base: key mapping, checks, metadata."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from test_adapters_support import lora_factors, tiny, write_kohya

from studio.adapters import AdapterWarning, load_adapter
from studio.errors import StudioError, UnsafeFileError
from studio.formats.kohya_names import kohya_module_index
from studio.models.family import ModelFamily

SD1, SDXL = ModelFamily.SD1, ModelFamily.SDXL


@pytest.fixture(scope="module")
def sd1():
    return tiny("sd1")


def peft_pipeline():
    """A tiny SD 1.x pipeline with peft adapters: alpha != rank, an alpha_pattern, rsLoRA on the TE."""
    pipe = tiny("sd1")
    unet_config = LoraConfig(
        r=4,
        lora_alpha=8,
        alpha_pattern={"to_k": 2},
        target_modules=["to_q", "to_k", "conv1"],
        init_lora_weights="gaussian",
    )
    inject_adapter_in_model(unet_config, pipe.unet)
    te_config = LoraConfig(
        r=2, lora_alpha=3, use_rslora=True, target_modules=["q_proj", "fc1"], init_lora_weights="gaussian"
    )
    inject_adapter_in_model(te_config, pipe.text_encoder)
    for module in pipe.unet.modules():  # peft's gaussian init leaves B = 0; give ΔW some content
        if isinstance(module, LoraLayer):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.1)
    for module in pipe.text_encoder.modules():
        if isinstance(module, LoraLayer):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.1)
    return pipe


def peft_deltas(pipe) -> dict[tuple[str, str], torch.Tensor]:
    return {
        (component, path): module.get_delta_weight("default").detach()
        for component in ("unet", "text_encoder")
        for path, module in getattr(pipe, component).named_modules()
        if isinstance(module, LoraLayer)
    }


def assert_same_deltas(adapter, expected, pipe):
    assert set(adapter.layers) == set(expected)
    for key, delta in expected.items():
        weight = pipe.components[key[0]].get_submodule(key[1]).weight
        torch.testing.assert_close(adapter.layers[key].delta(tuple(weight.shape)), delta, msg=str(key))


def test_diffusers_pipeline_file_matches_peft(tmp_path, sd1):
    from diffusers import StableDiffusionPipeline

    source = peft_pipeline()
    StableDiffusionPipeline.save_lora_weights(
        tmp_path,
        unet_lora_layers=get_peft_model_state_dict(source.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(source.text_encoder),
        unet_lora_adapter_metadata=source.unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=source.text_encoder.peft_config["default"].to_dict(),
    )
    adapter = load_adapter(tmp_path / "pytorch_lora_weights.safetensors", sd1.components, SD1)
    assert adapter.report.formats == ("diffusers",)
    assert_same_deltas(adapter, peft_deltas(source), sd1)


def test_peft_file_with_adapter_config(tmp_path, sd1):
    source = peft_pipeline()
    state = {f"base_model.model.{k}": v for k, v in get_peft_model_state_dict(source.unet).items()}
    save_file(state, str(tmp_path / "adapter_model.safetensors"))
    config = source.unet.peft_config["default"].to_dict()
    (tmp_path / "adapter_config.json").write_text(json.dumps(config, default=list))
    adapter = load_adapter(tmp_path / "adapter_model.safetensors", sd1.components, SD1)
    assert adapter.report.formats == ("peft",)
    unet_only = {k: v for k, v in peft_deltas(source).items() if k[0] == "unet"}
    assert_same_deltas(adapter, unet_only, sd1)


def test_older_diffusers_key_styles(tmp_path, sd1):
    block = "unet.down_blocks.1.attentions.0.transformer_blocks.0"
    down, up = torch.randn(4, 64), torch.randn(64, 4)
    tensors = {
        f"{block}.attn1.processor.to_q_lora.down.weight": down,
        f"{block}.attn1.processor.to_q_lora.up.weight": up,
        f"{block}.attn1.processor.to_out_lora.down.weight": down.clone(),
        f"{block}.attn1.processor.to_out_lora.up.weight": up.clone(),
        f"{block}.attn2.to_v.lora.down.weight": torch.randn(4, 32),
        f"{block}.attn2.to_v.lora.up.weight": up.clone(),
        f"{block}.attn2.to_v.alpha": torch.tensor(2.0),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight": torch.randn(
            2, 32
        ),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight": torch.randn(
            32, 2
        ),
    }
    save_file(tensors, str(tmp_path / "old.safetensors"))
    adapter = load_adapter(tmp_path / "old.safetensors", sd1.components, SD1)
    prefix = block.removeprefix("unet.")
    assert set(adapter.layers) == {
        ("unet", f"{prefix}.attn1.to_q"),
        ("unet", f"{prefix}.attn1.to_out.0"),
        ("unet", f"{prefix}.attn2.to_v"),
        ("text_encoder", "encoder.layers.0.self_attn.q_proj"),  # transformers 5.x: no text_model level
    }
    assert adapter.layers[("unet", f"{prefix}.attn2.to_v")].scale == 0.5
    assert adapter.layers[("unet", f"{prefix}.attn1.to_q")].scale == 1.0


def test_sdxl_kohya_with_diffusers_block_names(tmp_path):
    pipe = tiny("sdxl")
    factors = lora_factors(pipe, "sdxl", seed=1, conv=True)
    index = kohya_module_index(pipe.components, SDXL)
    renamed = {}
    for name, value in factors.items():
        ref = index[name]
        renamed[f"lora_unet_{ref.path.replace('.', '_')}" if ref.component == "unet" else name] = value
    assert any(n.startswith("lora_unet_input_blocks") for n in factors)
    assert any(n.startswith("lora_unet_down_blocks") for n in renamed)
    sgm = load_adapter(write_kohya(tmp_path / "sgm.safetensors", factors), pipe.components, SDXL)
    diffusers_named = load_adapter(write_kohya(tmp_path / "dn.safetensors", renamed), pipe.components, SDXL)
    assert set(sgm.layers) == set(diffusers_named.layers) and len(sgm.layers) == len(factors)
    for key, layer in sgm.layers.items():
        assert torch.equal(layer.down, diffusers_named.layers[key].down)


def test_text_encoder_name_variants_on_sd1(tmp_path, sd1):
    down, up = torch.randn(2, 32), torch.randn(32, 2)
    tensors = {}
    for name in ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", "lora_te_encoder_layers_1_mlp_fc2"):
        tensors[f"{name}.lora_down.weight"] = down if "q_proj" in name else torch.randn(2, 37)
        tensors[f"{name}.lora_up.weight"] = up.clone()
    save_file(tensors, str(tmp_path / "te.safetensors"))
    adapter = load_adapter(tmp_path / "te.safetensors", sd1.components, SD1)
    assert set(adapter.layers) == {
        ("text_encoder", "encoder.layers.0.self_attn.q_proj"),
        ("text_encoder", "encoder.layers.1.mlp.fc2"),
    }


def test_family_mismatch_is_refused(tmp_path, sd1):
    sdxl = tiny("sdxl")
    sdxl_file = write_kohya(tmp_path / "xl.safetensors", lora_factors(sdxl, "sdxl", seed=1))
    with pytest.raises(StudioError, match=r"made for SDXL \(its key names say so\).*SD 1\.x") as info:
        load_adapter(sdxl_file, sd1.components, SD1)
    assert str(sdxl_file) in str(info.value)

    factors = lora_factors(sd1, "sd1", seed=1)
    tagged = write_kohya(
        tmp_path / "tagged.safetensors", factors, {"ss_base_model_version": "sdxl_base_v1-0"}
    )
    with pytest.raises(StudioError, match=r"SDXL \(its metadata say so\)"):
        load_adapter(tagged, sd1.components, SD1)
    v2 = write_kohya(tmp_path / "v2.safetensors", factors, {"ss_v2": "True"})
    with pytest.raises(StudioError, match=r"SD 2\.x"):
        load_adapter(v2, sd1.components, SD1)

    # An SD 1.x file without metadata on SDXL: names resolve, shapes do not.
    plain = write_kohya(tmp_path / "plain.safetensors", factors)
    with pytest.raises(StudioError, match=r"shape mismatch for 'lora_unet_\w+attn2_to_k'"):
        load_adapter(plain, sdxl.components, SDXL)


def test_unmatched_modules_warn_by_name_and_strict_raises(tmp_path, sd1):
    factors = lora_factors(sd1, "sd1", seed=2, te=False)
    factors["lora_unet_down_blocks_7_attentions_0_proj_in"] = (torch.randn(4, 64), torch.randn(64, 4), 4.0)
    path = write_kohya(tmp_path / "extra.safetensors", factors)
    save_file({**load_file(str(path)), "bundle_emb.mystyle.string_to_param.*": torch.randn(1, 32)}, str(path))
    with pytest.warns(AdapterWarning, match="lora_unet_down_blocks_7_attentions_0_proj_in") as caught:
        adapter = load_adapter(path, sd1.components, SD1)
    assert "bundle_emb.mystyle.string_to_param.*" in str(caught[0].message)
    assert adapter.report.unmatched == (
        "lora_unet_down_blocks_7_attentions_0_proj_in",
        "bundle_emb.mystyle.string_to_param.*",
    )
    assert "lora_unet_down_blocks_7_attentions_0_proj_in.alpha" in adapter.report.unmatched_keys
    assert adapter.report.applied == len(factors) - 1
    with pytest.raises(StudioError, match="NOT applied: lora_unet_down_blocks_7_attentions_0_proj_in"):
        load_adapter(path, sd1.components, SD1, strict=True)


def test_shape_mismatch_names_the_module(tmp_path, sd1):
    factors = lora_factors(sd1, "sd1", seed=3, te=False)
    name = next(n for n in factors if n.endswith("attn2_to_k"))
    down, up, alpha = factors[name]
    factors[name] = (torch.randn(4, 48), up, alpha)
    with pytest.raises(
        StudioError, match=rf"shape mismatch for '{name}'.*\[64, 48\] update for a \[64, 32\] weight"
    ):
        load_adapter(write_kohya(tmp_path / "bad.safetensors", factors), sd1.components, SD1)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"on_input": torch.tensor(1.0)}, "IA3"),
        ({"lora_foo.weight": torch.randn(2)}, "unrecognised tensor"),
    ],
)
def test_unsupported_kinds_are_refused(tmp_path, sd1, extra, message):
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    tensors = {f"{name}.lora_down.weight": torch.randn(4, 32), f"{name}.lora_up.weight": torch.randn(64, 4)}
    tensors |= {f"{name}.{role}": value for role, value in extra.items()}
    save_file(tensors, str(tmp_path / "x.safetensors"))
    with pytest.raises(StudioError, match=message):
        load_adapter(tmp_path / "x.safetensors", sd1.components, SD1)


def test_pickles_corrupt_and_empty_files_are_refused(tmp_path, sd1):
    for suffix in (".ckpt", ".pt", ".bin"):
        (tmp_path / f"x{suffix}").write_bytes(b"\x80\x04pickle")
        with pytest.raises(UnsafeFileError, match="pickle"):
            load_adapter(tmp_path / f"x{suffix}", sd1.components, SD1)
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(StudioError, match="junk.safetensors"):
        load_adapter(tmp_path / "junk.safetensors", sd1.components, SD1)
    save_file({}, str(tmp_path / "empty.safetensors"))
    with pytest.raises(StudioError, match="no tensors"):
        load_adapter(tmp_path / "empty.safetensors", sd1.components, SD1)
    with pytest.raises(StudioError, match="not found"):
        load_adapter(tmp_path / "missing.safetensors", sd1.components, SD1)


def test_embedded_metadata_trigger_tags_base_rank(tmp_path, sd1):
    factors = lora_factors(sd1, "sd1", seed=4, te=False)
    tag_frequency = {"10_mystyle": {"mystyle": 10, "red": 3}, "5_misc": {"red": 4, " blue": 1}}
    metadata = {
        "ss_tag_frequency": json.dumps(tag_frequency),
        "ss_sd_model_name": "v1-5-pruned.safetensors",
        "ss_network_dim": "4",
        "ss_network_alpha": "2.0",
        "ss_network_module": "networks.lora",
        "ss_output_name": "mystyle_v1",
    }
    info = load_adapter(write_kohya(tmp_path / "a.safetensors", factors, metadata), sd1.components, SD1).info
    assert info.tags == [("mystyle", 10), ("red", 7), ("blue", 1)]
    assert (info.trigger, info.base_model, info.rank, info.alpha, info.title) == (
        "mystyle",
        "v1-5-pruned.safetensors",
        "4",
        "2.0",
        "mystyle_v1",
    )

    path = write_kohya(tmp_path / "b.safetensors", factors, metadata)
    path.with_suffix(".json").write_text(
        json.dumps({"activation text": "mystyle art", "preferred weight": 0.8})
    )
    info = load_adapter(path, sd1.components, SD1).info
    assert (info.trigger, info.preferred_weight) == ("mystyle art", 0.8)

    spec = {**metadata, "modelspec.trigger_phrase": "by mystyle"}
    info = load_adapter(write_kohya(tmp_path / "c.safetensors", factors, spec), sd1.components, SD1).info
    assert info.trigger == "by mystyle"
    assert any(line == "trigger: by mystyle" for line in info.lines())

    mixed = dict(factors)
    name = next(iter(mixed))
    mixed[name] = (torch.randn(2, *mixed[name][0].shape[1:]), torch.randn(mixed[name][1].shape[0], 2), 1.0)
    info = load_adapter(write_kohya(tmp_path / "d.safetensors", mixed), sd1.components, SD1).info
    assert (info.rank, info.trigger, info.title) == ("Dynamic (2-4)", None, "d")


def test_sd2_file_loads_and_other_family_metadata_is_refused(tmp_path):
    pipe = tiny("sd2")
    factors = lora_factors(pipe, "sd2", 5, conv=True)
    v2 = write_kohya(
        tmp_path / "v2.safetensors", factors, {"ss_base_model_version": "sd_v2", "ss_v2": "True"}
    )
    adapter = load_adapter(v2, pipe.components, ModelFamily.SD2)
    assert adapter.report.applied == len(factors) and adapter.report.kinds == {"lora": len(factors)}
    v1 = write_kohya(tmp_path / "v1.safetensors", factors, {"ss_base_model_version": "sd_v1"})
    with pytest.raises(
        StudioError, match=r"made for SD 1\.x \(its metadata say so\) but the base model is SD 2\.x"
    ):
        load_adapter(v1, pipe.components, ModelFamily.SD2)

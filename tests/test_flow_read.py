"""SD3.5 / Flux adapters read back: trained tiny models exported as kohya (fused original layout)
and diffusers files load with ``load_adapter`` to exactly the trained peft layers' ΔW; sd-scripts'
own names (dense fused ``up``, no ``text_model_``) split by the reference rule (rows of
``scale·up@down`` in ``FusedPart`` order); family refusals, schnell vs dev, ``studio inspect``."""

from __future__ import annotations

import warnings

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file

from studio.adapters import AdapterWarning, load_adapter
from studio.adapters.layers import delta_on
from studio.config import TrainConfig
from studio.errors import StudioError
from studio.families import FLUX, SD1, SD3
from studio.formats.diffusers_format import save_diffusers_lora
from studio.formats.flow_lora import save_flow_kohya
from studio.formats.flow_names import FLUX_DOUBLE, FLUX_SINGLE, SD3_JOINT
from studio.formats.inspect import format_report, inspect_file
from studio.lora.inject import extract_lora
from studio.models.loader import BaseModel
from studio.models.tiny import build_tiny_pipeline
from studio.samples import make_demo_dataset
from studio.training.recipe import train


def trained(family, tmp_path, seed=7):
    """A tiny base of ``family`` after 2 real training steps (every block Linear and CLIP layer),
    exported in both formats; returns (run result, {layer: trained peft ΔW})."""
    dataset = make_demo_dataset(tmp_path / "data", count=2)
    config = TrainConfig(
        data=str(dataset), output=str(tmp_path / "style.safetensors"), trigger="inkstyle", resolution=64,
        batch_size=2, rank=3, alpha=5.0, lr=3e-2, steps=2, seed=seed, layers="full", train_text_encoder=True,
        format="both", sample_every=0,
    )  # fmt: skip
    result = train(config, base=BaseModel(family.build_tiny(0), family, "epsilon", "tiny"))
    deltas = {
        (component, path): module.get_delta_weight("default").detach().float()
        for component in (family.denoiser, *family.text_encoder_names)
        for path, module in result.base.components[component].named_modules()
        if isinstance(module, LoraLayer)
    }
    return result, deltas


@pytest.fixture(scope="module", params=[FLUX, SD3], ids=["flux", "sd3"])
def run(request, tmp_path_factory):
    family = request.param
    result, deltas = trained(family, tmp_path_factory.mktemp(family.id))
    fresh = family.build_tiny(0)
    fresh.set_progress_bar_config(disable=True)
    return family, result, deltas, fresh


def _strictly_loaded(path, components, family):
    with warnings.catch_warnings():
        warnings.simplefilter("error", AdapterWarning)  # an unmatched module would warn
        return load_adapter(path, components, family, strict=True)


def _assert_same_deltas(adapter, deltas, atol):
    """Every trained layer's ΔW, from the file; a layer left out of the file must have ΔW = 0."""
    assert not adapter.report.unmatched
    assert set(adapter.layers) <= set(deltas)
    for key, expected in deltas.items():
        if key not in adapter.layers:
            assert expected.abs().max() == 0, key
            continue
        got = adapter.layers[key].delta(tuple(expected.shape))
        torch.testing.assert_close(got, expected, atol=atol, rtol=0, msg=str(key))
    assert len(adapter.layers) > 0.9 * len(deltas)


def test_studio_files_load_back_to_the_trained_layers_exactly(run, tmp_path):
    family, result, deltas, fresh = run
    lora = extract_lora(result.base.components)
    components = result.base.components
    kohya = save_flow_kohya(tmp_path / "k.safetensors", lora, components, family, {}, dtype=torch.float32)
    diffusers = save_diffusers_lora(
        tmp_path / "d.safetensors", lora, components, family, {}, dtype=torch.float32
    )
    for path in (kohya, diffusers):  # fp32 files: the split is exact, to rounding of one matmul
        adapter = _strictly_loaded(path, fresh.components, family)
        _assert_same_deltas(adapter, deltas, atol=1e-6)
    fused = _strictly_loaded(kohya, fresh.components, family).layers
    assert {layer.rank for layer in fused.values()} == {3}  # block-diagonal zero columns dropped
    assert any(key[0] == "text_encoder" for key in fused) and any(key[0] == family.denoiser for key in fused)
    for path in result.outputs:  # the run's own fp16 kohya and diffusers files
        _assert_same_deltas(_strictly_loaded(path, fresh.components, family), deltas, atol=2e-4)


def _kohya_state(modules: dict, alpha: float) -> dict:
    """kohya tensors (``lora_down``/``lora_up``/``alpha``) of ``{name: (down, up)}``."""
    state = {}
    for name, (down, up) in modules.items():
        state |= {
            f"{name}.lora_down.weight": down,
            f"{name}.lora_up.weight": up,
            f"{name}.alpha": torch.tensor(alpha),
        }
    return state


def _dense(generator, rows, cols, rank=4):
    return torch.randn(rank, cols, generator=generator) * 0.3, torch.randn(
        rows, rank, generator=generator
    ) * 0.3


def test_sd_scripts_flux_names_split_by_rows_onto_diffusers_layers(tmp_path):
    """sd-scripts writes a dense fused ``up``: each split layer gets its row slice, the same down and alpha."""
    pipe = FLUX.build_tiny(0)
    t = pipe.transformer
    g = torch.Generator().manual_seed(0)
    inner = t.transformer_blocks[0].attn.to_q.out_features
    mlp = t.single_transformer_blocks[1].proj_mlp.out_features
    modules = {
        "lora_unet_double_blocks_0_img_attn_qkv": _dense(g, 3 * inner, t.transformer_blocks[0].attn.to_q.in_features),
        "lora_unet_single_blocks_1_linear1": _dense(g, 3 * inner + mlp, t.single_transformer_blocks[1].proj_mlp.in_features),
        "lora_unet_double_blocks_1_txt_mod_lin": _dense(g, *t.transformer_blocks[1].norm1_context.linear.weight.shape),
        "lora_te1_encoder_layers_0_self_attn_q_proj": _dense(g, 32, 32),  # no text_model_ (transformers 5.x)
    }  # fmt: skip
    state = _kohya_state(modules, alpha=2.0)
    save_file(state, tmp_path / "sd_scripts.safetensors", {"ss_base_model_version": "flux1"})
    adapter = _strictly_loaded(tmp_path / "sd_scripts.safetensors", pipe.components, FLUX)
    assert len(adapter.layers) == 3 + 4 + 1 + 1

    def reference(name):
        down, up = modules[name]
        return 2.0 / 4 * up @ down  # ΔW_fused = alpha/rank · up @ down

    def got(component, path):
        shape = tuple(pipe.components[component].get_submodule(path).weight.shape)
        return adapter.layers[(component, path)].delta(shape)

    qkv = reference("lora_unet_double_blocks_0_img_attn_qkv")
    for i, part in enumerate(("to_q", "to_k", "to_v")):
        torch.testing.assert_close(
            got("transformer", f"transformer_blocks.0.attn.{part}"), qkv[i * inner : (i + 1) * inner]
        )
    linear1 = reference("lora_unet_single_blocks_1_linear1")
    torch.testing.assert_close(
        got("transformer", "single_transformer_blocks.1.attn.to_v"), linear1[2 * inner : 3 * inner]
    )
    torch.testing.assert_close(
        got("transformer", "single_transformer_blocks.1.proj_mlp"), linear1[3 * inner :]
    )
    torch.testing.assert_close(
        got("transformer", "transformer_blocks.1.norm1_context.linear"),
        reference("lora_unet_double_blocks_1_txt_mod_lin"),
    )
    q_proj = next(key for key in adapter.layers if key[0] == "text_encoder")
    assert q_proj[1].endswith("layers.0.self_attn.q_proj")
    torch.testing.assert_close(got(*q_proj), reference("lora_te1_encoder_layers_0_self_attn_q_proj"))


def test_a_lokr_on_a_fused_module_gives_each_layer_its_rows_of_the_whole_update(tmp_path):
    pipe = FLUX.build_tiny(0)
    block = pipe.transformer.single_transformer_blocks[0]
    inner, mlp = block.attn.to_q.out_features, block.proj_mlp.out_features
    g = torch.Generator().manual_seed(2)
    w1, w2 = torch.randn(2, 2, generator=g), torch.randn((3 * inner + mlp) // 2, 16, generator=g) * 0.1
    name = "lora_unet_single_blocks_0_linear1"
    save_file({f"{name}.lokr_w1": w1, f"{name}.lokr_w2": w2}, tmp_path / "lokr.safetensors")
    adapter = _strictly_loaded(tmp_path / "lokr.safetensors", pipe.components, FLUX)
    whole = torch.kron(w1, w2)  # LyCORIS: ΔW = kron(w1, w2), scale 1 without a factored rank
    paths = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
    rows = (inner, inner, inner, mlp)
    start = 0
    for path, n in zip(paths, rows, strict=True):
        layer = adapter.layers[("transformer", f"single_transformer_blocks.0.{path}")]
        assert layer.kind == "lokr"
        torch.testing.assert_close(layer.delta((n, 32)), whole[start : start + n])
        start += n
    assert not adapter.is_plain_lora  # an exact bake refuses it; svd takes it


def test_dora_on_a_fused_module_is_dora_of_the_fused_weight_row_by_row(tmp_path):
    """LyCORIS DoRA (``dora_scale`` [out, 1]) on ``linear1``: each split layer, patched on its own
    W0, gets exactly its rows of DoRA computed on the fused weight (q, k, v and the MLP stacked)."""
    pipe = FLUX.build_tiny(0)
    block = pipe.transformer.single_transformer_blocks[0]
    paths = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
    w0 = torch.cat([block.get_submodule(path).weight.detach().float() for path in paths])
    g = torch.Generator().manual_seed(3)
    down, up = _dense(g, w0.shape[0], w0.shape[1])
    magnitude = w0.norm(dim=1, keepdim=True) * (1 + 0.2 * torch.rand(w0.shape[0], 1, generator=g))
    name = "lora_unet_single_blocks_0_linear1"
    state = _kohya_state({name: (down, up)}, alpha=2.0) | {f"{name}.dora_scale": magnitude}
    save_file(state, tmp_path / "dora.safetensors")
    adapter = _strictly_loaded(tmp_path / "dora.safetensors", pipe.components, FLUX)
    merged = w0 + (2.0 / 4) * up @ down  # the DoRA paper on the fused weight: m * V / ||V|| per row
    expected = magnitude * merged / merged.norm(dim=1, keepdim=True) - w0
    start = 0
    for path in paths:
        base = block.get_submodule(path).weight.detach()
        layer = adapter.layers[("transformer", f"single_transformer_blocks.0.{path}")]
        assert layer.kind == "dora"
        got = delta_on(layer, base)
        torch.testing.assert_close(got, expected[start : start + base.shape[0]], atol=1e-6, rtol=1e-5)
        start += base.shape[0]
    assert start == w0.shape[0]

    columns = state | {f"{name}.dora_scale": w0.norm(dim=0, keepdim=True)}  # [1, in]: spans the parts
    save_file(columns, tmp_path / "columns.safetensors")
    with pytest.raises(StudioError, match="per-input-column dora_scale .* not supported") as caught:
        load_adapter(tmp_path / "columns.safetensors", pipe.components, FLUX)
    assert "columns.safetensors" in str(caught.value)


def test_sd_scripts_sd3_names_and_the_last_blocks_shift_scale_order(tmp_path):
    pipe = SD3.build_tiny(0)
    t = pipe.transformer
    g = torch.Generator().manual_seed(1)
    last = len(t.transformer_blocks) - 1
    inner = t.transformer_blocks[0].attn.to_q.out_features
    norm = t.transformer_blocks[
        last
    ].norm1_context.linear  # diffusers' AdaLayerNormContinuous: (scale, shift)
    modules = {
        "lora_unet_joint_blocks_0_x_block_attn_qkv": _dense(g, 3 * inner, t.transformer_blocks[0].attn.to_q.in_features),
        "lora_unet_joint_blocks_0_context_block_attn_qkv": _dense(g, 3 * inner, t.transformer_blocks[0].attn.add_q_proj.in_features),
        f"lora_unet_joint_blocks_{last}_context_block_adaLN_modulation_1": _dense(g, *norm.weight.shape),
        "lora_te2_text_model_encoder_layers_1_mlp_fc1": _dense(g, 37, 32),
    }  # fmt: skip
    state = _kohya_state(modules, alpha=4.0)
    save_file(state, tmp_path / "sd3.safetensors")  # no metadata: the joint_blocks names say SD3
    adapter = _strictly_loaded(tmp_path / "sd3.safetensors", pipe.components, SD3)
    assert len(adapter.layers) == 3 + 3 + 1 + 1

    def reference(name):
        down, up = modules[name]
        return up @ down  # alpha 4 = rank 4

    add_k = adapter.layers[("transformer", "transformer_blocks.0.attn.add_k_proj")]
    torch.testing.assert_close(
        add_k.delta((inner, t.transformer_blocks[0].attn.add_k_proj.in_features)),
        reference("lora_unet_joint_blocks_0_context_block_attn_qkv")[inner : 2 * inner],
    )
    sai = reference(f"lora_unet_joint_blocks_{last}_context_block_adaLN_modulation_1")
    shift, scale = sai.chunk(2)
    got = adapter.layers[("transformer", f"transformer_blocks.{last}.norm1_context.linear")]
    torch.testing.assert_close(got.delta(tuple(norm.weight.shape)), torch.cat([scale, shift]))
    fc1 = adapter.layers[next(k for k in adapter.layers if k[0] == "text_encoder_2")]
    torch.testing.assert_close(fc1.delta((37, 32)), reference("lora_te2_text_model_encoder_layers_1_mlp_fc1"))


def test_an_adapter_of_another_family_is_refused_by_name(run, tmp_path):
    family, result, _, fresh = run
    kohya = next(p for p in result.outputs if "diffusers" not in p.name)
    other = SD3 if family is FLUX else FLUX
    with pytest.raises(
        StudioError, match=f"made for {family.display_name} .* base model is {other.display_name}"
    ):
        load_adapter(kohya, other.build_tiny(0).components, other)
    sd1 = build_tiny_pipeline("sd1", 0)
    with pytest.raises(StudioError, match=f"made for {family.display_name} .* base model is SD 1.x"):
        load_adapter(kohya, sd1.components, SD1)
    bare = tmp_path / "bare.safetensors"  # no metadata: the block names alone say which family
    save_file(dict(_tensors(kohya)), bare)
    with pytest.raises(StudioError, match=f"made for {family.display_name} \\(its key names say so\\)"):
        load_adapter(bare, sd1.components, SD1)


def test_an_sd_adapter_on_a_flow_base_is_refused_by_name(tmp_path):
    from test_adapters_support import lora_factors, write_kohya

    sd1 = build_tiny_pipeline("sd1", 0)
    path = write_kohya(
        tmp_path / "sd1.safetensors", lora_factors(sd1, "sd1", 0), {"ss_base_model_version": "sd_v1"}
    )
    with pytest.raises(StudioError, match="made for SD 1.x .* base model is Flux.1"):
        load_adapter(path, FLUX.build_tiny(0).components, FLUX)


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_schnell_adapter_on_a_dev_base_loads_with_an_explanation(tmp_path):
    schnell = FLUX.build_tiny(0, guidance=False)
    g = torch.Generator().manual_seed(0)
    down, up = _dense(g, 96, 32)
    state = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": down,
             "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": up}  # fmt: skip
    path = tmp_path / "schnell.safetensors"
    save_file(
        state, path, {"modelspec.architecture": "flux-1-schnell/lora", "ss_base_model_version": "flux1"}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", AdapterWarning)
        load_adapter(path, schnell.components, FLUX)  # the base it was made for: no warning
    dev = FLUX.build_tiny(0)
    with pytest.warns(
        AdapterWarning, match="made for Flux.1-schnell .* base is Flux.1-dev .* guidance embedder"
    ):
        adapter = load_adapter(path, dev.components, FLUX)
    assert len(adapter.layers) == 3  # same shapes: it loads


def test_inspect_names_family_modules_ranks_and_absent_blocks(run, tmp_path):
    family, result, _, _ = run
    kohya, diffusers = sorted(result.outputs, key=lambda p: "diffusers" in p.name)
    report = inspect_file(kohya)
    assert report.family == family.id.upper() and "block names" in report.family_evidence
    assert set(report.modules) == {"transformer", *(("te1",) if family is FLUX else ("te1", "te2"))}
    assert report.ranks == [3] and report.absent_blocks == []  # every split layer trained at rank 3
    assert report.fused_ranks == ([9, 12] if family is FLUX else [9])  # q, k, v (+ MLP) stacked
    assert inspect_file(diffusers).family == family.id.upper()  # diffusers names: the metadata says
    assert "transformer" in inspect_file(diffusers).modules
    # drop every module of block 0: a report, not a failure
    block = "double_blocks_0_" if family is FLUX else "joint_blocks_0_"
    holed = {k: v for k, v in _tensors(kohya).items() if block not in k}
    save_file(holed, tmp_path / "holed.safetensors")
    report = inspect_file(tmp_path / "holed.safetensors")
    name = block[:-3]
    assert report.absent_blocks == [f"{name} 0"] and report.blocks[name] == [1]
    assert f"absent:   {name} 0" in format_report(report)


def _original_paths(family, transformer) -> dict[str, str]:
    """kohya module name -> its dotted path in the original checkpoint layout (BFL's / SAI's)."""
    lists = {FLUX: [("transformer_blocks", "double_blocks", FLUX_DOUBLE),
                    ("single_transformer_blocks", "single_blocks", FLUX_SINGLE)],
             SD3: [("transformer_blocks", "joint_blocks", SD3_JOINT)]}[family]  # fmt: skip
    paths = {}
    for diffusers_list, original, table in lists:
        for i in range(len(getattr(transformer, diffusers_list))):
            for name, _ in table.values():
                paths[f"lora_unet_{original}_{i}_{name.replace('.', '_')}"] = f"{original}.{i}.{name}"
    return paths


@pytest.mark.parametrize("suffixes", ["kohya", "peft"])
def test_comfyui_names_of_the_original_layout_load_as_sd_scripts_names(run, tmp_path, suffixes):
    """ComfyUI keys a flow LoRA by the checkpoint's own module path: ``diffusion_model.double_blocks.0.
    img_attn.qkv.lora_up.weight`` (or ``lora_B``); it is sd-scripts' module, so it splits the same."""
    family, result, deltas, fresh = run
    kohya = next(p for p in result.outputs if "diffusers" not in p.name)
    paths = _original_paths(family, fresh.transformer)
    peft_suffix = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight", "alpha": "alpha"}
    renamed = {}
    for key, tensor in _tensors(kohya).items():
        module, _, suffix = key.partition(".")
        if module.startswith("lora_unet_"):
            key = f"diffusion_model.{paths[module]}.{peft_suffix[suffix] if suffixes == 'peft' else suffix}"
        renamed[key] = tensor
    assert sum(key.startswith("diffusion_model.") for key in renamed) > 20
    path = tmp_path / "comfy.safetensors"
    save_file(renamed, path)  # no metadata: the names alone must say the family
    _assert_same_deltas(_strictly_loaded(path, fresh.components, family), deltas, atol=2e-4)
    assert inspect_file(path).family == family.id.upper()


@pytest.mark.parametrize("prefix", ["lora_transformer", "lycoris"])
def test_onetrainer_and_simpletuner_names_of_the_split_layers_load(run, tmp_path, prefix):
    """OneTrainer writes ``lora_transformer_`` + diffusers' layer path flattened (SimpleTuner's
    LyCORIS: ``lycoris_``), kohya's suffixes and an alpha per module."""
    family, result, deltas, fresh = run
    diffusers = next(p for p in result.outputs if "diffusers" in p.name)
    roles = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}
    renamed = {}
    for key, tensor in _tensors(diffusers).items():
        if key.startswith("transformer."):
            module, *role = key.removeprefix("transformer.").rsplit(".", 2)
            role = ".".join(role)
            name = f"{prefix}_{module.replace('.', '_')}"
            renamed[f"{name}.{roles[role]}"] = tensor
            renamed[f"{name}.alpha"] = torch.tensor(5.0)  # the run's alpha (rank 3)
    path = tmp_path / "onetrainer.safetensors"
    save_file(renamed, path)
    adapter = _strictly_loaded(path, fresh.components, family)
    transformer = {key: delta for key, delta in deltas.items() if key[0] == "transformer"}
    assert (
        {key for key, d in transformer.items() if d.abs().max() > 0}
        <= set(adapter.layers)
        <= set(transformer)
    )
    for key, layer in adapter.layers.items():
        expected = transformer[key]
        torch.testing.assert_close(layer.delta(tuple(expected.shape)), expected, atol=2e-4, rtol=0)
    if family is FLUX:  # its single-stream blocks name the family; SD3's joint blocks are Flux's too
        assert inspect_file(path).family == "FLUX"

"""Baking a blend to one kohya file: exact (rank concatenation) and svd, read back by our loader."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_adapters_support import make_kohya, one_thread, tiny  # noqa: F401 (fixture)

from studio.adapters import load_adapter
from studio.errors import StudioError
from studio.formats.safetensors_io import data_section_sha256
from studio.mixer import AdapterWeights, BlendEngine, BlendItem, bake_blend, blend_terms
from studio.models.family import ModelFamily

SD1 = ModelFamily.SD1


@pytest.fixture(scope="module")
def blend(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bake")
    pipe = tiny("sd1")
    metadata = {"modelspec.trigger_phrase": "mystyle"}
    a = load_adapter(
        make_kohya(tmp / "a.safetensors", pipe, "sd1", 1, conv=True, metadata=metadata), pipe.components, SD1
    )
    b = load_adapter(
        make_kohya(tmp / "b.safetensors", pipe, "sd1", 2, rank=2, alpha=1.0), pipe.components, SD1
    )
    items = [
        BlendItem(a, AdapterWeights(0.7, text_encoder=0.5, blocks={"up": 0.25})),
        BlendItem(b, AdapterWeights(-0.3)),
    ]
    return pipe, items, tmp


def blend_delta(items, key, shape):
    return sum(c * adapter.layers[key].delta(shape) for adapter, c in blend_terms(items)[key])


def relative_error(pipe, items, baked) -> float:
    """‖ΔW_baked − ΔW_blend‖ / ‖ΔW_blend‖ over every layer of the blend."""
    wanted = blend_terms(items)
    assert set(baked.layers) == set(wanted)
    residual = norm = 0.0
    for key in wanted:
        shape = tuple(pipe.components[key[0]].get_submodule(key[1]).weight.shape)
        expected = blend_delta(items, key, shape)
        residual += float((baked.layers[key].delta(shape) - expected).pow(2).sum())
        norm += float(expected.pow(2).sum())
    return (residual / norm) ** 0.5


def test_exact_bake_reproduces_the_blend(blend):
    pipe, items, tmp = blend
    out = tmp / "exact.safetensors"
    report = bake_blend(items, pipe.components, SD1, out)
    assert (
        report.method == "exact" and report.rank == "Dynamic"
    )  # rank 6 where both adapt, 4 where only a does

    with safe_open(str(out), "pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys)
    assert len(keys) == 3 * report.layers
    sources = json.loads(metadata["studio.bake_sources"])
    assert [(s["name"], s["sha256"], s["weight"], s["blocks"]) for s in sources] == [
        ("a", items[0].adapter.sha256, 0.7, {"up": 0.25}),
        ("b", items[1].adapter.sha256, -0.3, {}),
    ]
    assert metadata["ss_network_module"] == "networks.lora"
    assert metadata["ss_network_dim"] == metadata["ss_network_alpha"] == "Dynamic"
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert metadata["modelspec.trigger_phrase"] == "mystyle"
    assert metadata["sshs_model_hash"] == data_section_sha256(out)

    fresh = tiny("sd1")
    baked = load_adapter(out, fresh.components, SD1)
    assert baked.is_plain_lora
    assert relative_error(fresh, items, baked) < 1e-5

    # Applied at weight 1, the baked file gives the blend's patched weights.
    BlendEngine(pipe.components).set_blend(items)
    BlendEngine(fresh.components).set_blend([BlendItem(baked)])
    for key in blend_terms(items):
        ours = pipe.components[key[0]].get_submodule(key[1]).weight
        theirs = fresh.components[key[0]].get_submodule(key[1]).weight
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)


def test_baked_metadata_names_sources_by_file_and_keeps_their_resolution(tmp_path):
    """Sources trained at 128 px make a 128 px bake (not the base's 512), and the file lists them
    by name and sha256: no local path leaks into a file meant to be shared."""
    pipe = tiny("sd1")
    small = {"ss_resolution": "(128, 128)", "modelspec.resolution": "128x128"}
    paths = [
        make_kohya(tmp_path / "ink.safetensors", pipe, "sd1", 1, metadata=small),
        make_kohya(tmp_path / "paper.safetensors", pipe, "sd1", 2, metadata={"ss_resolution": "(128, 128)"}),
        make_kohya(tmp_path / "plain.safetensors", pipe, "sd1", 3),  # states no resolution
    ]
    items = [BlendItem(load_adapter(path, pipe.components, SD1), AdapterWeights(0.5)) for path in paths]
    out = tmp_path / "baked.safetensors"
    bake_blend(items, pipe.components, SD1, out)
    with safe_open(str(out), "pt") as f:
        metadata = f.metadata()
    assert metadata["modelspec.resolution"] == "128x128"
    sources = json.loads(metadata["studio.bake_sources"])
    assert [(s["file"], s["sha256"]) for s in sources] == [
        (path.name, hashlib.sha256(path.read_bytes()).hexdigest()) for path in paths
    ]
    assert [s.get("resolution") for s in sources] == ["128x128", "128x128", None]  # each as it states
    assert metadata["ss_resolution"] == "(128, 128)"
    assert str(tmp_path) not in json.dumps(metadata) and all("path" not in s for s in sources)

    bake_blend(items[2:], pipe.components, SD1, tmp_path / "default.safetensors")
    with safe_open(str(tmp_path / "default.safetensors"), "pt") as f:
        assert f.metadata()["modelspec.resolution"] == "512x512"  # no source says: the family's size


def test_exact_bake_loads_in_diffusers(blend):
    pipe, items, tmp = blend
    out = tmp / "for_diffusers.safetensors"
    bake_blend(items, pipe.components, SD1, out)
    reference, ours = tiny("sd1"), tiny("sd1")
    reference.load_lora_weights(str(out), adapter_name="baked")
    reference.fuse_lora(components=["unet", "text_encoder"])
    BlendEngine(ours.components).set_blend(items)
    for key in blend_terms(items):
        fused = reference.components[key[0]].get_submodule(key[1])
        fused = getattr(fused, "base_layer", fused).weight
        torch.testing.assert_close(
            fused, ours.components[key[0]].get_submodule(key[1]).weight, rtol=1e-5, atol=1e-6
        )


@pytest.mark.usefixtures("one_thread")
def test_svd_bake_full_rank_and_truncated(blend):
    pipe, items, tmp = blend
    full = bake_blend(items, pipe.components, SD1, tmp / "svd64.safetensors", rank=64)
    assert full.method == "svd" and full.overall_error < 1e-5
    assert relative_error(pipe, items, load_adapter(full.path, pipe.components, SD1)) < 1e-4

    low = bake_blend(items, pipe.components, SD1, tmp / "svd2.safetensors", rank=2)
    assert low.rank == "2" and 0 < low.overall_error < 1
    measured = relative_error(pipe, items, load_adapter(low.path, pipe.components, SD1))
    assert measured == pytest.approx(low.overall_error, rel=1e-3)
    assert set(low.layer_errors) and max(low.layer_errors.values()) <= 1
    with safe_open(str(low.path), "pt") as f:
        assert f.metadata()["ss_network_dim"] == "2" and f.metadata()["studio.bake_method"] == "svd"
    assert "relative error" in low.summary()


@pytest.mark.usefixtures("one_thread")
def test_exact_refuses_lycoris_layers_but_svd_bakes_them(blend):
    pipe, items, tmp = blend
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    g = torch.Generator().manual_seed(0)
    lokr = {
        f"{name}.lokr_w1": torch.randn(4, 2, generator=g),
        f"{name}.lokr_w2": torch.randn(16, 16, generator=g),
    }
    save_file(lokr, str(tmp / "lokr.safetensors"))
    c = load_adapter(tmp / "lokr.safetensors", pipe.components, SD1)
    mixed = [*items, BlendItem(c, AdapterWeights(0.2))]
    with pytest.raises(
        StudioError, match=r"exact bake needs plain LoRA factors.*'lokr' is lokr.*target rank"
    ):
        bake_blend(mixed, pipe.components, SD1, tmp / "nope.safetensors")
    report = bake_blend(mixed, pipe.components, SD1, tmp / "svd_mixed.safetensors", rank=64)
    assert relative_error(pipe, mixed, load_adapter(report.path, pipe.components, SD1)) < 1e-4


def test_nothing_to_bake(blend):
    pipe, items, tmp = blend
    off = [BlendItem(i.adapter, AdapterWeights(enabled=False)) for i in items]
    with pytest.raises(StudioError, match="nothing to bake"):
        bake_blend(off, pipe.components, SD1, tmp / "empty.safetensors")
    with pytest.raises(StudioError, match="at least 1"):
        bake_blend(items, pipe.components, SD1, tmp / "zero.safetensors", rank=0)


def test_exact_bake_sdxl_uses_sgm_names_and_round_trips(tmp_path):
    pipe = tiny("sdxl")
    sdxl = ModelFamily.SDXL
    items = [
        BlendItem(
            load_adapter(
                make_kohya(tmp_path / "a.safetensors", pipe, "sdxl", 1, conv=True), pipe.components, sdxl
            ),
            AdapterWeights(0.6),
        ),
        BlendItem(
            load_adapter(
                make_kohya(tmp_path / "b.safetensors", pipe, "sdxl", 2, rank=2), pipe.components, sdxl
            ),
            AdapterWeights(-0.4, text_encoder=0.0),
        ),
    ]
    out = bake_blend(items, pipe.components, sdxl, tmp_path / "xl.safetensors").path
    with safe_open(str(out), "pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
    assert any(k.startswith("lora_unet_input_blocks_4_1_") for k in keys)
    assert any(k.startswith("lora_te1_text_model_encoder_layers_") for k in keys)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_") for k in keys)
    assert not any(k.startswith("lora_unet_down_blocks") for k in keys)
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert relative_error(pipe, items, load_adapter(out, pipe.components, sdxl)) < 1e-5


def _full_size_lora(path, seed: int, alpha: float, metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    """A small kohya LoRA for real SD 1.5 layer names and shapes: cross-attention k/v only."""
    from studio.formats.kohya_names import kohya_module_index
    from studio.models.configs import build_meta_components

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, ref in kohya_module_index(build_meta_components("sd15"), SD1).items():
        if name.startswith("lora_unet_") and name.endswith(("attn2_to_k", "attn2_to_v")):
            out_features, in_features = ref.module.weight.shape
            tensors[f"{name}.lora_down.weight"] = torch.randn(4, in_features, generator=generator) * 0.1
            tensors[f"{name}.lora_up.weight"] = torch.randn(out_features, 4, generator=generator) * 0.1
            tensors[f"{name}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path), metadata=metadata)
    return tensors


def _delta(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    down, up = tensors[f"{name}.lora_down.weight"].float(), tensors[f"{name}.lora_up.weight"].float()
    return up @ down * (float(tensors[f"{name}.alpha"]) / down.shape[0])


def test_cli_merge_needs_no_base_model_for_real_size_files(tmp_path, capsys):
    from safetensors.torch import load_file

    from studio.cli import main
    from studio.formats.safetensors_io import read_header

    a = _full_size_lora(tmp_path / "a.safetensors", 1, 2.0, {"ss_base_model_version": "sd_v1"})
    b = _full_size_lora(tmp_path / "b.safetensors", 2, 4.0, {})  # no metadata: family from shapes
    out = tmp_path / "blend.safetensors"
    args = ["merge", f"{tmp_path / 'a.safetensors'}:0.7", f"{tmp_path / 'b.safetensors'}:-0.3"]
    assert main([*args, "--out", str(out)]) == 0
    merged, metadata = load_file(str(out)), read_header(out).metadata
    names = {key.split(".")[0] for key in a}
    assert {key.split(".")[0] for key in merged} == names
    for name in names:
        torch.testing.assert_close(_delta(merged, name), 0.7 * _delta(a, name) - 0.3 * _delta(b, name))
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["ss_network_args"] == "{}"
    assert [s["weight"] for s in json.loads(metadata["studio.bake_sources"])] == [0.7, -0.3]

    assert main([*args, "--out", str(tmp_path / "svd.safetensors"), "--rank", "2"]) == 0
    assert "relative error" in capsys.readouterr().out

    sdxl_meta = tmp_path / "xl.safetensors"
    _full_size_lora(sdxl_meta, 3, 2.0, {"ss_base_model_version": "sdxl_base_v1-0"})
    assert (
        main(
            [
                "merge",
                str(tmp_path / "a.safetensors"),
                str(sdxl_meta),
                "--out",
                str(tmp_path / "x.safetensors"),
            ]
        )
        == 2
    )
    assert "different base families" in capsys.readouterr().err

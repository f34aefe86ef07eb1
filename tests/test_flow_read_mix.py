"""SD3.5 / Flux adapters in the mixer: a blended image equals diffusers' own ``load_lora_weights`` of
the exported file, block weights follow ``Family.layer_group`` (double / single), restore is bit-exact,
bakes reload to the blend's ΔW, and ``studio generate --base`` samples with the pipeline's flow sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_flow_export import _adapted

from studio.adapters import load_adapter
from studio.cli import main
from studio.errors import StudioError
from studio.families import FLUX, SD3
from studio.formats.diffusers_format import save_diffusers_lora
from studio.formats.flow_lora import save_flow_kohya
from studio.formats.safetensors_io import read_header
from studio.generate import GenerationSession
from studio.lora.inject import extract_lora
from studio.mixer import AdapterWeights, BlendItem, bake_blend
from studio.recipes import GenerationSettings

PROMPT = "inkstyle, a red circle"
SETTINGS = GenerationSettings(prompt=PROMPT, seed=3, steps=1, guidance=4.0, width=32, height=32)


def _files(family, directory, seed=0, rank=4, preset="full"):
    """kohya and diffusers files (fp32) of a random LoRA on ``preset``'s layers, CLIP encoders included."""
    torch.manual_seed(seed)
    pipe = _adapted(family, preset, rank=rank, alpha=rank / 2)
    lora = extract_lora(pipe.components)
    kohya = save_flow_kohya(
        directory / f"k{seed}.safetensors", lora, pipe.components, family, {}, dtype=torch.float32
    )
    diffusers = save_diffusers_lora(
        directory / f"d{seed}.safetensors", lora, pipe.components, family, {}, dtype=torch.float32
    )
    return kohya, diffusers


def _base(family):
    pipe = family.build_tiny(0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipeline_image(pipe):
    """The pipeline's own call with the session's settings (its own scheduler, seeded alike)."""
    out = pipe(
        PROMPT, num_inference_steps=SETTINGS.steps, guidance_scale=SETTINGS.guidance, width=32, height=32,
        generator=[torch.Generator().manual_seed(SETTINGS.seed)], output_type="np",
    )  # fmt: skip
    return out.images[0]


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255


@pytest.mark.parametrize("family", [FLUX, SD3], ids=["flux", "sd3"])
def test_blended_image_matches_diffusers_load_lora_weights_and_restores_bit_exactly(family, tmp_path):
    kohya, diffusers = _files(family, tmp_path)
    reference = _base(family)
    bare = _pipeline_image(reference)
    reference.load_lora_weights(str(diffusers))
    theirs = _pipeline_image(reference)
    assert np.abs(theirs - bare).max() > 2e-2  # the adapter changes the picture

    pipe = _base(family)
    adapted = (family.denoiser, *family.text_encoder_names)
    before = {(c, n): p.detach().clone() for c in adapted for n, p in pipe.components[c].named_parameters()}
    session = GenerationSession(pipe, "tiny", family)
    for path in (kohya, diffusers):
        session.set_blend([BlendItem(load_adapter(path, pipe.components, family))])
        (ours,) = session.generate(SETTINGS)
        assert (
            ours.recipe.settings.scheduler == "flow-euler"
        )  # the default euler-a does not sample a flow model
        np.testing.assert_allclose(_array(ours.image), theirs, atol=2 / 255)  # 8-bit PNG vs float
    session.close()
    after = {(c, n): p for c in adapted for n, p in pipe.components[c].named_parameters()}
    assert all(torch.equal(before[key], after[key]) for key in before)  # the bare base, bit for bit


def _patched(session, weights, adapter):
    session.set_blend([BlendItem(adapter, weights)])
    return {path for component, path in session.engine.patched_layers if component == "transformer"}


def test_block_weights_group_flux_layers_as_double_and_single_blocks(tmp_path):
    kohya, _ = _files(FLUX, tmp_path)
    pipe = _base(FLUX)
    adapter = load_adapter(kohya, pipe.components, FLUX)
    session = GenerationSession(pipe, "tiny", FLUX)
    every = _patched(session, AdapterWeights(), adapter)
    assert any(p.startswith("single_transformer_blocks.") for p in every)
    no_single = _patched(session, AdapterWeights(blocks={"single": 0.0}), adapter)
    assert no_single == {p for p in every if p.startswith("transformer_blocks.")}
    only_single_1 = _patched(
        session, AdapterWeights(blocks={"double": 0.0, "single": 0.0, "single.1": 0.5}), adapter
    )
    assert only_single_1 == {p for p in every if p.startswith("single_transformer_blocks.1.")}
    layer = "single_transformer_blocks.1.proj_mlp"
    weight = pipe.transformer.get_submodule(layer).weight
    original = session.engine._originals[("transformer", layer)]
    expected = original + 0.5 * adapter.layers[("transformer", layer)].delta(tuple(weight.shape))
    torch.testing.assert_close(weight.detach(), expected, rtol=0, atol=1e-6)
    text_only = session.set_blend([BlendItem(adapter, AdapterWeights(unet=0.0))])  # the denoiser's strength
    assert text_only.written and {c for c, _ in session.engine.patched_layers} == {"text_encoder"}
    with pytest.raises(StudioError, match="LoRA Block Weight vectors number UNet blocks"):
        session.set_blend([BlendItem(adapter, AdapterWeights(lbw="MIDD"))])
    session.close()


@pytest.mark.parametrize("family", [FLUX, SD3], ids=["flux", "sd3"])
def test_bake_of_two_flow_adapters_reloads_to_the_blend(family, tmp_path):
    first, _ = _files(family, tmp_path, seed=0, rank=4)
    second, _ = _files(family, tmp_path, seed=1, rank=2, preset="cross-attn")
    pipe = _base(family)
    a, b = (load_adapter(p, pipe.components, family) for p in (first, second))
    items = [
        BlendItem(a, AdapterWeights(weight=0.7)),
        BlendItem(b, AdapterWeights(weight=-0.4, text_encoder=0.5)),
    ]

    def blended(key, shape):
        total = torch.zeros(shape)
        for item in items:
            if key in item.adapter.layers:
                total += item.weights.coefficient(*key) * item.adapter.layers[key].delta(shape)
        return total

    exact = bake_blend(items, pipe.components, family, tmp_path / "exact.safetensors")
    metadata = read_header(exact.path).metadata
    assert metadata["ss_base_model_version"] == family.base_model_version
    assert metadata["modelspec.architecture"].startswith(family.modelspec_id.split("-3-5")[0])
    baked = load_adapter(exact.path, pipe.components, family, strict=True)
    assert set(baked.layers) == set(a.layers) | set(b.layers)
    for key, layer in baked.layers.items():
        shape = tuple(pipe.components[key[0]].get_submodule(key[1]).weight.shape)
        torch.testing.assert_close(layer.delta(shape), blended(key, shape), rtol=0, atol=1e-5)
    both = ("transformer", "transformer_blocks.0.attn.to_q")
    assert baked.layers[both].rank == 6  # ranks concatenated, the fused module's zero blocks dropped

    svd = bake_blend(items, pipe.components, family, tmp_path / "svd.safetensors", rank=2)
    assert svd.method == "svd" and 0 < svd.overall_error < 1
    reloaded = load_adapter(svd.path, pipe.components, family, strict=True)
    residual = norm = 0.0
    for key in baked.layers:
        shape = tuple(pipe.components[key[0]].get_submodule(key[1]).weight.shape)
        want = blended(key, shape)
        got = reloaded.layers[key].delta(shape) if key in reloaded.layers else torch.zeros(shape)
        residual += float((want - got).pow(2).sum())
        norm += float(want.pow(2).sum())
    assert abs((residual / norm) ** 0.5 - svd.overall_error) < 1e-4  # the error reported is the file's


def test_studio_generate_on_a_flux_base_with_a_flux_lora(tmp_path, capsys):
    kohya, _ = _files(FLUX, tmp_path)
    _base(FLUX).save_pretrained(tmp_path / "flux")
    size = ["--width", "32", "--height", "32"]
    fast = ["--steps", "1", *size, "--seed", "3", "--guidance", "4"]

    def generate(*args: str) -> int:
        return main(["generate", PROMPT, "--base", str(tmp_path / "flux"), *args])

    out = tmp_path / "out.png"
    assert generate("--lora", str(kohya), *fast, "--out", str(out)) == 0
    assert "Sampler: Euler" in Image.open(out).text["parameters"]
    reference = _base(FLUX)
    reference.load_lora_weights(str(tmp_path / "d0.safetensors"))
    np.testing.assert_allclose(
        _array(Image.open(out).convert("RGB")), _pipeline_image(reference), atol=2 / 255
    )
    default = tmp_path / "default.png"  # no --guidance: Flux-dev's own 3.5, not SD's 7
    assert generate("--steps", "1", *size, "--out", str(default)) == 0
    assert "CFG scale: 3.5" in Image.open(default).text["parameters"]
    capsys.readouterr()
    assert generate("--scheduler", "euler-a", *fast, "--out", str(out)) == 2
    assert "--scheduler euler-a does not sample Flux.1" in capsys.readouterr().err


def test_flux_dev_guidance_goes_to_its_embedding_and_schnell_has_none(tmp_path):
    images = {}
    for name, pipe in (("dev", _base(FLUX)), ("schnell", FLUX.build_tiny(0, guidance=False))):
        pipe.set_progress_bar_config(disable=True)
        session = GenerationSession(pipe, "tiny", FLUX)
        for guidance in (1.0, 6.0):
            (image,) = session.generate(GenerationSettings(**{**SETTINGS.__dict__, "guidance": guidance}))
            images[name, guidance] = _array(image.image)
    assert np.abs(images["dev", 1.0] - images["dev", 6.0]).max() > 1e-2  # distilled guidance embedding
    np.testing.assert_array_equal(images["schnell", 1.0], images["schnell", 6.0])  # no guidance input, no CFG


def test_studio_merge_without_a_base_bakes_flux_files_on_the_full_size_layout(tmp_path, capsys):
    """No --base: the family comes from the files, Flux.1-dev's layers are built on the meta device."""
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(0)
    names = {
        "lora_unet_double_blocks_0_img_attn_qkv": 3 * 3072,
        "lora_unet_single_blocks_37_linear1": 3 * 3072 + 12288,
    }
    files, factors = [], []
    for i in range(2):
        state = {}
        for name, rows in names.items():
            down, up = torch.randn(2, 3072, generator=g) * 0.1, torch.randn(rows, 2, generator=g) * 0.1
            state |= {
                f"{name}.lora_down.weight": down,
                f"{name}.lora_up.weight": up,
                f"{name}.alpha": torch.tensor(1.0),
            }
        factors.append(state)
        files.append(tmp_path / f"sd_scripts_{i}.safetensors")
        save_file(state, files[-1], {"ss_base_model_version": "flux1"})
    out = tmp_path / "merged.safetensors"
    assert main(["merge", f"{files[0]}:0.5", f"{files[1]}:-1", "--out", str(out)]) == 0
    assert "exact" in capsys.readouterr().out
    merged = load_file(str(out))
    name = "lora_unet_double_blocks_0_img_attn_qkv"

    def delta(state, weight):
        scale = float(state[f"{name}.alpha"]) / state[f"{name}.lora_down.weight"].shape[0]
        return weight * scale * state[f"{name}.lora_up.weight"] @ state[f"{name}.lora_down.weight"]

    torch.testing.assert_close(
        delta(merged, 1.0), delta(factors[0], 0.5) + delta(factors[1], -1.0), rtol=0, atol=1e-6
    )
    assert set(merged) == {f"{n}.{r}" for n in names for r in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert read_header(out).metadata["modelspec.architecture"] == "flux-1-dev/lora"

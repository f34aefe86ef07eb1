"""Exported files load in diffusers and reproduce our adapter's image; kohya files read back exactly.

A tiny pipeline gets a peft LoRA with random non-zero B (so it changes the image) and
alpha != rank (so a lost alpha shows). The file is loaded into a fresh pipeline built from
the same seed with diffusers' own ``load_lora_weights``; its image must equal the one the
in-memory adapter makes, and every layer, text encoders included, must carry our tensors.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file

from studio.errors import StudioError
from studio.formats.diffusers_format import save_diffusers_lora
from studio.formats.kohya import from_kohya_state_dict, load_kohya, save_kohya, to_kohya_state_dict
from studio.lora.inject import extract_lora, inject_lora
from studio.lora.tensors import LoraTensors
from studio.models.family import ModelFamily
from studio.models.tiny import build_tiny_pipeline

RANK, ALPHA = 4, 2.0
LOADED = "default_0"  # the adapter name diffusers gives the first loaded LoRA


def render(pipe) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(
        "a red circle", num_inference_steps=2, height=64, width=64, generator=generator, output_type="np"
    ).images


@contextmanager
def captured_messages() -> Iterator[list[str]]:
    """Warnings and log records from diffusers, transformers and peft while loading."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                messages.append(record.getMessage())

    handler = Collect()
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers", "peft")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(
            str(w.message) for w in caught if not issubclass(w.category, (FutureWarning, DeprecationWarning))
        )
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread; on a busy 2-core machine its spin-waits make
    each image ~10x slower (measured: 3 SDXL renders 10-30 s with 2 threads, 1 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(ModelFamily), ids=lambda f: f.value)
def adapted(request):
    """(family, pipeline with a random LoRA, its LoRA tensors, its image, the base image)."""
    family = request.param
    pipe = build_tiny_pipeline(family, seed=0)
    base_image = render(pipe)
    inject_lora(pipe.components, family, rank=RANK, alpha=ALPHA, preset="full", train_text_encoder=True)
    generator = torch.Generator().manual_seed(1)
    for model in (pipe.unet, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        for module in model.modules() if model is not None else ():
            if isinstance(module, LoraLayer):
                weight = module.lora_B["default"].weight
                weight.data = torch.randn(weight.shape, generator=generator) * 0.5
    return family, pipe, extract_lora(pipe.components), render(pipe), base_image


def load_into_fresh_pipeline(family, path):
    fresh = build_tiny_pipeline(family, seed=0)
    with captured_messages() as messages:
        fresh.load_lora_weights(str(path))
    return fresh, messages


def assert_same_adapter(loaded: dict, original: dict, exact: bool = True) -> None:
    assert set(loaded) == set(original)  # no layer dropped or added, text encoders included
    for key, tensors in original.items():
        assert loaded[key].alpha == tensors.alpha, key
        for ours, theirs in ((tensors.down, loaded[key].down), (tensors.up, loaded[key].up)):
            expected = ours if exact else ours.half().float()
            assert torch.equal(theirs.reshape(expected.shape), expected), key


def test_kohya_file_loads_in_diffusers_and_reproduces_the_image(adapted, tmp_path):
    family, pipe, lora, image, base_image = adapted
    path = save_kohya(tmp_path / "style.safetensors", lora, pipe.components, family, {}, dtype=torch.float32)
    fresh, messages = load_into_fresh_pipeline(family, path)
    assert messages == []  # no "unexpected keys", "missing keys" or "No LoRA keys ... found"
    assert_same_adapter(extract_lora(fresh.components, adapter=LOADED), lora)
    assert any(c.startswith("text_encoder") for c, _ in lora)
    assert np.abs(image - base_image).max() > 1e-2  # the adapter matters, so the comparison can fail
    assert np.abs(render(fresh) - image).max() < 1e-4


def test_diffusers_file_loads_and_reproduces_the_image(adapted, tmp_path):
    family, pipe, lora, image, _ = adapted
    path = tmp_path / "style_diffusers.safetensors"
    save_diffusers_lora(path, lora, pipe.components, family, {"ss_output_name": "style"}, dtype=torch.float32)
    fresh, messages = load_into_fresh_pipeline(family, path)
    assert messages == []
    assert_same_adapter(extract_lora(fresh.components, adapter=LOADED), lora)
    assert np.abs(render(fresh) - image).max() < 1e-4


def mixed_ranks(lora: dict, alphas: tuple[float, ...]) -> dict:
    """The same layers with ranks 2/4/6 and the given alphas in turn (like a resized or baked LoRA)."""
    generator = torch.Generator().manual_seed(2)
    mixed = {}
    for i, (key, tensors) in enumerate(sorted(lora.items())):
        rank = (2, 4, 6)[i % 3]
        down = torch.randn((rank, *tensors.down.shape[1:]), generator=generator)
        up = torch.randn((tensors.up.shape[0], rank, *tensors.up.shape[2:]), generator=generator)
        mixed[key] = LoraTensors(down, up, alphas[i % len(alphas)])
    return mixed


def test_mixed_ranks_survive_both_formats_and_mixed_alphas_the_diffusers_one(adapted, tmp_path):
    family, pipe, lora, _, _ = adapted
    mixed = mixed_ranks(lora, (3.0,))
    path = save_kohya(tmp_path / "mixed.safetensors", mixed, pipe.components, family, {}, dtype=torch.float32)
    fresh, messages = load_into_fresh_pipeline(family, path)
    assert messages == []
    assert_same_adapter(extract_lora(fresh.components, adapter=LOADED), mixed)
    # per-module alphas travel as peft alpha_pattern in our diffusers file
    # (diffusers 0.42.1 drops them from kohya files: see the export report)
    mixed = mixed_ranks(lora, (1.0, 3.0, 4.0, 6.0))
    path = tmp_path / "mixed_diffusers.safetensors"
    save_diffusers_lora(path, mixed, pipe.components, family, {}, dtype=torch.float32)
    fresh, messages = load_into_fresh_pipeline(family, path)
    assert messages == []
    assert_same_adapter(extract_lora(fresh.components, adapter=LOADED), mixed)


def test_default_fp16_export_holds_the_rounded_weights(adapted, tmp_path):
    family, pipe, lora, image, _ = adapted
    path = save_kohya(tmp_path / "half.safetensors", lora, pipe.components, family, {})
    fresh, _ = load_into_fresh_pipeline(family, path)
    assert_same_adapter(extract_lora(fresh.components, adapter=LOADED), lora, exact=False)
    assert np.abs(render(fresh) - image).max() < 2e-2


def test_kohya_state_dict_reads_back_exactly_on_the_adapted_model(adapted):
    family, pipe, lora, _, _ = adapted
    state = to_kohya_state_dict(lora, pipe.components, family, dtype=torch.float32)
    foreign = {
        "lora_unet_not_a_layer.lora_down.weight": torch.zeros(1),
        "bundle_emb.x.weight": torch.zeros(1),
    }
    # the components carry peft wrappers: names must still resolve to the wrapped layers
    back, unmatched = from_kohya_state_dict({**state, **foreign}, pipe.components, family)
    assert_same_adapter(back, lora)
    assert unmatched == sorted(foreign)


def test_kohya_state_dict_reads_back_on_a_fresh_base_and_defaults_alpha_to_rank(adapted):
    family, pipe, lora, _, _ = adapted
    state = to_kohya_state_dict(lora, pipe.components, family, dtype=torch.float32)
    without_alpha = {k: v for k, v in state.items() if not k.endswith(".alpha")}
    fresh = build_tiny_pipeline(family, seed=0)
    back, unmatched = from_kohya_state_dict(without_alpha, fresh.components, family)
    assert unmatched == [] and set(back) == set(lora)
    assert {t.alpha for t in back.values()} == {float(RANK)}


def test_half_modules_are_unmatched_and_wrong_shapes_name_the_file(adapted, tmp_path):
    family, pipe, lora, _, _ = adapted
    state = to_kohya_state_dict(lora, pipe.components, family)
    name = next(k for k in state if k.endswith(".lora_up.weight")).removesuffix(".lora_up.weight")
    del state[f"{name}.lora_up.weight"]
    back, unmatched = from_kohya_state_dict(state, pipe.components, family)
    assert unmatched == [f"{name}.alpha", f"{name}.lora_down.weight"]
    assert len(back) == len(lora) - 1

    state[f"{name}.lora_up.weight"] = torch.zeros(7, RANK)
    path = tmp_path / "wrong.safetensors"
    save_file(state, str(path))
    with pytest.raises(StudioError, match=rf"wrong\.safetensors: {name}\.lora_up\.weight has shape"):
        load_kohya(path, pipe.components, family)
    for bad in ({f"{name}.alpha": torch.ones(2)}, {f"{name}.lora_down.weight": torch.zeros(0, 3)}):
        with pytest.raises(StudioError, match=f"{name} is not a valid LoRA module"):
            from_kohya_state_dict({**state, **bad}, pipe.components, family)


def test_a_file_for_another_family_matches_nothing(adapted, tmp_path):
    family, pipe, lora, _, _ = adapted
    path = save_kohya(tmp_path / "other.safetensors", lora, pipe.components, family, {})
    other = ModelFamily.SD1 if family is ModelFamily.SDXL else ModelFamily.SDXL
    back, unmatched, _ = load_kohya(path, build_tiny_pipeline(other, seed=0).components, other)
    assert back == {} and len(unmatched) == 3 * len(lora)


def test_export_refuses_what_kohya_cannot_name(adapted):
    family, pipe, lora, _, _ = adapted
    tensors = next(iter(lora.values()))
    with pytest.raises(StudioError, match="no layer unet.no.such.layer"):
        to_kohya_state_dict({("unet", "no.such.layer"): tensors}, pipe.components, family)
    if family is not ModelFamily.SDXL:
        bogus = {("text_encoder_2", "text_model.encoder.layers.0.mlp.fc1"): tensors}
        with pytest.raises(StudioError, match="no component 'text_encoder_2'"):
            to_kohya_state_dict(bogus, pipe.components, family)
    if family is ModelFamily.SDXL:  # SGM naming knows only the layers of the SDXL UNet
        fresh = build_tiny_pipeline(family, seed=0)
        fresh.unet.add_module("extra", torch.nn.Linear(2, 3))
        extra = LoraTensors(torch.zeros(1, 2), torch.zeros(3, 1), 1.0)
        with pytest.raises(StudioError, match="layer unet.extra has no kohya name"):
            to_kohya_state_dict({("unet", "extra"): extra}, fresh.components, family)
    conv_path = next(p for c, p in lora if c == "unet" and "proj_in" in p)
    flat = LoraTensors(
        lora[("unet", conv_path)].down.flatten(1), lora[("unet", conv_path)].up.flatten(1), ALPHA
    )
    state = to_kohya_state_dict({("unet", conv_path): flat}, pipe.components, family)
    down = next(v for k, v in state.items() if k.endswith("lora_down.weight"))
    assert down.dim() == (4 if family is ModelFamily.SD1 else 2)  # reshaped to the base layer

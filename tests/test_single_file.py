"""Original-format single-file checkpoints load offline through diffusers' real converter.

``tests/ldm_checkpoint.py`` writes a tiny pipeline in the layout real ``v1-5-pruned-emaonly`` /
SD 2.x / ``sd_xl_base_1.0`` files have; ``load_base(file, config=<saved diffusers folder>)`` must
give back exactly the same weights and the same image.
"""

from __future__ import annotations

import copy

import huggingface_hub
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from ldm_checkpoint import save_ldm_checkpoint
from transformers import CLIPTextModelWithProjection

from studio.errors import StudioError
from studio.models.family import ModelFamily
from studio.models.loader import load_base
from studio.models.tiny import build_tiny_pipeline

MODELS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run several times faster on one thread, and far faster on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(family: ModelFamily):
    """The tiny pipeline; for SDXL with a wider second text encoder (48 vs 32).

    diffusers tells SDXL's two text encoders apart by width (position-embedding size:
    768 vs 1280 in real files). With equal widths it loads text encoder 1's weights into
    ``text_encoder_2`` and leaves its ``text_projection`` on the meta device, so the
    tiny SDXL (both 32 wide) cannot stand in for a real file as it is.
    """
    pipe = build_tiny_pipeline(family)
    if family is not ModelFamily.SDXL:
        return pipe
    te2_config = copy.deepcopy(pipe.text_encoder_2.config)
    te2_config.hidden_size = 48
    torch.manual_seed(2)
    text_encoder_2 = CLIPTextModelWithProjection(te2_config)
    torch.manual_seed(3)
    unet = UNet2DConditionModel.from_config({**pipe.unet.config, "cross_attention_dim": 32 + 48})
    return StableDiffusionXLPipeline(**{**pipe.components, "text_encoder_2": text_encoder_2, "unet": unet})


def _image(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(0)
    kwargs = dict(num_inference_steps=2, height=64, width=64, output_type="np", generator=generator)
    return pipe("a red circle", **kwargs).images


@pytest.mark.parametrize("family", list(ModelFamily), ids=lambda f: f.value)
def test_original_single_file_loads_offline_with_config(tmp_path, family):
    original = _tiny(family)
    original.save_pretrained(tmp_path / "cfg")
    path = save_ldm_checkpoint(original, tmp_path / f"{family.value}.safetensors", family)

    base = load_base(path, config=str(tmp_path / "cfg"))

    assert base.family is family
    for name in MODELS:
        want = getattr(original, name, None)
        if want is None:
            continue
        got_state, want_state = base.components[name].state_dict(), want.state_dict()
        assert got_state.keys() == want_state.keys(), name
        for key, tensor in want_state.items():
            assert not got_state[key].is_meta, f"{name}.{key} was not in the converted checkpoint"
            assert torch.equal(got_state[key], tensor), f"{name}.{key} differs"
    np.testing.assert_array_equal(_image(base.pipeline), _image(original))


def test_single_file_without_config_offline_asks_for_it(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    path = save_ldm_checkpoint(build_tiny_pipeline(ModelFamily.SD1), tmp_path / "sd15.safetensors")
    with pytest.raises(StudioError, match="--base-config"):
        load_base(path)

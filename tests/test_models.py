"""Base-model loading: family detection, the embedded default, and clear offline errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from studio.errors import StudioError, UnsafeFileError
from studio.models.family import ModelFamily, detect_family
from studio.models.loader import load_base
from studio.models.tiny import build_tiny_pipeline
from studio.models.tokenizer import build_tokenizer


@pytest.mark.parametrize("family", list(ModelFamily))
def test_family_is_detected_from_components(family):
    pipe = build_tiny_pipeline(family)
    assert detect_family(pipe.components) is family


def test_tokenizer_is_clip_compatible_and_complete():
    tok = build_tokenizer()
    ids = tok("A large RED circle, ink outline").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids[1:-1]  # every byte is in the vocabulary
    assert tok.decode(ids, skip_special_tokens=True) == "a large red circle , ink outline"
    assert len(tok("word " * 200, truncation=True, max_length=77).input_ids) == 77


def test_default_model_loads_offline_and_is_sd1():
    base = load_base("default")
    assert base.family is ModelFamily.SD1
    assert base.prediction_type == "epsilon"
    image = base.pipeline("a red circle", num_inference_steps=2, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3)


def test_diffusers_folder_round_trip(tmp_path):
    pipe = build_tiny_pipeline("sdxl")
    pipe.save_pretrained(tmp_path / "xl")
    base = load_base(tmp_path / "xl")
    assert base.family is ModelFamily.SDXL
    for name, param in pipe.unet.named_parameters():
        assert torch.equal(param, dict(base.pipeline.unet.named_parameters())[name])


def test_v_prediction_is_read_from_the_scheduler(tmp_path):
    build_tiny_pipeline("sd2", prediction_type="v_prediction").save_pretrained(tmp_path / "v")
    base = load_base(tmp_path / "v")
    assert (base.family, base.prediction_type) == (ModelFamily.SD2, "v_prediction")


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickle_checkpoints_are_refused_without_opening(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04 not even read")
    with pytest.raises(UnsafeFileError, match="pickle"):
        load_base(path)


def test_hub_id_offline_gives_one_clear_error():
    with pytest.raises(StudioError) as info:
        load_base("runwayml/stable-diffusion-v1-5")
    assert "offline" in str(info.value) and "local diffusers folder" in str(info.value)


def test_single_file_without_config_offline_says_what_to_pass(tmp_path):
    path = tmp_path / "sd15.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    with pytest.raises(StudioError) as info:
        load_base(path)
    assert "--base-config" in str(info.value) and str(path) in str(info.value)


def test_missing_path_and_non_model_folder(tmp_path):
    with pytest.raises(StudioError, match="no such model"):
        load_base(tmp_path / "nope")
    with pytest.raises(StudioError, match="model_index.json"):
        load_base(tmp_path)

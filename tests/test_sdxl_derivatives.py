"""SDXL derivatives: v-prediction with zero-terminal SNR, clip skip in training and generation, their metadata."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from studio.adapters.info import AdapterInfo
from studio.cli import main
from studio.config import TrainConfig
from studio.data import DatasetConfig, scan_dataset
from studio.families.sd1 import SD1
from studio.families.sdxl import SDXL
from studio.formats.metadata import kohya_metadata
from studio.generate import GenerationSession, a1111_fields, a1111_parameters
from studio.models.family import ModelFamily, stated_prediction
from studio.models.loader import BaseModel
from studio.models.tiny import build_tiny_pipeline
from studio.presets import PRESETS
from studio.recipes import GenerationSettings, Recipe, read_recipe
from studio.samples import make_demo_dataset
from studio.training.export import training_info
from studio.training.prediction import noise_schedule
from studio.training.run import setup_run


def test_v_target_with_zero_terminal_snr_matches_the_paper_formula():
    pipeline = build_tiny_pipeline("sd1")
    config = TrainConfig(v_prediction=True, zero_terminal_snr=True)
    scheduler = noise_schedule(config, SD1.training_scheduler(pipeline))
    # Lin et al. 2024, algorithm 1, from the scaled-linear betas by hand.
    c = scheduler.config
    betas = (
        torch.linspace(c.beta_start**0.5, c.beta_end**0.5, c.num_train_timesteps, dtype=torch.float64) ** 2
    )
    root = torch.cumprod(1 - betas, 0).sqrt()
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    alpha_bar = root**2
    assert float(scheduler.alphas_cumprod[-1]) == 0.0  # zero SNR at the last step
    latents, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, c.num_train_timesteps - 1])
    a = alpha_bar[t].float().view(-1, 1, 1, 1)
    expected = a.sqrt() * noise - (1 - a).sqrt() * latents
    target = SD1.training_target(scheduler, latents, noise, t)
    torch.testing.assert_close(target, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(target[2], -latents[2])  # at zero SNR the target is the image
    noisy = SD1.noisy_latents(scheduler, latents, noise, t)
    torch.testing.assert_close(noisy[2], noise[2])  # and the input pure noise


def _without_last_layers(encoder, n: int):
    """The reference: the same text encoder with its last ``n`` layers cut off."""
    cut = copy.deepcopy(encoder)
    model = getattr(cut, "text_model", cut)  # transformers 5 folds text_model into the class
    model.encoder.layers = model.encoder.layers[:-n]
    return cut


def test_clip_skip_is_the_hidden_state_of_a_truncated_encoder():
    pipeline = build_tiny_pipeline("sd1")
    parts = pipeline.components
    captions = ["a red fox", "inkstyle, a boat"]
    ids = parts["tokenizer"](captions, padding="max_length", max_length=parts["tokenizer"].model_max_length,
                             truncation=True, return_tensors="pt").input_ids  # fmt: skip
    with torch.no_grad():
        for skip in (2, 3):  # SD 1.x: N layers from the end, then the final layer norm (A1111/kohya)
            hidden, _ = SD1.encode_text(parts, captions, "cpu", clip_skip=skip)
            reference = _without_last_layers(parts["text_encoder"], skip - 1)(ids).last_hidden_state
            torch.testing.assert_close(hidden, reference)
        assert torch.equal(
            SD1.encode_text(parts, captions, "cpu", clip_skip=1)[0],
            SD1.encode_text(parts, captions, "cpu")[0],
        )

        xl = build_tiny_pipeline("sdxl").components  # SDXL: no final norm; 2 is its default
        assert torch.equal(
            SDXL.encode_text(xl, captions, "cpu", clip_skip=2)[0], SDXL.encode_text(xl, captions, "cpu")[0]
        )
        hidden, _ = SDXL.encode_text(xl, captions, "cpu", clip_skip=3)
        refs = []
        for te, tok in SDXL.text_encoders:
            ids = xl[tok](captions, padding="max_length", max_length=xl[tok].model_max_length,
                          truncation=True, return_tensors="pt").input_ids  # fmt: skip
            refs.append(_without_last_layers(xl[te], 2)(ids, output_hidden_states=True).hidden_states[-1])
        torch.testing.assert_close(hidden, torch.cat(refs, dim=-1))
    assert (
        SD1.pipeline_clip_skip(2),
        SD1.pipeline_clip_skip(1),
        SDXL.pipeline_clip_skip(2),
        SDXL.pipeline_clip_skip(3),
    ) == (1, None, None, 1)


def test_metadata_states_v_prediction_zero_snr_and_clip_skip_and_reads_back(tmp_path):
    dataset = scan_dataset(DatasetConfig(root=make_demo_dataset(tmp_path, count=2), resolution=64))
    base = BaseModel(None, ModelFamily.SDXL, "epsilon", "noob")
    config = PRESETS["Style (NoobAI-XL v-pred)"].apply()
    metadata = kohya_metadata(training_info(config, base, dataset, 1024, 10, 1.0))
    assert metadata["ss_clip_skip"] == "2" and metadata["modelspec.encoder_layer"] == "2"
    assert metadata["modelspec.prediction_type"] == "v" and metadata["ss_zero_terminal_snr"] == "True"
    assert AdapterInfo("x", metadata=metadata).clip_skip == 2
    assert stated_prediction(set(), metadata) == ("v_prediction", True)
    assert stated_prediction({"v_pred", "ztsnr", "model.diffusion_model.x"}, {}) == ("v_prediction", True)
    assert stated_prediction(set(), {"modelspec.prediction_type": "epsilon"}) == ("epsilon", False)
    assert stated_prediction(set(), {}) == (None, False)
    assert (
        PRESETS["Style (Illustrious XL)"].apply().clip_skip
        == 2
        == PRESETS["Style (Pony XL)"].apply().clip_skip
    )


def test_generation_honours_clip_skip_and_the_png_says_it(tmp_path):
    pipeline = build_tiny_pipeline("sd1")
    pipeline.set_progress_bar_config(disable=True)
    session = GenerationSession(pipeline, "tiny", ModelFamily.SD1)
    settings = GenerationSettings("a red fox", seed=1, steps=1, width=64, height=64)
    plain, skipped = (
        session.generate(GenerationSettings(**{**settings.__dict__, "clip_skip": n}))[0] for n in (None, 2)
    )
    assert plain.image.tobytes() != skipped.image.tobytes()
    assert a1111_fields(skipped.parameters)["Clip skip"] == "2" and "Clip skip" not in plain.parameters
    path = skipped.save(tmp_path / "x.png")
    assert read_recipe(path).settings.clip_skip == 2
    assert a1111_fields(Image.open(path).text["parameters"])["Steps"] == "1"
    again = session.generate(read_recipe(path).settings)[0]
    assert again.image.tobytes() == skipped.image.tobytes()
    assert a1111_parameters(Recipe("b", GenerationSettings("p", clip_skip=3))).endswith("Clip skip: 3")


def test_v_prediction_flags_refused_where_the_base_says_otherwise(tmp_path, capsys):
    data = make_demo_dataset(tmp_path / "data", count=2)
    epsilon = BaseModel(build_tiny_pipeline("sd1"), ModelFamily.SD1, "epsilon", "x.safetensors", "epsilon")
    with pytest.raises(Exception, match="metadata says it predicts noise"):
        setup_run(
            TrainConfig(data=str(data), output=str(tmp_path / "o.safetensors"), v_prediction=True), epsilon
        )
    build_tiny_pipeline("sd1").save_pretrained(tmp_path / "base")
    out = str(tmp_path / "o.safetensors")
    assert (
        main(["train", str(data), "--base", str(tmp_path / "base"), "--output", out, "--zero-terminal-snr"])
        == 2
    )
    err = capsys.readouterr().err  # loading the base draws progress bars; then one line
    lines = [line for line in err.splitlines() if line.startswith("studio:")]
    assert len(lines) == 1 and "--zero-terminal-snr needs v-prediction" in lines[0] and "Traceback" not in err


def test_a_single_file_that_states_v_pred_loads_as_v_and_one_that_says_epsilon_refuses_the_flag(
    tmp_path, capsys
):
    from ldm_checkpoint import pipeline_to_ldm_state_dict
    from safetensors.torch import save_file

    from studio.models.loader import load_base

    original = build_tiny_pipeline("sd1")
    original.save_pretrained(tmp_path / "cfg")
    state = pipeline_to_ldm_state_dict(original, ModelFamily.SD1)
    # NoobAI-style markers: empty "v_pred" and "ztsnr" tensors (what ComfyUI looks for).
    save_file(
        {**state, "v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}, str(tmp_path / "v.safetensors")
    )
    base = load_base(tmp_path / "v.safetensors", config=str(tmp_path / "cfg"))
    assert (base.prediction_type, base.stated_prediction) == ("v_prediction", "v_prediction")
    assert base.pipeline.scheduler.config.rescale_betas_zero_snr
    save_file(state, str(tmp_path / "eps.safetensors"), metadata={"modelspec.prediction_type": "epsilon"})
    data = make_demo_dataset(tmp_path / "data", count=2)
    argv = ["train", str(data), "--base", str(tmp_path / "eps.safetensors"), "--base-config", str(tmp_path / "cfg"),
            "--output", str(tmp_path / "o.safetensors"), "--v-prediction"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("studio:")]
    assert len(lines) == 1 and "metadata says it predicts noise" in lines[0] and "Traceback" not in err

"""Metadata as sd-scripts writes it, file hashes recomputed from raw bytes, and A1111's sidecar."""

from __future__ import annotations

import hashlib
import json
import struct
from datetime import datetime

import pytest
import torch

from studio.errors import StudioError
from studio.formats.kohya import save_kohya
from studio.formats.kohya_names import kohya_module_index
from studio.formats.metadata import TrainingInfo, kohya_metadata
from studio.formats.safetensors_io import data_section_sha256
from studio.lora.tensors import LoraTensors
from studio.models.family import ModelFamily
from studio.models.tiny import build_tiny_pipeline

REQUIRED = [
    "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args", "ss_base_model_version",
    "ss_v2", "ss_output_name", "ss_tag_frequency", "ss_resolution", "ss_num_train_images",
    "ss_training_started_at", "ss_training_finished_at", "ss_learning_rate", "ss_optimizer", "ss_lr_scheduler",
    "ss_max_train_steps", "ss_num_epochs", "ss_batch_size_per_device", "ss_gradient_checkpointing",
    "ss_mixed_precision", "ss_seed", "ss_dataset_dirs", "ss_bucket_info", "modelspec.sai_model_spec",
    "modelspec.architecture", "modelspec.implementation", "modelspec.resolution", "modelspec.title",
    "modelspec.date", "modelspec.prediction_type", "modelspec.trigger_phrase",
]  # fmt: skip


def info(family=ModelFamily.SD1, prediction_type="epsilon", **overrides) -> TrainingInfo:
    values = dict(
        output_name="ink_style",
        family=family,
        rank=16,
        alpha=8,
        trigger="inkstyle",
        network_args={"conv_dim": "4", "conv_alpha": "1"},
        prediction_type=prediction_type,
        resolution=(512, 512),
        num_train_images=20,
        tag_frequency={"10_inkstyle": {"inkstyle": 20, "red circle": 7}},
        dataset_dirs={"10_inkstyle": {"n_repeats": 10, "img_count": 20}},
        max_train_steps=1500,
        gradient_checkpointing=True,
        seed=42,
        started_at=1_700_000_000.5,
        finished_at=1_700_003_600.25,
    )
    values.update(overrides)
    return TrainingInfo(**values)


def test_values_are_strings_spelled_like_sd_scripts():
    metadata = kohya_metadata(info())
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    assert set(REQUIRED) <= set(metadata)
    assert metadata["ss_network_module"] == "networks.lora"
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("16", "8.0")
    assert json.loads(metadata["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "1"}
    assert json.loads(metadata["ss_tag_frequency"]) == {"10_inkstyle": {"inkstyle": 20, "red circle": 7}}
    assert metadata["ss_resolution"] == "(512, 512)"
    assert metadata["ss_num_train_images"] == "20" and metadata["ss_num_reg_images"] == "0"
    assert metadata["ss_gradient_checkpointing"] == "True" and metadata["ss_v2"] == "False"
    assert metadata["ss_min_snr_gamma"] == "None" and metadata["ss_seed"] == "42"
    assert metadata["ss_training_started_at"] == "1700000000.5"
    assert float(metadata["ss_training_finished_at"]) == 1_700_003_600.25
    assert datetime.fromisoformat(metadata["modelspec.date"]).timestamp() == 1_700_003_600
    assert metadata["modelspec.sai_model_spec"] == "1.0.1"
    assert metadata["modelspec.title"] == "ink_style" and metadata["ss_output_name"] == "ink_style"
    assert metadata["modelspec.trigger_phrase"] == "inkstyle"
    assert metadata["studio.layers"] == "cross-attn"


@pytest.mark.parametrize(
    "family, prediction, version, v2, architecture, implementation, resolution",
    [
        (ModelFamily.SD1, "epsilon", "sd_v1", "False", "stable-diffusion-v1/lora", "diffusers", "512x512"),
        (ModelFamily.SD2, "epsilon", "sd_v2", "True", "stable-diffusion-v2-512/lora", "diffusers", "512x512"),
        (
            ModelFamily.SD2,
            "v_prediction",
            "sd_v2_v",
            "True",
            "stable-diffusion-v2-768-v/lora",
            "diffusers",
            "768x768",
        ),
        (
            ModelFamily.SDXL,
            "epsilon",
            "sdxl_base_v1-0",
            "False",
            "stable-diffusion-xl-v1-base/lora",
            "https://github.com/Stability-AI/generative-models",
            "1024x1024",
        ),
    ],
)
def test_base_model_keys_per_family(
    family, prediction, version, v2, architecture, implementation, resolution
):
    side = int(resolution.split("x")[0])
    metadata = kohya_metadata(info(family, prediction, resolution=(side, side)))
    assert metadata["ss_base_model_version"] == version
    assert metadata["ss_v2"] == v2
    assert metadata["modelspec.architecture"] == architecture
    assert metadata["modelspec.implementation"] == implementation
    assert metadata["modelspec.resolution"] == resolution
    assert metadata["ss_resolution"] == f"({side}, {side})"
    assert metadata["modelspec.prediction_type"] == ("v" if prediction == "v_prediction" else "epsilon")


def test_defaults_fill_resolution_and_leave_out_empty_optional_fields():
    metadata = kohya_metadata(TrainingInfo(output_name="x", family=ModelFamily.SDXL, rank=4, alpha=4))
    assert metadata["ss_resolution"] == "(1024, 1024)"
    assert "modelspec.trigger_phrase" not in metadata and "modelspec.description" not in metadata
    assert metadata["ss_bucket_info"] == "null" and metadata["ss_training_finished_at"] == "None"


def random_lora(family: ModelFamily, rank: int) -> tuple[dict, dict]:
    """A random LoRA on every attention projection of a tiny base (no peft needed)."""
    pipe = build_tiny_pipeline(family, seed=0)
    generator = torch.Generator().manual_seed(0)
    lora = {}
    for ref in kohya_module_index(pipe.components, family).values():
        if ref.path.endswith(("to_q", "to_k", "to_v", "q_proj", "k_proj", "v_proj", "fc1", "fc2")):
            module = ref.module
            lora[(ref.component, ref.path)] = LoraTensors(
                torch.randn(rank, module.in_features, generator=generator),
                torch.randn(module.out_features, rank, generator=generator),
                alpha=rank / 2,
            )
    return pipe.components, lora


def raw_parts(path) -> tuple[bytes, dict, bytes]:
    """(file bytes, parsed JSON header, data section), parsed by hand from the format spec."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    return raw, json.loads(raw[8 : 8 + header_len]), raw[8 + header_len :]


def test_hashes_match_an_independent_computation_over_the_file(tmp_path):
    components, lora = random_lora(ModelFamily.SD1, rank=64)
    metadata = kohya_metadata(info())
    path = save_kohya(
        tmp_path / "big.safetensors", lora, components, ModelFamily.SD1, metadata, dtype=torch.float32
    )
    raw, header, data = raw_parts(path)
    assert len(raw) > 0x110000  # the legacy window is full
    stored = header["__metadata__"]
    assert stored["sshs_model_hash"] == hashlib.sha256(data).hexdigest() == data_section_sha256(path)
    assert stored["sshs_legacy_hash"] == hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8]
    assert stored["sshs_legacy_hash"] != hashlib.sha256(b"").hexdigest()[:8]
    assert {k: v for k, v in stored.items() if not k.startswith("sshs_")} == metadata
    names = {key.split(".", 1)[0] for key in header if key != "__metadata__"}
    assert len(names) == len(lora)
    assert set(header) - {"__metadata__"} == {
        f"{n}.{s}" for n in names for s in ("lora_down.weight", "lora_up.weight", "alpha")
    }
    assert all(header[f"{n}.alpha"]["shape"] == [] for n in names)


def test_small_file_hashes_the_empty_legacy_window_and_metadata_leaves_model_hash(tmp_path):
    components, lora = random_lora(ModelFamily.SDXL, rank=2)
    a = save_kohya(tmp_path / "a.safetensors", lora, components, ModelFamily.SDXL, kohya_metadata(info()))
    b = save_kohya(
        tmp_path / "b.safetensors", lora, components, ModelFamily.SDXL, {"ss_output_name": "other"}
    )
    (raw_a, header_a, _), (_, header_b, _) = raw_parts(a), raw_parts(b)
    assert len(raw_a) < 0x100000
    assert header_a["__metadata__"]["sshs_legacy_hash"] == hashlib.sha256(b"").hexdigest()[:8]
    assert header_a["__metadata__"]["sshs_model_hash"] == header_b["__metadata__"]["sshs_model_hash"]


def test_sidecar_is_a1111_user_metadata_and_keeps_user_edits(tmp_path):
    components, lora = random_lora(ModelFamily.SDXL, rank=2)
    metadata = kohya_metadata(info(ModelFamily.SDXL, description="Ink outlines."))
    sidecar = tmp_path / "ink.json"
    sidecar.write_text(json.dumps({"negative text": "blurry", "activation text": "old"}))
    save_kohya(
        tmp_path / "ink.safetensors", lora, components, ModelFamily.SDXL, metadata, preferred_weight=0.8
    )
    user = json.loads(sidecar.read_text())
    assert user["sd version"] == "SDXL"
    assert user["activation text"] == "inkstyle"
    assert user["preferred weight"] == 0.8
    assert user["description"] == "Ink outlines."
    assert user["notes"] == "rank 16, alpha 8.0, layers cross-attn, 1500 steps"
    assert user["negative text"] == "blurry"  # set in A1111, not ours to drop


def test_save_refuses_other_suffixes_and_non_string_metadata(tmp_path):
    components, lora = random_lora(ModelFamily.SD1, rank=2)
    with pytest.raises(StudioError, match=r"lora\.ckpt: a kohya LoRA file must end in \.safetensors"):
        save_kohya(tmp_path / "lora.ckpt", lora, components, ModelFamily.SD1, {})
    with pytest.raises(TypeError):
        save_kohya(tmp_path / "lora.safetensors", lora, components, ModelFamily.SD1, {"ss_network_dim": 4})
    assert not list(tmp_path.iterdir())

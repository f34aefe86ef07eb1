"""Model families: the registry, detection, and a family added from outside the studio.

``TinySD1Variant`` lives only in this file: registering it must be enough for the studio
to detect its models, train on them with its own text encoding, LoRA targets and default
resolution, export the adapter and mix it, without any studio file naming it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from studio.config import TrainConfig
from studio.families import (
    SD1,
    SD2,
    SDXL,
    detect_family,
    families,
    family_for_checkpoint,
    get_family,
    registered,
)
from studio.families.sd1 import SD1Family
from studio.families.stable_diffusion import is_unet_pipeline, tokenize
from studio.formats.safetensors_io import read_header
from studio.generate import GenerationSession
from studio.mixer import AdapterWeights
from studio.models.family import ModelFamily
from studio.models.loader import load_base
from studio.models.tiny import build_tiny_pipeline, tiny_sd_pipeline
from studio.recipes import GenerationSettings
from studio.samples import make_demo_dataset
from studio.training.recipe import train


class TinySD1Variant(SD1Family):
    """A shallow SD 1.x (one layer per block) that conditions on the penultimate text layer
    (clip skip 2) and adapts only the cross-attention keys and values."""

    id = "tiny-sd1-variant"
    display_name = "tiny SD 1.x variant"
    default_resolution = 64
    full_size = None
    lora_patterns = {
        **SD1Family.lora_patterns,
        "cross-attn": {
            "denoiser": r"\.transformer_blocks\.\d+\.attn2\.(to_k|to_v)$",
            "text_encoder": r"\.self_attn\.(k_proj|v_proj)$",
        },
    }

    def __init__(self) -> None:
        self.captions_encoded = 0

    @property
    def adapter_family(self):
        return SD1  # its files are SD 1.x LoRAs to every other tool

    def matches(self, components: dict[str, Any]) -> bool:
        return is_unet_pipeline(components) and components["unet"].config.layers_per_block == 1

    def build_tiny(self, seed: int = 0, prediction_type: str = "epsilon") -> Any:
        return tiny_sd_pipeline(seed, prediction_type, cross_attention_dim=32, layers_per_block=1)

    def encode_text(self, components, captions, device):
        self.captions_encoded += len(captions)
        ids = tokenize(components["tokenizer"], captions, device)
        return components["text_encoder"](ids, output_hidden_states=True).hidden_states[-2], None


@pytest.fixture
def variant():
    with registered(TinySD1Variant()) as family:
        yield family
    assert "tiny-sd1-variant" not in [f.id for f in families()]


def test_model_family_ids_are_the_built_in_family_objects():
    assert list(ModelFamily) == [SD1, SD2, SDXL]
    assert ModelFamily.SDXL is SDXL and ModelFamily("sd2") is SD2 and ModelFamily(SD1) is SD1
    assert isinstance(SD1, ModelFamily) and SD1.value == "sd1"
    assert SDXL.text_encoder_names == ("text_encoder", "text_encoder_2")
    assert [f.default_resolution for f in ModelFamily] == [512, 768, 1024]
    with pytest.raises(ValueError, match="not a known model family"):
        ModelFamily("sd9")


@pytest.mark.parametrize("family", list(ModelFamily), ids=lambda f: f.id)
def test_each_family_detects_its_own_tiny_model(family):
    assert detect_family(build_tiny_pipeline(family).components) is family


def test_single_file_checkpoints_are_told_apart_by_their_keys():
    assert family_for_checkpoint({"conditioner.embedders.1.model.ln_final.weight"}) is SDXL
    assert family_for_checkpoint({"cond_stage_model.model.ln_final.weight"}) is SD2
    assert family_for_checkpoint({"cond_stage_model.transformer.text_model.final_layer_norm.weight"}) is SD1


def test_an_id_cannot_be_taken_twice(variant):
    with pytest.raises(ValueError, match="already registered"), registered(TinySD1Variant()):
        pass
    assert get_family("tiny-sd1-variant") is variant


def test_sdxl_conditions_on_pooled_text_and_size_ids():
    pipe = build_tiny_pipeline("sdxl")
    hidden, pooled = SDXL.encode_text(pipe.components, ["a cat", "a dog"], torch.device("cpu"))
    assert hidden.shape == (2, 77, 64) and pooled.shape == (2, 32)  # two encoders side by side
    assert SD1.encode_text(build_tiny_pipeline("sd1").components, ["a cat"], torch.device("cpu"))[1] is None


def test_a_family_registered_from_outside_trains_exports_and_mixes(variant, tmp_path):
    variant.build_tiny(seed=0).save_pretrained(tmp_path / "base")
    base = load_base(tmp_path / "base")
    assert base.family is variant
    data = make_demo_dataset(tmp_path / "data", count=2)
    config = TrainConfig(
        data=str(data), base=str(tmp_path / "base"), output=str(tmp_path / "style.safetensors"),
        trigger="inkstyle", batch_size=2, rank=4, lr=1e-2, steps=3, seed=1,
    )  # fmt: skip
    result = train(config, base=base)
    assert result.steps == 3 and all(np.isfinite(result.losses))
    assert variant.captions_encoded > 0  # its own text encoding fed the UNet

    tensors = load_file(str(result.outputs[0]))
    modules = {key.split(".")[0] for key in tensors}
    assert modules and all(m.endswith(("attn2_to_k", "attn2_to_v", "k_proj", "v_proj")) for m in modules)
    metadata = read_header(result.outputs[0]).metadata
    assert metadata["ss_resolution"] == "(64, 64)"  # the family's default resolution
    assert metadata["ss_base_model_version"] == "sd_v1"  # an SD 1.x file to other tools

    fresh = load_base(tmp_path / "base")
    session = GenerationSession(fresh.pipeline, "variant")
    assert session.model_family is variant and session.native_size() == (64, 64)
    settings = GenerationSettings(prompt="inkstyle, a house", steps=2, seed=3)
    plain = np.asarray(session.generate(settings)[0].image, dtype=np.int16)
    adapter = session.add_adapter(result.outputs[0])
    assert adapter.report.applied == len(modules) and not adapter.report.unmatched
    styled = session.generate(settings)[0]
    assert styled.image.size == (64, 64)
    assert np.abs(np.asarray(styled.image, dtype=np.int16) - plain).max() > 0  # the adapter acts
    session.set_weights(adapter.name, AdapterWeights(0.0))
    assert np.array_equal(np.asarray(session.generate(settings)[0].image, dtype=np.int16), plain)

"""``studio inspect`` on our files, on hand-built foreign ones, and on broken ones."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from studio.cli import main
from studio.errors import StudioError
from studio.formats.diffusers_format import save_diffusers_lora
from studio.formats.inspect import format_report, inspect_file
from studio.formats.kohya import layer_shapes, save_kohya
from studio.formats.kohya_names import kohya_module_index
from studio.formats.metadata import TrainingInfo, kohya_metadata
from studio.lora.tensors import LoraTensors
from studio.models.family import ModelFamily
from studio.models.tiny import build_tiny_pipeline

UNET_K = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
TE_Q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
HUGE = b'{"a.alpha":{"dtype":"F32","shape":[1000000],"data_offsets":[0,4000000]}}'  # claims 4 MB, has none


def our_lora(family: ModelFamily) -> tuple[dict, dict]:
    """A random rank-4, alpha-2 LoRA on every attention layer of a tiny base."""
    pipe = build_tiny_pipeline(family, seed=0)
    lora = {}
    for ref in kohya_module_index(pipe.components, family).values():
        if "attentions" in ref.path or "self_attn" in ref.path:
            down, up = layer_shapes(ref.module, 4)
            lora[(ref.component, ref.path)] = LoraTensors(torch.randn(down), torch.randn(up), alpha=2.0)
    return pipe.components, lora


@pytest.fixture(scope="module")
def sdxl_file(tmp_path_factory):
    components, lora = our_lora(ModelFamily.SDXL)
    info = TrainingInfo(
        output_name="ink",
        family=ModelFamily.SDXL,
        rank=4,
        alpha=2,
        trigger="inkstyle",
        tag_frequency={
            "10_ink": {"inkstyle": 12, "red circle": 5},
            "5_more": {"red circle": 2, "x" * 300: 1},
        },
    )
    path = tmp_path_factory.mktemp("ours") / "ink.safetensors"
    return save_kohya(path, lora, components, ModelFamily.SDXL, kohya_metadata(info)), lora


def write(path, tensors: dict, metadata: dict | None = None):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def test_our_sdxl_file(sdxl_file):
    path, lora = sdxl_file
    report = inspect_file(path)
    assert report.format == "kohya LoRA"
    assert report.family == "SDXL" and "ss_base_model_version" in report.family_evidence
    expected = {"unet": 0, "te1": 0, "te2": 0}
    for component, _ in lora:
        expected[{"unet": "unet", "text_encoder": "te1", "text_encoder_2": "te2"}[component]] += 1
    assert report.modules == expected
    assert report.ranks == [4] and report.alphas == [2.0]
    assert report.dtypes == {"F16": 2 * len(lora), "F32": len(lora)}
    assert report.top_tags[:2] == [("inkstyle", 12), ("red circle", 7)]
    assert report.file_size == path.stat().st_size
    text = format_report(report)
    assert "format:   kohya LoRA" in text and "inkstyle (12), red circle (7)" in text
    assert "x" * 300 not in text  # long values are shortened
    assert "ss_output_name" in text and "ink" in text


def test_our_diffusers_file_reads_alpha_from_the_adapter_config(tmp_path):
    components, lora = our_lora(ModelFamily.SD1)
    metadata = kohya_metadata(TrainingInfo(output_name="d", family=ModelFamily.SD1, rank=4, alpha=2))
    path = save_diffusers_lora(tmp_path / "d.safetensors", lora, components, ModelFamily.SD1, metadata)
    report = inspect_file(path)
    assert report.format == "peft"
    assert report.alphas == [2.0] and report.ranks == [4]
    assert report.modules == {
        "te": sum(c == "text_encoder" for c, _ in lora),
        "unet": sum(c == "unet" for c, _ in lora),
    }
    # tiny layer widths match no real base, so only the metadata can tell
    assert (report.family, report.family_evidence) == ("SD1", "ss_base_model_version")
    assert "lora_adapter_metadata" in report.metadata


def test_loha_file_is_recognised_with_family_from_its_shapes(tmp_path):
    r = 8
    tensors = {
        f"{UNET_K}.hada_w1_a": torch.zeros(640, r),
        f"{UNET_K}.hada_w1_b": torch.zeros(r, 768),
        f"{UNET_K}.hada_w2_a": torch.zeros(640, r),
        f"{UNET_K}.hada_w2_b": torch.zeros(r, 768),
        f"{UNET_K}.alpha": torch.tensor(4.0),
    }
    report = inspect_file(write(tmp_path / "loha.safetensors", tensors))
    assert report.format == "LyCORIS LoHa"
    assert report.family == "SD1" and report.family_evidence == "cross-attention width 768"
    assert report.modules == {"unet": 1} and report.ranks == [8] and report.alphas == [4.0]
    assert report.metadata == {}


def test_lokr_locon_and_dora_are_told_apart(tmp_path):
    lokr = {f"{UNET_K}.lokr_w1": torch.zeros(8, 8), f"{UNET_K}.lokr_w2": torch.zeros(80, 96)}
    assert inspect_file(write(tmp_path / "lokr.safetensors", lokr)).format == "LyCORIS LoKr"
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    locon = {
        f"{conv}.lora_down.weight": torch.zeros(4, 320, 3, 3),
        f"{conv}.lora_up.weight": torch.zeros(320, 4, 1, 1),
        f"{conv}.alpha": torch.tensor(1.0),
    }
    assert inspect_file(write(tmp_path / "locon.safetensors", locon)).format == "LoCon (kohya/LyCORIS)"
    dora = {
        f"{TE_Q}.lora_down.weight": torch.zeros(4, 1024),
        f"{TE_Q}.lora_up.weight": torch.zeros(1024, 4),
        f"{TE_Q}.dora_scale": torch.zeros(1, 1024),
    }
    report = inspect_file(write(tmp_path / "dora.safetensors", dora))
    assert report.format == "DoRA (kohya LoRA)"
    assert report.family == "SD2" and report.family_evidence == "text-encoder width 1024"
    assert report.alphas == [] and "none (scale 1" in format_report(report)


def test_peft_and_legacy_diffusers_files(tmp_path):
    k = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    peft = {
        f"{k}.lora_A.weight": torch.zeros(16, 2048),
        f"{k}.lora_B.weight": torch.zeros(640, 16),
        "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 1280),
        "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(1280, 8),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 768),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(768, 8),
    }
    report = inspect_file(write(tmp_path / "peft.safetensors", peft))
    assert report.format == "peft" and report.family == "SDXL"
    assert report.modules == {"te1": 1, "te2": 1, "unet": 1} and report.ranks == [8, 16]
    legacy = {
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight": torch.zeros(
            4, 1024
        ),
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.up.weight": torch.zeros(
            1280, 4
        ),
    }
    report = inspect_file(write(tmp_path / "legacy.safetensors", legacy))
    assert report.format == "diffusers (legacy)" and report.family == "SD2" and report.modules == {"unet": 1}


def test_structure_beats_wrong_metadata_and_says_so(tmp_path):
    tensors = {
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 1280),
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(5120, 4),
    }
    report = inspect_file(write(tmp_path / "x.safetensors", tensors, {"ss_base_model_version": "sd_v1"}))
    assert report.family == "SDXL"
    assert report.family_evidence == "second text encoder; metadata (ss_base_model_version) says SD1"


def test_cli_prints_report_and_json(sdxl_file, capsys):
    path, lora = sdxl_file
    assert main(["inspect", str(path)]) == 0
    assert "base:     SDXL" in capsys.readouterr().out
    assert main(["inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format"] == "kohya LoRA" and data["ranks"] == [4]
    assert data["metadata"]["ss_output_name"] == "ink" and data["top_tags"][0] == ["inkstyle", 12]


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("garbage.safetensors", b"\x00\x01not a safetensors file at all", "length runs past the end"),
        ("short.safetensors", b"\x01", "shorter than 8 bytes"),
        ("badjson.safetensors", (6).to_bytes(8, "little") + b"{oops}", "not valid JSON"),
        (
            "overflow.safetensors",
            len(HUGE).to_bytes(8, "little") + HUGE,
            "lies outside the data",
        ),
        ("model.ckpt", b"PK\x03\x04 pickle", "refusing to open a pickle file"),
    ],
)
def test_cli_rejects_bad_files_in_one_line(tmp_path, capsys, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    assert main(["inspect", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("studio: error: ") and str(path) in lines[0]
    assert reason in lines[0] and "Traceback" not in captured.err
    with pytest.raises(StudioError):
        inspect_file(path)

"""The base picker's listing on real files: tiny checkpoints, a saved diffusers folder, a hub cache
laid out as huggingface_hub lays it out; and downloads that fail offline with one line."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save_file
from test_adapters_support import tiny

from studio.app import models
from studio.app.workspace import Workspace
from studio.errors import StudioError

HASH = "0123456789abcdef0123456789abcdef01234567"


def checkpoint(path: Path, *keys: str) -> Path:
    save_file({key: torch.zeros(2) for key in keys}, str(path))
    return path


def fake_hub_repo(cache: Path, repo_id: str, source: Path) -> None:
    """``models--owner--name`` with blobs, a snapshot of symlinks and ``refs/main``, as the hub client writes."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    denoiser = "unet" if (source / "unet").is_dir() else "transformer"
    for rel in ("model_index.json", f"{denoiser}/config.json"):
        data = (source / rel).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / HASH / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * rel.count("/") + "../../blobs") / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HASH)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("saved")
    for family in ("sd1", "sdxl"):
        tiny(family).save_pretrained(root / family, safe_serialization=True)
    return {"sd1": root / "sd1", "sdxl": root / "sdxl"}


@pytest.fixture
def ws(tmp_path, saved, monkeypatch) -> Workspace:
    ws = Workspace.open(tmp_path / "ws")
    shutil.copytree(saved["sd1"], ws.models / "tiny-sd1")
    checkpoint(ws.models / "v1.safetensors", "model.diffusion_model.input_blocks.0.0.weight")
    checkpoint(ws.models / "v2.safetensors", "cond_stage_model.model.ln_final.weight")
    checkpoint(ws.models / "xl.safetensors", "conditioner.embedders.1.model.ln_final.weight")
    (ws.models / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    (ws.models / "notes.txt").write_text("not a model")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    fake_hub_repo(tmp_path / "hf" / "hub", "someone/tiny-xl", saved["sdxl"])
    return ws


def test_the_picker_lists_folders_checkpoints_and_the_hub_cache_with_their_family(ws):
    listed = {(e.value, e.kind, e.family, e.note) for e in models.list_models(ws)}
    assert listed == {
        ("default", "embedded", "sd1", ""),
        ("models/tiny-sd1", "diffusers", "sd1", ""),
        ("models/v1.safetensors", "checkpoint", "sd1", ""),
        ("models/v2.safetensors", "checkpoint", "sd2", ""),
        ("models/xl.safetensors", "checkpoint", "sdxl", ""),
        ("models/broken.safetensors", "checkpoint", None, "unreadable"),
        ("hub:someone/tiny-xl", "hub", "sdxl", ""),
    }
    labels = dict((value, label) for label, value in models.base_choices(ws))
    assert labels["hub:someone/tiny-xl"] == "someone/tiny-xl (hub cache, sdxl)"
    assert labels["models/xl.safetensors"] == "models/xl.safetensors (checkpoint, sdxl)"
    assert labels["models/broken.safetensors"] == "models/broken.safetensors (checkpoint, unreadable)"


def test_a_checkpoint_gets_configs_of_its_own_family(ws):
    choices, family = models.config_choices(ws, "models/v1.safetensors")
    assert family == "sd1"
    assert [value for _, value in choices] == ["", "default", "models/tiny-sd1"]
    choices, family = models.config_choices(ws, "models/xl.safetensors")
    assert (family, [value for _, value in choices]) == ("sdxl", ["", "hub:someone/tiny-xl"])
    assert models.config_choices(ws, "models/tiny-sd1") == ([], None)  # a folder needs no config
    assert models.resolve_config(ws, "models/tiny-sd1") == str(ws.models / "tiny-sd1")
    assert models.resolve_config(ws, "hub:someone/tiny-xl") == "someone/tiny-xl"
    assert models.resolve_config(ws, "") is None


def test_hub_choices_resolve_to_their_id_and_recipes_find_them(ws):
    assert models.resolve_base(ws, "hub:someone/tiny-xl") == "someone/tiny-xl"
    assert models.base_fields(ws, "someone/tiny-xl") == ("hub:someone/tiny-xl", "", True)
    assert models.base_fields(ws, "someone/elsewhere") == ("default", "someone/elsewhere", True)
    with pytest.raises(StudioError, match="is not a hub id"):
        models.resolve_base(ws, "hub:../etc")


def test_a_download_offline_is_one_line_naming_the_id_and_the_way_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StudioError) as err:
        models.download("someone/big-model")
    text = str(err.value)
    assert "'someone/big-model'" in text and "offline" in text and "workspace's models/ folder" in text
    assert "\n" not in text


def test_a_download_without_network_says_the_same(monkeypatch, tmp_path):
    """Online mode, but the hub does not answer (a closed local port stands in for no network)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(StudioError, match=r"cannot download 'someone/big-model': this machine is offline"):
        models.download("someone/big-model")


def test_the_picker_knows_the_flow_families_from_folders_checkpoints_and_the_hub(ws, tmp_path):
    """SD3.5 and Flux folders are told by their transformer config (built on the meta device),
    single files by their SAI / BFL keys, hub snapshots like folders."""
    from studio.families import get_family

    for family in ("flux", "sd3"):
        get_family(family).build_tiny().save_pretrained(tmp_path / family, safe_serialization=True)
    shutil.copytree(tmp_path / "flux", ws.models / "tiny-flux")
    fake_hub_repo(tmp_path / "hf" / "hub", "someone/tiny-sd3", tmp_path / "sd3")
    checkpoint(ws.models / "flux1.safetensors", "double_blocks.0.img_attn.qkv.weight")
    checkpoint(ws.models / "sd35.safetensors", "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight")
    (ws.models / "odd").mkdir()
    (ws.models / "odd" / "model_index.json").write_text('{"transformer": ["diffusers", "os"]}')
    (ws.models / "odd" / "transformer").mkdir()
    (ws.models / "odd" / "transformer" / "config.json").write_text("{}")
    listed = {e.value: (e.family, e.note) for e in models.list_models(ws)}
    assert listed["models/tiny-flux"] == ("flux", "")
    assert listed["hub:someone/tiny-sd3"] == ("sd3", "")
    assert listed["models/flux1.safetensors"] == ("flux", "")
    assert listed["models/sd35.safetensors"] == ("sd3", "")
    assert listed["models/odd"] == (None, "unreadable")  # a class that is no diffusers model

"""Crash-safe writes and the training config's file round trip."""

from __future__ import annotations

import os

import pytest

from studio import atomic
from studio.atomic import atomic_dir, atomic_path, write_text
from studio.config import TrainConfig
from studio.errors import StudioError


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "adapter.safetensors"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-save")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter.safetensors"]


def test_failed_directory_write_keeps_the_previous_directory(tmp_path):
    target = tmp_path / "step-000010"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError
    assert (target / "a").read_text() == "1"
    with atomic_dir(target) as tmp:
        (tmp / "b").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b"]


def test_finished_files_get_normal_permissions_not_mkstemps_private_ones(tmp_path):
    write_text(tmp_path / "new.txt", "x")
    with atomic_dir(tmp_path / "folder") as folder:
        (folder / "f").write_text("y")
    expected = 0o666 & ~atomic._UMASK
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == expected
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~atomic._UMASK
    os.chmod(tmp_path / "new.txt", 0o640)
    write_text(tmp_path / "new.txt", "replaced")  # a replaced file keeps the mode it had
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_config_round_trip(tmp_path, suffix):
    config = TrainConfig(
        data="d", rank=8, alpha=4.0, lr=3e-4, sample_prompts=['a "quoted" prompt', "b"], trigger="x"
    )
    config.save(tmp_path / f"c{suffix}")
    assert TrainConfig.load(tmp_path / f"c{suffix}") == config


def test_config_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("rank = = 3")
    with pytest.raises(StudioError, match="bad.toml"):
        TrainConfig.load(bad)
    bad.write_text("rnak = 3")
    with pytest.raises(StudioError, match="rnak"):
        TrainConfig.load(bad)
    with pytest.raises(StudioError, match="rank"):
        TrainConfig(rank=0).validate()

"""App exposure and uploads: localhost by default, a warning when exposed, hostile zips refused."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_app_support import REPO, dataset_zip, free_port, wait_for

from studio.app import datasets
from studio.app.server import AppConfig, add_arguments, config_from_args, exposure_warning, parse_auth
from studio.app.uploads import UploadLimits, import_uploads
from studio.app.workspace import Workspace
from studio.errors import StudioError


def _args(*argv: str) -> AppConfig:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_default_bind_is_localhost_with_no_warning():
    config = _args()
    assert (config.host, config.port, config.share, config.auth) == ("127.0.0.1", 7860, False, None)
    assert config.workspace == "studio-workspace"
    assert exposure_warning(config) is None


@pytest.mark.parametrize(
    ("argv", "warns"),
    [
        (["--host", "0.0.0.0"], "from the network (0.0.0.0)"),
        (["--share"], "from the internet"),
        (["--host", "0.0.0.0", "--auth", "me:secret"], None),
        (["--share", "--auth", "me:secret"], None),
        (["--host", "localhost"], None),
    ],
)
def test_exposure_warning(argv, warns):
    warning = exposure_warning(_args(*argv))
    if warns is None:
        assert warning is None
    else:
        assert warns in warning and "--auth" in warning


def test_auth_must_be_user_and_password():
    assert parse_auth("me:se:cret") == ("me", "se:cret")
    for bad in ("me", "me:", ":pw"):
        with pytest.raises(StudioError, match="USER:PASSWORD"):
            parse_auth(bad)


def test_app_exposed_without_auth_prints_the_warning(tmp_path):
    """The real launcher, bound to all interfaces: the warning is on stderr before the server starts."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "app.py"), "--host", "0.0.0.0", "--port", str(port), "--workspace",
         str(tmp_path / "ws")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        os.set_blocking(proc.stdout.fileno(), False)

        def warned() -> bool:
            lines.extend(proc.stdout.readlines())
            return (
                any("WARNING" in line and "WITHOUT a password" in line for line in lines)
                or proc.poll() is not None
            )

        wait_for(warned, 120, "the exposure warning")
    finally:
        proc.kill()
        proc.wait()
    assert any("--auth user:password" in line for line in lines), "".join(lines)


def _zip(path: Path, entries: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return path


@pytest.fixture()
def ws(tmp_path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


def _import(ws: Workspace, files: list[Path], limits: UploadLimits | None = None):
    return import_uploads(files, ws.datasets / "up", ws.uploads, limits or UploadLimits())


@pytest.mark.parametrize(
    ("entries", "symlink", "reason"),
    [
        ({"ok.txt": b"a cat", "../../escape.txt": b"x"}, None, "'..' path"),
        ({"/etc/cron.d/evil.txt": b"x"}, None, "absolute path"),
        ({"C:/evil.txt": b"x"}, None, "absolute path"),
        ({"ok.txt": b"a"}, "link.png", "symlink"),
    ],
)
def test_hostile_zips_are_refused_and_nothing_is_written(ws, tmp_path, entries, symlink, reason):
    archive = _zip(tmp_path / "evil.zip", entries, symlink)
    with pytest.raises(StudioError, match=reason) as exc:
        _import(ws, [archive])
    assert "evil.zip" in str(exc.value)
    assert not (ws.datasets / "up").exists()
    assert not (tmp_path / "escape.txt").exists() and not Path("/escape.txt").exists()
    assert [p for p in ws.uploads.rglob("*") if p.is_file()] == []  # staging cleaned up


def test_zip_bomb_is_stopped_by_ratio(ws, tmp_path):
    archive = _zip(tmp_path / "bomb.zip", {"huge.png": b"\0" * (64 << 20)})  # 64 MiB of zeros: ~64 KiB zipped
    assert archive.stat().st_size < 1 << 20
    with pytest.raises(StudioError, match="zip bomb"):
        _import(ws, [archive])
    assert not (ws.datasets / "up").exists()


def test_inflated_size_cap_counts_bytes_while_extracting(ws, tmp_path):
    archive = _zip(tmp_path / "big.zip", {f"{i}.png": os.urandom(300_000) for i in range(4)})
    with pytest.raises(StudioError, match="upload too large"):
        _import(ws, [archive], UploadLimits(max_bytes=1 << 20))
    assert not (ws.datasets / "up").exists()


def test_file_count_cap(ws, tmp_path):
    archive = _zip(tmp_path / "many.zip", {f"{i}.txt": b"x" for i in range(30)})
    with pytest.raises(StudioError, match="too many files: more than 10"):
        _import(ws, [archive], UploadLimits(max_files=10))


def test_good_zip_keeps_kohya_folders_and_skips_other_files(ws, tmp_path):
    archive = dataset_zip(tmp_path / "set.zip", count=4)
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("notes/readme.md", "hello")
        zf.writestr("__MACOSX/10_inkstyle/._shape_00.png", "junk")
    result = _import(ws, [archive])
    names = sorted(p.relative_to(result.folder).as_posix() for p in result.written)
    assert names[:2] == ["10_inkstyle/shape_00.png", "10_inkstyle/shape_00.txt"] and len(names) == 8
    assert result.skipped == ["notes/readme.md: not an image or caption file"]
    assert ws.contains(result.folder)


def test_caption_table_cannot_write_outside_the_dataset(ws, tmp_path):
    archive = dataset_zip(tmp_path / "set.zip", count=2)
    folder = _import(ws, [archive]).folder
    with pytest.raises(StudioError, match="no image '../../x.png'"):
        datasets.save_captions(folder, [["../../x.png", "pwned", ""]])
    rows = [["10_inkstyle/shape_00.png", "a new caption", ""]]
    assert datasets.save_captions(folder, rows) == 1
    assert (folder / "10_inkstyle/shape_00.txt").read_text() == "a new caption\n"


def test_paths_outside_the_workspace_are_refused(ws, tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    (ws.datasets / "link").symlink_to(outside)
    for path in ("/etc", "../secret", str(outside), "datasets/link"):
        with pytest.raises(StudioError, match="outside the workspace"):
            datasets.dataset_folder(ws, path)
    assert ws.resolve("datasets") == ws.datasets


@pytest.mark.slow
def test_auth_is_enforced_and_only_workspace_files_are_served(tmp_path):
    import httpx
    from gradio_client import Client
    from test_app_support import AppProcess

    ws = Workspace.open(tmp_path / "ws")
    (ws.datasets / "a").mkdir()
    (ws.datasets / "a" / "x.txt").write_text("inside")
    (tmp_path / "secret.txt").write_text("outside")
    app = AppProcess(ws.root, "--auth", "me:secret")
    try:
        with pytest.raises(Exception, match="(?i)login|auth|credentials"):
            Client(app.url, auth=("me", "wrong"), verbose=False)
        assert Client(app.url, auth=("me", "secret"), verbose=False).predict(api_name="/list_adapters") == []
        file_url = app.url + "gradio_api/file="
        with httpx.Client() as anonymous:
            assert anonymous.get(file_url + str(ws.datasets / "a" / "x.txt")).status_code in (401, 403)
        with httpx.Client() as browser:
            assert (
                browser.post(app.url + "login", data={"username": "me", "password": "secret"}).status_code
                == 200
            )
            assert browser.get(file_url + str(ws.datasets / "a" / "x.txt")).text == "inside"
            for path in (
                tmp_path / "secret.txt",
                Path("/etc/passwd"),
                ws.db_path,
                ws.root / ".browser-secret",  # the key of the settings each browser keeps
                ws.datasets / "a" / ".." / ".." / ".." / "secret.txt",
            ):
                assert browser.get(file_url + str(path)).status_code == 403, path
        # A second app on the same workspace, or on a taken port, stops with one line.
        for argv, code, message in (
            (["--workspace", str(ws.root), "--port", str(free_port())], 2, "already using this workspace"),
            (["--workspace", str(tmp_path / "other"), "--port", str(app.port)], 1, "pass another --port"),
        ):
            done = subprocess.run(
                [sys.executable, str(REPO / "app.py"), *argv], capture_output=True, text=True, timeout=120
            )
            assert done.returncode == code and message in done.stderr and "Traceback" not in done.stderr, (
                done.stderr
            )
    finally:
        app.stop()
    assert "WITHOUT a password" not in app.output()


def test_studio_app_subcommand_has_the_launch_flags():
    from studio.cli import build_parser

    args = build_parser().parse_args(
        ["app", "--host", "0.0.0.0", "--auth", "a:b", "--workspace", "w", "--port", "9"]
    )
    config = config_from_args(args)
    assert (config.host, config.auth, config.workspace, config.port) == ("0.0.0.0", "a:b", "w", 9)
    assert exposure_warning(config) is None

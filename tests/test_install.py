"""A fresh install works on any day: the wheel carries the default model, versions are checked at
start-up in one line, and training never goes through transformers' or diffusers' peft gates."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from studio.environment import version_problems

ROOT = Path(__file__).resolve().parents[1]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _weights(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_studio_package_is_in_the_wheel_list():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "studio").rglob("__init__.py")}
    assert found - listed == set(), "add these packages to [tool.setuptools] packages in pyproject.toml"
    assert "studio_assets" in listed


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """The wheel built from this checkout, installed (no deps) into a private target folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp / "dist",
            ROOT,
        ],
        check=True,
    )
    (wheel,) = (tmp / "dist").glob("*.whl")
    target = tmp / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", target, wheel],
        check=True,
    )
    return target


def _run_installed(target: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` with the installed wheel first on the path, from outside the checkout."""
    env = {"PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


def test_the_wheel_ships_the_trained_default_model(installed_wheel, tmp_path):
    done = _run_installed(
        installed_wheel,
        "import studio; from studio.models.default import default_model_dir;"
        "print(studio.__file__); print(default_model_dir())",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    module_file, folder = (Path(line) for line in done.stdout.split())
    assert module_file.is_relative_to(installed_wheel)  # the wheel's code, not this checkout's
    assert folder.is_relative_to(installed_wheel)
    assert _weights(folder) == _weights(ROOT / "assets" / "default-model")


def test_a_missing_default_model_is_one_line_not_random_weights(installed_wheel, tmp_path):
    broken = tmp_path / "site"
    subprocess.run(["cp", "-r", installed_wheel, broken], check=True)
    subprocess.run(["rm", "-r", broken / "studio_assets" / "default-model"], check=True)
    done = _run_installed(
        broken,
        "import sys; from studio.cli import main; sys.exit(main(['generate', 'a cat', '--out', 'x.png']))",
        tmp_path,
    )
    assert done.returncode == 2
    assert "embedded default model is missing" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def _fake_distribution(site: Path, name: str, version: str) -> None:
    """An installed-package record of ``name==version`` that shadows the real one on the path."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def _studio_with(tmp_path: Path, name: str, version: str, *args: str) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    _fake_distribution(site, name, version)
    env = {"PYTHONPATH": f"{site}:{ROOT}", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "studio", *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )


def test_a_package_below_its_range_is_one_line_exit_2(tmp_path):
    done = _studio_with(tmp_path, "transformers", "4.20.0", "inspect", "--help")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "transformers 4.20.0 is installed" in line and "transformers>=" in line
    assert "tools/constraints.txt" in line  # the fix


def test_the_app_script_checks_versions_first(tmp_path):
    site = tmp_path / "site"
    _fake_distribution(site, "gradio", "5.0.0")
    env = {"PYTHONPATH": f"{site}:{ROOT}", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "gradio 5.0.0 is installed" in done.stderr and "Traceback" not in done.stderr


def test_newer_than_the_lock_is_not_refused(tmp_path):
    done = _studio_with(tmp_path, "transformers", "99.0.0", "inspect", "--help")
    assert done.returncode == 0, done.stderr


def test_this_environment_fits_the_declared_ranges():
    assert version_problems() == []


def test_training_does_not_go_through_the_libraries_peft_gates(tmp_path, monkeypatch):
    """transformers 5.24 refuses peft < 0.22 in ``add_adapter``; a future diffusers may do the same.

    With both gates shut, a run that adapts the UNet and the text encoder still trains and exports.
    """
    import diffusers
    import transformers

    from studio import TrainConfig, train
    from studio.samples import make_demo_dataset

    def gate(*args, **kwargs):
        raise ValueError("The version of PEFT you are using is not compatible, please use a version >= 99")

    monkeypatch.setattr(transformers.PreTrainedModel, "add_adapter", gate)
    monkeypatch.setattr(diffusers.loaders.peft.PeftAdapterMixin, "add_adapter", gate)
    config = TrainConfig(
        data=str(make_demo_dataset(tmp_path / "data", count=2)),
        output=str(tmp_path / "style.safetensors"),
        resolution=64,
        steps=2,
        rank=4,
        train_text_encoder=True,
    )
    result = train(config)
    assert result.steps == 2 and (tmp_path / "style.safetensors").is_file()
    te_layers = [n for n, p in result.base.components["text_encoder"].named_parameters() if "lora_" in n]
    assert te_layers  # the text encoder was adapted, not silently skipped


def test_studio_train_stays_the_function_after_the_training_package_is_imported():
    """``studio.train(config)`` is the public API; a subpackage named ``train`` would replace it."""
    import importlib

    import studio

    importlib.import_module("studio.training.recipe")
    assert callable(studio.train) and studio.train.__module__ == "studio"

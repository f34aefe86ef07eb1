"""The option table: one declaration per option drives the CLI, validation and the renamed names."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib

import pytest

from studio.cli import build_parser, main
from studio.cli.train import config_from_args
from studio.config import LAYER_SETS, LR_SCHEDULERS, TrainConfig
from studio.errors import StudioError
from studio.options import Show, specs
from studio.presets import PRESETS, get_preset

SPECS = specs(TrainConfig)
SAMPLE = {int: 3, float: 0.5, str: "x", list: ["a prompt"]}


def _sample(spec):
    """A legal value other than the default."""
    if spec.option.choices:
        return next(c for c in spec.option.choices if c != spec.default)
    if spec.kind is bool:
        return not spec.default
    if spec.kind is int:
        return max(3, int(spec.option.minimum or 0))
    return SAMPLE[spec.kind]


def _parse(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_every_field_is_declared_as_an_option_with_help():
    assert [s.name for s in SPECS] == [f.name for f in dataclasses.fields(TrainConfig)]
    for spec in SPECS:
        assert spec.option.help, spec.name
        if Show.ADVANCED in spec.option.show:
            assert spec.option.label, spec.name
        assert spec.problem(spec.default) is None, spec.name  # every default is legal
    assert TrainConfig().sample_prompts is not TrainConfig().sample_prompts  # list defaults are per instance


@pytest.mark.parametrize("spec", [s for s in SPECS if Show.CLI in s.option.show], ids=lambda s: s.name)
def test_the_cli_flag_of_every_option_sets_its_field(spec):
    value = _sample(spec)
    if spec.option.positional:
        argv = [value]
    elif spec.kind is bool:
        argv = [spec.flag]
    elif spec.kind is list:
        argv = [spec.flag, value[0]]
    else:
        argv = [spec.flag, str(value)]
    needs = {"lokr_factor": ["--network", "lokr"]}.get(spec.name, [])  # legal only beside that
    assert getattr(_parse(*argv, *needs), spec.name) == value


def test_help_lists_every_cli_option_with_its_help_and_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for spec in SPECS:
        shown = Show.CLI in spec.option.show
        assert (spec.flag in text) == shown or spec.option.positional, spec.name
        if shown:
            assert " ".join(spec.option.help.split())[:30] in text, spec.name
    assert "--rank R LoRA rank (default: 16)" in text
    assert "--weight-decay" not in text  # API-only options have no flag


def test_flags_override_a_config_file_and_leave_its_other_values(tmp_path):
    TrainConfig(data="d", rank=8, lr=3e-4, random_crop=True).save(tmp_path / "c.toml")
    config = _parse("--config", str(tmp_path / "c.toml"), "--rank", "4")
    assert (config.rank, config.lr, config.random_crop, config.data) == (4, 3e-4, True, "d")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('rnak = 4\ndata = "d"', "unknown option 'rnak' (did you mean 'rank'?)"),
        ('layers = "crossattn"', "layers = 'crossattn' is not one of: cross-attn, attn, full"),
        ('optimizer = "sgd"', "optimizer = 'sgd' is not one of: adamw, adamw8bit"),
        ('lr_scheduler = "cosin"', "lr_scheduler = 'cosin' is not one of: constant, constant_with_warmup"),
        ('format = "ckpt"', "format = 'ckpt' is not one of: kohya, diffusers, both"),
        ('mixed_precision = "fp8"', "mixed_precision = 'fp8' is not one of: auto, no, fp16, bf16"),
        ('rank = "16"', "rank = '16' must be a whole number"),
        ("caption_dropout = 1.5", "caption_dropout = 1.5 must be <= 1"),
        ("lr = 0", "lr = 0 must be > 0"),
    ],
)
def test_a_bad_config_file_exits_2_with_one_line_naming_key_and_allowed_values(tmp_path, capsys, text, named):
    bad = tmp_path / "bad.toml"
    bad.write_text(text + "\n")
    assert main(["train", "--config", str(bad), "--output", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"studio: error: {bad}: ") and named in err, err


def test_a_bad_json_config_names_the_file_too(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"layers": "everything"}')
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}: " in err and "cross-attn, attn, full" in err


def test_validate_names_every_problem_at_once():
    with pytest.raises(StudioError) as info:
        TrainConfig(rank=0, batch_size=0, keep_tokens=-1, train_text_encoder="yes").validate()
    message = str(info.value)
    assert "\n" not in message
    for phrase in (
        "rank = 0 must be >= 1",
        "batch_size = 0",
        "keep_tokens = -1",
        "train_text_encoder = 'yes'",
    ):
        assert phrase in message
    TrainConfig(
        lr=1, alpha=4, noise_offset=float("nan")
    ).validate()  # ints are numbers; NaN is the run's to catch


def test_the_old_preset_name_still_works_with_one_notice(tmp_path, capsys):
    with pytest.warns(FutureWarning, match="'preset' is now 'layers'"):
        assert TrainConfig(preset="full").layers == "full"
    with pytest.warns(FutureWarning):
        assert dataclasses.replace(TrainConfig(), preset="attn").layers == "attn"
    with pytest.warns(FutureWarning, match="old.toml"):
        (tmp_path / "old.toml").write_text('preset = "attn"\n')
        assert TrainConfig.load(tmp_path / "old.toml").layers == "attn"

    saved = tmp_path / "saved.toml"
    argv = [
        "train",
        "d",
        "--preset",
        "full",
        "--config",
        str(tmp_path / "old.toml"),
        "--save-config",
        str(saved),
    ]
    assert main(argv) == 0
    assert tomllib.loads(saved.read_text())["layers"] == "full" and "preset" not in saved.read_text()
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "studio: warning: --preset is now --layers; the old name goes in the next release",
        f"studio: warning: {tmp_path / 'old.toml'}: 'preset' is now 'layers'; the old name goes in the next release",
    ]


def test_an_old_preset_value_in_a_config_exits_2_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('preset = "crossattn"\n')
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "layers = 'crossattn' is not one of: cross-attn, attn, full" in err


def test_choice_lists_match_the_code_that_uses_them():
    from diffusers.optimization import SchedulerType

    from studio.lora.targets import PRESETS as TARGET_SETS

    assert LAYER_SETS == TARGET_SETS
    assert set(LR_SCHEDULERS) <= {s.value for s in SchedulerType}


def test_the_config_module_does_not_import_torch():
    """So ``LAYER_SETS`` is a copy of the targets' names, checked above, not an import."""
    code = "import sys, studio.config; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_valid_partial_configs(name):
    preset = get_preset(name)
    assert set(preset.values) <= {s.name for s in SPECS}
    preset.apply().validate()


def test_train_starts_from_a_named_preset_and_flags_override_it(tmp_path, capsys):
    name = "Quick demo (embedded model)"
    saved = tmp_path / "quick.toml"
    assert main(["train", "d", "--from-preset", name, "--steps", "7", "--save-config", str(saved)]) == 0
    written = tomllib.loads(saved.read_text())
    preset = get_preset(name).values
    assert written["steps"] == 7 != preset["steps"]
    assert {k: written[k] for k in preset if k != "steps"} == {
        k: v for k, v in preset.items() if k != "steps"
    }

    capsys.readouterr()
    assert main(["train", "d", "--from-preset", "Style (SD 2)", "--save-config", str(saved)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown preset 'Style (SD 2)'" in err and name in err
    with pytest.raises(SystemExit):  # argparse: not allowed with --config
        main(["train", "d", "--from-preset", name, "--config", str(saved)])
    assert "not allowed with argument" in capsys.readouterr().err

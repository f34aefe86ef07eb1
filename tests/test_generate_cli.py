"""``studio generate / grid / merge / recipe`` against a tiny base saved as a diffusers folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from test_adapters_support import lora_factors, make_kohya, tiny, write_kohya

from studio.cli import main

FAST = ["--steps", "2", "--width", "32", "--height", "32"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    pipe = tiny("sd1")
    pipe.save_pretrained(tmp / "base")
    ink = make_kohya(
        tmp / "ink.safetensors", pipe, "sd1", 1, metadata={"modelspec.trigger_phrase": "inkstyle"}
    )
    factors = lora_factors(pipe, "sd1", 2, rank=2)
    factors["lora_unet_down_blocks_9_attentions_0_proj_in"] = (torch.randn(2, 64), torch.randn(64, 2), 1.0)
    neon = write_kohya(tmp / "neon.safetensors", factors)  # one module the base does not have
    return tmp, str(tmp / "base"), ink, neon


def test_generate_writes_png_with_recipe_and_recipe_show(env, capsys):
    tmp, base, ink, neon = env
    out = tmp / "out.png"
    args = ["generate", "a red circle", "--base", base, "--lora", f"{ink}:0.8", "--lora", f"{neon}:-0.3"]
    args += ["--te-weight", "neon=0.5", "--seed", "3", "--scheduler", "ddim", "--negative", "blurry", *FAST]
    assert main([*args, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert (
        "studio: warning:" in captured.err and "lora_unet_down_blocks_9_attentions_0_proj_in" in captured.err
    )
    assert "trigger: inkstyle" in captured.out and f"wrote {out}" in captured.out
    with Image.open(out) as image:
        parameters = image.text["parameters"]
    assert parameters.startswith(
        "a red circle <lora:ink:0.8> <lora:neon:-0.15:-0.3>\nNegative prompt: blurry\n"
    )
    assert "Steps: 2, Sampler: DDIM, CFG scale: 7, Seed: 3, Size: 32x32, Model: base" in parameters

    assert main(["recipe", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "adapter neon: weight -0.3, unet 1, text encoder 0.5" in shown and "[ok]" in shown

    # The recipe alone makes the same image again.
    again = tmp / "again.png"
    assert main(["generate", "--recipe", str(out), "--out", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out)))


def test_generate_batch_and_user_errors(env, capsys):
    tmp, base, ink, _ = env
    out = tmp / "batch.png"
    assert (
        main(
            [
                "generate",
                "x",
                "--base",
                base,
                "--lora",
                str(ink),
                "--batch",
                "2",
                "--seed",
                "5",
                *FAST,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (tmp / "batch-0.png").is_file() and (tmp / "batch-1.png").is_file()
    capsys.readouterr()
    assert (
        main(["generate", "x", "--base", base, "--lora", str(tmp / "nope.safetensors"), "--out", str(out)])
        == 2
    )
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and err.startswith("studio: error: ")
        and "nope.safetensors: file not found" in err
    )
    assert (
        main(
            ["generate", "x", "--base", base, "--lora", str(ink), "--te-weight", "other=1", "--out", str(out)]
        )
        == 2
    )
    assert "no --lora adapter named other" in capsys.readouterr().err


def test_merge_exact_and_svd(env, capsys):
    tmp, base, ink, neon = env
    exact = tmp / "blend.safetensors"
    assert main(["merge", f"{ink}:0.7", f"{neon}:0.3", "--out", str(exact), "--base", base]) == 0
    assert "exact" in capsys.readouterr().out
    with safe_open(str(exact), "pt") as f:
        assert (
            f.metadata()["studio.bake_method"] == "exact" and f.metadata()["ss_network_dim"] == "6"
        )  # 4 + 2 on every layer
    svd = tmp / "blend_r2.safetensors"
    assert (
        main(
            [
                "merge",
                f"{ink}:0.7",
                f"{neon}:-0.3",
                "--rank",
                "2",
                "--precision",
                "fp16",
                "--out",
                str(svd),
                "--base",
                base,
            ]
        )
        == 0
    )
    assert "relative error" in capsys.readouterr().out
    with safe_open(str(svd), "pt") as f:
        up = next(k for k in list(f.keys()) if k.endswith("lora_up.weight"))
        assert f.get_tensor(up).dtype is torch.float16


def test_grid_weight_by_seed(env, capsys):
    tmp, base, ink, _ = env
    out = tmp / "grid.png"
    args = [
        "grid",
        "a red circle",
        "--base",
        base,
        "--lora",
        str(ink),
        "--weights",
        "-1,0,1",
        "--seeds",
        "1,2",
    ]
    assert main([*args, "--steps", "1", "--width", "32", "--height", "32", "--out", str(out)]) == 0
    assert "rows: ink weight -1, 0, 1" in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.height >= 3 * 32 and image.width >= 2 * 32

"""Comparison grids: layout, labels, and the session's blend put back afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_adapters_support import make_kohya, tiny, weights_of

from studio.errors import StudioError
from studio.generate import GenerationSession
from studio.grid import adapter_prompt_grid, labelled_grid, weight_seed_grid
from studio.mixer import AdapterWeights
from studio.recipes import GenerationSettings

FAST = GenerationSettings(prompt="a red circle", seed=1, steps=1, width=32, height=32)


def test_labelled_grid_layout():
    red, blue = Image.new("RGB", (40, 30), "red"), Image.new("RGB", (40, 30), "blue")
    grid = labelled_grid([[red, blue], [blue, red]], ["w -1", "w 1"], ["seed 1", "seed 2"], title="prompt")
    array = np.asarray(grid)
    assert grid.width > 80 and grid.height > 60
    label_column = array[:, : grid.width - 80]
    assert (label_column < 128).any()  # row labels were drawn
    assert (array[-30:, -40:] == [255, 0, 0]).all(axis=-1).mean() > 0.9  # last cell is red
    with pytest.raises(ValueError):
        labelled_grid([[red]], ["a", "b"], ["c"])


def test_weight_by_seed_and_adapter_by_prompt_grids(tmp_path):
    pipe = tiny("sd1")
    session = GenerationSession(pipe, base="tiny")
    session.add_adapter(make_kohya(tmp_path / "ink.safetensors", pipe, "sd1", 1), AdapterWeights(0.8))
    session.add_adapter(make_kohya(tmp_path / "neon.safetensors", pipe, "sd1", 2), AdapterWeights(-0.3))
    patched = weights_of(pipe)

    grid = weight_seed_grid(session, "ink", [-1.0, 0.0, 1.0], [1, 2], FAST)
    assert grid.height >= 3 * 32 and grid.width >= 2 * 32
    grid = adapter_prompt_grid(session, ["a red circle", "a blue square"], FAST)
    assert grid.height >= 3 * 32  # base, ink alone, neon alone

    assert [i.weights for i in session.items] == [AdapterWeights(0.8), AdapterWeights(-0.3)]
    assert all(torch.equal(t, patched[n]) for n, t in weights_of(pipe).items())
    with pytest.raises(StudioError, match="no adapter named 'nope'"):
        weight_seed_grid(session, "nope", [1.0], [1], FAST)


def test_checkpoint_by_weight_grid_from_a_training_run(tmp_path, capsys):
    from studio.cli import main
    from studio.config import TrainConfig
    from studio.samples import make_demo_dataset
    from studio.training.checkpoint import checkpoint_adapters
    from studio.training.recipe import train

    out = tmp_path / "ink.safetensors"
    config = TrainConfig(
        data=str(make_demo_dataset(tmp_path / "data", count=4)),
        output=str(out),
        resolution=64,
        steps=4,
        checkpoint_every=2,
        rank=2,
        lr=1e-2,
    )
    run_dir = train(config).run_dir
    steps = checkpoint_adapters(run_dir)
    assert [step for step, _ in steps] == [2] and steps[0][1].name == "ink-step000002.safetensors"

    grid_png = tmp_path / "grid.png"
    argv = ["grid", "a circle", "--run", str(run_dir), "--weights", "0,1", "--seed", "3", "--steps", "2"]
    argv += ["--width", "64", "--height", "64"]
    assert main([*argv, "--out", str(grid_png)]) == 0
    assert "rows: checkpoints" in capsys.readouterr().out
    cells = np.asarray(Image.open(grid_png).convert("RGB"))
    assert cells.shape[0] >= 2 * 64 and cells.shape[1] >= 2 * 64  # step 2 and final, two weights
    at_zero_step2, at_one_step2 = cells[-128:-64, -128:-64], cells[-128:-64, -64:]
    at_zero_final, at_one_final = cells[-64:, -128:-64], cells[-64:, -64:]
    assert np.array_equal(at_zero_step2, at_zero_final)  # weight 0 is the bare base in every row
    assert not np.array_equal(at_one_step2, at_one_final)  # the checkpoints differ at weight 1
    assert main(["grid", "a circle", "--run", str(tmp_path), "--weights", "1", "--out", str(grid_png)]) == 2

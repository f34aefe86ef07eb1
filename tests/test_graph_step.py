"""Training steps replayed as CUDA graphs (studio/training/graph_step.py) keep the plain step's
losses and adapter.

On the CPU the graph path's eager side runs (the batch copied into named inputs, SDXL's
conditioning built ahead, gradients zeroed in place): it must equal the plain step bit for
bit. On a GPU the captured graphs themselves are compared (marked ``gpu``).
"""

from __future__ import annotations

import pytest
import torch

from studio.config import TrainConfig
from studio.families import get_family
from studio.models.loader import BaseModel
from studio.samples import make_demo_dataset
from studio.training.graph_step import StepGraphs, graph_step_blocker
from studio.training.recipe import default_hooks, run_loop, train
from studio.training.run import setup_run

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data"), count=6)


def _config(dataset, out, **overrides) -> TrainConfig:
    values = dict(
        data=str(dataset), output=str(out / "style.safetensors"), resolution=64, batch_size=2, rank=4,
        lr=1e-3, steps=5, seed=3, overlap_steps=False, max_grad_norm=1.0,
    )  # fmt: skip
    return TrainConfig(**{**values, **overrides})


def _train(
    config: TrainConfig, family: str, graphs: bool
) -> tuple[list[float], list[torch.Tensor], list[torch.Tensor]]:
    """Losses, parameters before and parameters after."""
    base = BaseModel(get_family(family).build_tiny(seed=1), get_family(family), "epsilon", "tiny")
    run = setup_run(config, base=base)
    assert run.step_graphs is None  # on a CPU the plain step is the default
    if graphs:
        run.step_graphs = StepGraphs(run.device)
    before = [p.detach().clone() for p in run.params]
    hooks = default_hooks(run, None)
    run_loop(run, hooks)
    for hook in hooks:
        hook.close()
    return run.state.losses, before, [p.detach().clone() for p in run.params]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize(
    "switches",
    [{}, {"gradient_accumulation": 2}, {"train_text_encoder": False}],
    ids=["te", "accumulation", "cached-text"],
)
def test_the_graph_steps_eager_side_is_the_plain_step(dataset, tmp_path, family, switches):
    config = _config(dataset, tmp_path / "plain", **switches)
    plain_losses, _, plain_params = _train(config, family, graphs=False)
    config = _config(dataset, tmp_path / "graphs", **switches)
    losses, before, params = _train(config, family, graphs=True)
    assert len(losses) == 5 and losses == plain_losses
    for a, b in zip(params, plain_params, strict=True):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(params, before))  # it trained


def test_what_blocks_graphs_is_named(dataset, tmp_path):
    run = setup_run(_config(dataset, tmp_path))
    assert graph_step_blocker(run) == "not on a CUDA device"


@pytest.mark.gpu
@gpu
def test_a_run_that_cannot_be_captured_trains_eagerly_and_says_why(dataset, tmp_path, capsys):
    result = train(_config(dataset, tmp_path, mixed_precision="bf16", steps=3, gradient_checkpointing=True))
    assert result.graph_replays == 0 and len(result.losses) == 3
    assert "steps run eagerly: gradient checkpointing" in capsys.readouterr().out


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(
    "switches",
    [
        {},
        {"gradient_accumulation": 2},
        {"min_snr_gamma": 5.0, "train_text_encoder": False},
    ],
    ids=["te", "accumulation", "min-snr-cached-text"],
)
def test_graph_replayed_steps_keep_the_losses_on_the_gpu(dataset, tmp_path, switches):
    """The embedded model in bf16 on the GPU: eager kernels one by one against their replay
    (the text encoder trains in the graph unless cached)."""
    eager = train(
        _config(dataset, tmp_path / "eager", mixed_precision="bf16", graph_step=False, steps=8, **switches)
    )
    graphs = train(_config(dataset, tmp_path / "graphs", mixed_precision="bf16", steps=8, **switches))
    assert eager.graph_replays == 0
    micro_steps = 8 * switches.get("gradient_accumulation", 1)
    assert graphs.graph_replays == micro_steps - 2  # all but the warm-up steps replayed
    torch.testing.assert_close(torch.tensor(graphs.losses), torch.tensor(eager.losses), rtol=1e-2, atol=1e-3)


@pytest.mark.gpu
@gpu
def test_compiled_blocks_inside_replayed_steps_keep_the_losses_on_the_gpu(dataset, tmp_path):
    """Inductor's kernels for the repeated blocks, captured in the step's graph, against plain eager."""
    eager = train(_config(dataset, tmp_path / "eager", mixed_precision="bf16", graph_step=False, steps=8))
    fast = train(_config(dataset, tmp_path / "fast", mixed_precision="bf16", steps=8, compile_blocks=True))
    assert fast.graph_replays == 8 - 2
    torch.testing.assert_close(torch.tensor(fast.losses), torch.tensor(eager.losses), rtol=3e-2, atol=2e-3)

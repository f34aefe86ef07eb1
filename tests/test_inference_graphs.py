"""Generation replayed as CUDA graphs: the eager path's images, slider changes seen, weights
that move captured again, and the plain path wherever graphs cannot run.

The GPU tests compare against the same session's eager path (``PLAIN``) on a CUDA device;
on a CPU the default path must be the plain path, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_adapters_support import make_kohya, tiny
from torch import nn

from studio.cli import build_parser
from studio.generate import DEFAULT, PLAIN, FastPath, GenerationSession
from studio.inference_graphs import MAX_GRAPHS, graph_blocker, replay_forward
from studio.mixer import AdapterWeights
from studio.recipes import GenerationSettings

FAST = GenerationSettings(prompt="a red circle", seed=7, steps=3, guidance=5.5, width=32, height=32)
gpu = pytest.mark.gpu


def session(pipe, family: str, files, fast: FastPath) -> GenerationSession:
    session = GenerationSession(pipe, base=f"tiny-{family}", fast=fast)
    for path, weight in zip(files, (0.8, -0.3)):
        session.add_adapter(path, AdapterWeights(weight))
    return session


def images(session: GenerationSession, settings: GenerationSettings = FAST) -> np.ndarray:
    return np.stack([np.asarray(r.image, dtype=np.int16) for r in session.generate(settings)])


def adapters(tmp_path, family: str) -> list:
    pipe = tiny(family)
    return [make_kohya(tmp_path / f"{n}.safetensors", pipe, family, s) for n, s in (("ink", 1), ("neon", 2))]


def test_the_cli_and_app_choose_graph_replay_unless_told_otherwise():
    assert FastPath.choose(None) == DEFAULT and DEFAULT.graphs and not PLAIN.graphs
    assert FastPath.choose(None, graphs=False) == PLAIN
    assert FastPath.choose("reduce-overhead") == FastPath.parse(
        "reduce-overhead"
    )  # compiled: no eager graphs
    parse = build_parser().parse_args
    args = ["generate", "x", "--out", "x.png"]
    assert parse(args).graphs and not parse([*args, "--no-graphs"]).graphs
    assert not parse(["app", "--no-graphs"]).graphs


def test_on_a_cpu_the_default_path_is_the_plain_one_bit_for_bit(tmp_path):
    files = adapters(tmp_path, "sd1")
    default = session(tiny("sd1"), "sd1", files, DEFAULT)
    assert default.graphs == [] and "forward" not in vars(default.denoiser)
    assert graph_blocker(default.denoiser, True) == "on cpu, not a CUDA device"
    assert np.array_equal(images(default), images(session(tiny("sd1"), "sd1", files, PLAIN)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, scale: torch.Tensor, extra: dict | None = None) -> tuple:
        h = torch.nn.functional.silu(self.conv(x)).mean((2, 3)) * scale
        if extra is not None:
            h = h + extra["shift"]
        return (self.out(h),)


@gpu
def test_a_graphed_forward_replays_the_eager_result_and_reads_weights_in_place():
    net = Net().cuda()
    graphed = replay_forward(net)
    x, scale = torch.randn(2, 4, 16, 16, device="cuda"), torch.tensor(1.5, device="cuda")
    with torch.no_grad():
        expected = graphed.forward(x, scale)[0]
        assert torch.equal(net(x, scale)[0], expected) and graphed.captures == 1
        y = torch.randn_like(x)
        assert torch.equal(net(y, scale)[0], graphed.forward(y, scale)[0]) and graphed.replays == 2
        net.out.weight.mul_(-2.0)  # what the blend engine does to a weight
        assert torch.equal(net(y, scale)[0], graphed.forward(y, scale)[0]) and graphed.captures == 1
        # a new shape or a dict argument is a new signature, captured once
        shift = {"shift": torch.ones(2, 8, device="cuda")}
        for _ in range(2):
            assert torch.equal(net(x[:1], scale)[0], graphed.forward(x[:1], scale)[0])
            assert torch.equal(net(x, scale, shift)[0], graphed.forward(x, scale, shift)[0])
        assert graphed.captures == 3
        net.out.weight.data = net.out.weight.data.clone()  # moved: captured again
        assert torch.equal(net(x, scale)[0], graphed.forward(x, scale)[0]) and graphed.captures == 4
        net.out.weight.data = net.out.weight.data.clone()  # moves again: not worth capturing
        assert torch.equal(net(x, scale)[0], graphed.forward(x, scale)[0]) and graphed.captures == 4
    out = net(x, scale)[0]  # with autograd on (a training step): eager, and differentiable
    assert out.requires_grad and graphed.captures == 4
    del net.forward
    assert net.forward.__self__ is net


@gpu
def test_past_max_graphs_new_shapes_run_eager():
    net = Net().cuda()
    graphed = replay_forward(net)
    scale = torch.tensor(1.0, device="cuda")
    with torch.no_grad():
        for size in range(4, 4 + MAX_GRAPHS + 2):
            x = torch.randn(1, 4, size, size, device="cuda")
            assert torch.equal(net(x, scale)[0], graphed.forward(x, scale)[0])
    assert graphed.captures == MAX_GRAPHS


@gpu
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_replayed_images_match_eager_and_follow_the_sliders(tmp_path, family):
    files = adapters(tmp_path, family)
    fast = session(tiny(family).to("cuda"), family, files, DEFAULT)
    eager = session(tiny(family).to("cuda"), family, files, PLAIN)
    assert [g.module for g in fast.graphs] == [fast.denoiser, fast.pipeline.vae.decoder]
    before = images(eager)
    assert np.abs(images(fast) - before).max() <= 1
    assert [g.captures for g in fast.graphs] == [1, 1]  # CFG: one UNet batch shape; one decode
    assert fast.graphs[0].replays == FAST.steps
    for s in (eager, fast):
        s.set_weights("ink", AdapterWeights(-1.0))
    moved = images(eager)
    assert np.abs(moved - before).mean() > 2  # the slider visibly moves the image...
    assert np.abs(images(fast) - moved).max() <= 1  # ...and the replayed UNet reads the patch
    assert [g.captures for g in fast.graphs] == [1, 1]
    fast.close()
    assert fast.graphs == [] and "forward" not in vars(fast.denoiser)
    assert "forward" not in vars(fast.pipeline.vae.decoder)

"""Training steps replayed as CUDA graphs: the forward, loss and backward captured once per
batch shape, with no compiler.

Why: at small batches a LoRA step on SD 1.5 is bound by the CPU launching a few thousand
small kernels, not by the GPU (BENCHMARKS.md: 182 ms a step at batch 4, 186 ms at batch 16).
A captured graph launches them all at once. It runs the eager step's own kernels, so the
losses are the eager step's (tests/test_graph_step.py compares them on a GPU), and capturing
costs one step where inductor's ``--cuda-graphs`` compiles for minutes.

A graph replays fixed addresses, so each batch is copied into the tensors it was captured
with, the gradients stay allocated and are zeroed in place (the captured backward adds into
them), and the captured loss is copied out before the next replay overwrites it. The optimizer
step stays eager: it is a few fused kernels, any optimizer works, and its state, checkpoints
and resume are the plain path's. Graphs of several shapes (buckets) share one memory pool.
Gradient checkpointing (its recomputation) and the flow transformers are not captured.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import torch

from studio.errors import StudioError
from studio.training.run import TrainRun
from studio.training.step import (
    Batch,
    batch_text,
    denoiser_input,
    finished_loss,
    forward_backward,
    optimizer_step,
)

WARMUP = 2  # eager steps of a shape before its capture (cuDNN and cuBLAS pick their kernels)


def graph_step_blocker(run: TrainRun) -> str | None:
    """Why this run's steps cannot be replayed as CUDA graphs, or None when they can."""
    config = run.config
    if run.device.type != "cuda":
        return "not on a CUDA device"
    if config.compile or config.cuda_graphs:
        return "compiled (--cuda-graphs replays inductor's graphs instead)"
    if not run.family.capturable:
        return f"the {run.family.display_name} denoiser is not captured yet"
    if config.gradient_checkpointing:  # (--low-memory turns it on)
        return "gradient checkpointing (its recomputation cannot be captured)"
    return None


@dataclass
class Captured:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]  # what each replay reads: the batch is copied in
    loss: torch.Tensor  # what each replay writes


class StepGraphs:
    """``train_step`` for a run whose steps replay as CUDA graphs (one per batch shape)."""

    def __init__(self, device: torch.device, warmup: int = WARMUP) -> None:
        self.warmup = warmup
        self.cuda = device.type == "cuda"  # the eager path also runs on a CPU (tests)
        self.graphs: dict[tuple, Captured] = {}
        self.seen: Counter[tuple] = Counter()
        self.replays = 0
        self.pool = torch.cuda.graph_pool_handle() if self.cuda else None
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    def __call__(self, run: TrainRun, batch: Batch) -> torch.Tensor:
        family = run.family
        if run.config.train_text_encoder:  # the encoders run in the graph, on ids made outside it
            tokens, text = family.tokenize_captions(run.components, batch.captions, run.device), (None, None)
        else:
            tokens, text = {}, batch_text(run, batch.captions)
        host = family.host_conditioning(denoiser_input(run, batch, text, batch.latents))
        inputs = _inputs(batch, text, tokens, host)
        shape = tuple((name, t.shape, t.dtype, t.stride()) for name, t in inputs.items())
        with run.accelerator.accumulate(*run.models.values()):
            if shape in self.graphs:
                loss = self._replay(self.graphs[shape], inputs)
            elif self.cuda and self.seen[shape] >= self.warmup:
                loss = self._capture(run, batch, inputs, shape)
            else:
                loss = self._eager(run, batch, inputs)
            optimizer_step(run, set_to_none=False)
        self.seen[shape] += 1
        return finished_loss(run, loss)

    def _eager(self, run: TrainRun, batch: Batch, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The step as the graph would run it; on a side stream, as warm-up before a capture must."""
        if not self.cuda:
            return _forward_backward(run, batch, inputs)
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            loss = _forward_backward(run, batch, inputs)
        torch.cuda.current_stream().wait_stream(self.stream)
        return loss

    def _capture(
        self, run: TrainRun, batch: Batch, inputs: dict[str, torch.Tensor], shape: tuple
    ) -> torch.Tensor:
        static = {name: t.clone() for name, t in inputs.items()}
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                loss = _forward_backward(run, batch, static)
        except Exception as exc:  # something in the step needs the CPU mid-step; not retried eagerly,
            # since a failed capture can leave autograd's state half-recorded
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StudioError(
                f"capturing training step {run.state.step + 1} as a CUDA graph failed: {reason}",
                hint="train with --no-graph-step (each kernel launched eagerly), and please report the switches used",
            ) from exc
        self.graphs[shape] = Captured(graph, static, loss)
        return self._replay(self.graphs[shape], inputs)  # capturing ran nothing: this step runs now

    def _replay(self, captured: Captured, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        for name, tensor in inputs.items():
            captured.inputs[name].copy_(tensor, non_blocking=True)
        captured.graph.replay()
        self.replays += 1
        return captured.loss.clone()


def _inputs(batch: Batch, text: tuple, tokens: dict, host: dict) -> dict[str, torch.Tensor]:
    """Every tensor the step reads, by name (``_forward_backward`` reads them back)."""
    named = {"latents": batch.latents, "noise": batch.noise, "timesteps": batch.timesteps}
    named |= {"hidden": text[0], "pooled": text[1], "masks": batch.masks}
    named |= {f"tokens.{k}": v for k, v in tokens.items()} | {f"host.{k}": v for k, v in host.items()}
    return {name: t for name, t in named.items() if t is not None}


def _forward_backward(run: TrainRun, batch: Batch, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """``forward_backward`` on the tensors of ``inputs`` (the batch's own, or a graph's copies)."""
    batch = replace(
        batch, latents=inputs["latents"], noise=inputs["noise"], timesteps=inputs["timesteps"],
        masks=inputs.get("masks"),
    )  # fmt: skip
    tokens = _group(inputs, "tokens.")
    text = run.encode_tokens(tokens) if tokens else (inputs["hidden"], inputs.get("pooled"))
    return forward_backward(run, batch, text, _group(inputs, "host.") or None)


def _group(inputs: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in inputs.items() if k.startswith(prefix)}


def step_graphs_for(run: TrainRun) -> StepGraphs | None:
    """The run's ``StepGraphs`` when --graph-step is on and nothing blocks it (said once on a GPU)."""
    if not run.config.graph_step:
        return None
    blocker = graph_step_blocker(run)
    if blocker and run.device.type == "cuda":
        run.accelerator.print(f"steps run eagerly: {blocker}")
    return None if blocker else StepGraphs(run.device)

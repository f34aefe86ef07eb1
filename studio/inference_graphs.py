"""A module's forward replayed from CUDA graphs, one per input signature, with no compiler.

Why: SD 1.5's UNet at 512² launches about a thousand small kernels a step, and on a large GPU
Python launching them takes longer than the GPU running them (BENCHMARKS.md, H200: 0.8 s an
image eager, 0.40 s replayed). One graph replay launches them all at once. The graph runs the
eager forward's own kernels, so images match the eager ones (tests/test_inference_graphs.py
compares them on a GPU), and capturing costs two forwards where inductor compiles for a minute.

A graph reads and writes fixed addresses: each call's tensors are copied into the ones the
graph was captured with, and its output is copied out before the next replay overwrites it.
The weights are read where they live, so the blend engine's in-place patches show without a
new capture; weights moved elsewhere (``module.to(dtype)``, as SDXL's pipeline does to its VAE)
are noticed at the next call and captured again; weights that move again (every call) are not
worth capturing and run eager from then on. Graphs of every signature share one pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

MAX_GRAPHS = 8  # signatures captured per module; past that (sizes change each call) calls run eager


@dataclass
class _Captured:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: list[Any]  # the flat call arguments the graph reads (tensors copied into)
    output: Any  # what each replay writes


class GraphedForward:
    """Callable in place of ``module.forward``: the first call of a signature runs it eagerly on a
    side stream and captures it; later calls of that signature replay the graph."""

    def __init__(self, module: nn.Module, pool: Any = None) -> None:
        self.module = module
        self.forward: Callable[..., Any] = module.forward
        self.pool = pool if pool is not None else torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(next(module.parameters()).device)
        self.graphs: dict[tuple, _Captured] = {}
        self.addresses = self._addresses()
        self.moves = 0  # times the weights were found reallocated
        self.replays = 0
        self.captures = 0

    def _addresses(self) -> list[int]:
        return [t.data_ptr() for t in (*self.module.parameters(), *self.module.buffers())]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled() or torch.cuda.is_current_stream_capturing():
            return self.forward(*args, **kwargs)  # a training step, or someone else's capture
        if self._addresses() != self.addresses:  # weights reallocated: every graph reads stale memory
            self.graphs.clear()
            # A fresh pool: capturing into one whose graphs were all freed trips an allocator
            # assertion (torch 2.11, H200).
            self.pool = torch.cuda.graph_pool_handle()
            self.addresses = self._addresses()
            self.moves += 1
        if self.moves > 1:
            return self.forward(*args, **kwargs)
        leaves, spec = pytree.tree_flatten((args, kwargs))
        key = (str(spec), *(_signature(leaf) for leaf in leaves))
        captured = self.graphs.get(key)
        if captured is None:
            if len(self.graphs) >= MAX_GRAPHS:
                return self.forward(*args, **kwargs)
            return self._capture(key, leaves, spec)
        return self._replay(captured, leaves)

    def _capture(self, key: tuple, leaves: list[Any], spec: Any) -> Any:
        static = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        call_args, call_kwargs = pytree.tree_unflatten(static, spec)
        # Warm-up on a side stream, as capture requires (cuDNN and cuBLAS pick their kernels).
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            self.forward(*call_args, **call_kwargs)
        torch.cuda.current_stream().wait_stream(self.stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread (a training job beside the Mix tab) may use the GPU meanwhile
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            output = self.forward(*call_args, **call_kwargs)
        self.graphs[key] = captured = _Captured(graph, static, output)
        self.captures += 1
        return self._replay(captured, leaves)  # capturing ran nothing: this call runs now

    def _replay(self, captured: _Captured, leaves: list[Any]) -> Any:
        for static, leaf in zip(captured.inputs, leaves, strict=True):
            if isinstance(leaf, torch.Tensor):
                static.copy_(leaf, non_blocking=True)
        captured.graph.replay()
        self.replays += 1
        return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, captured.output)


def _signature(leaf: Any) -> Any:
    """What a graph is specific to: a tensor's shape, dtype, device and strides; any other
    argument's value (``return_dict=False``, ``None``)."""
    if isinstance(leaf, torch.Tensor):
        return ("tensor", tuple(leaf.shape), leaf.dtype, leaf.device, leaf.stride())
    try:
        hash(leaf)
    except TypeError:
        return ("object", id(leaf))
    return ("value", type(leaf), leaf)


def graph_blocker(module: nn.Module, capturable: bool) -> str | None:
    """Why ``module`` cannot be replayed as CUDA graphs, or None when it can."""
    if not capturable:
        return "this family's denoiser is not captured yet"
    device = next(module.parameters()).device
    if device.type != "cuda":
        return f"on {device.type}, not a CUDA device"
    return None


def replay_forward(module: nn.Module, pool: Any = None) -> GraphedForward:
    """Set a ``GraphedForward`` on the instance; ``del module.forward`` gives the eager one back."""
    graphed = GraphedForward(module, pool)
    module.forward = graphed
    return graphed

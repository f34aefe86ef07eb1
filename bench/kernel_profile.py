"""GPU kernel time by category over a window of training steps (issue 18 §3: where the MFU goes).

``KernelProfile`` is an ``on_step`` companion: it starts torch.profiler (CUDA activity only)
after step ``start`` and stops after ``start + steps``, then sums each kernel's device time
into categories by its name. The GPU-idle share is the wall time of the window not covered
by any kernel (launch gaps, host work), so the categories and idle add up to the wall time.
Without CUDA it profiles CPU operators instead (nested ones counted twice: a smoke run only).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import torch

# First match wins: cuDNN's convolution kernels have "gemm" in their names too.
CATEGORIES = (
    ("attention", r"flash|fmha|attention|sdpa|softmax"),
    ("convolution", r"conv|fprop|dgrad|wgrad|implicit"),
    ("matmul", r"gemm|cutlass|nvjet|xmma|cublas|matmul|sm\d\d_|aten::(add|b)?mm"),
    ("norm", r"norm|welford|moments"),
    ("optimizer", r"multi_tensor|adam|foreach"),
    ("copy / cast", r"copy|memcpy|memset|cat|to_copy|fill"),
    ("elementwise / reduce", r"elementwise|vectorized|reduce|unrolled|index|silu|gelu|mul|add"),
)


@dataclass
class KernelProfile:
    start: int  # profile from the end of this step...
    steps: int  # ...for this many steps
    seen: int = 0
    profiler: Any = None
    started: float = 0.0
    wall: float = 0.0
    ms: dict[str, float] = field(default_factory=dict)  # per step, by category
    top: list[tuple[str, float]] = field(default_factory=list)  # the 12 largest kernels, ms per step

    def on_step(self, _event: Any = None) -> None:
        self.seen += 1
        if self.seen == self.start:
            _synchronize()
            activity = torch.profiler.ProfilerActivity
            self.profiler = torch.profiler.profile(activities=[activity.CUDA if CUDA else activity.CPU])
            self.profiler.__enter__()
            self.started = time.perf_counter()
        elif self.seen == self.start + self.steps and self.profiler is not None:
            _synchronize()
            self.wall = time.perf_counter() - self.started
            self.profiler.__exit__(None, None, None)
            self._summarise()

    def _summarise(self) -> None:
        per_kernel = kernel_ms(self.profiler)
        self.ms = {k: v / self.steps for k, v in by_category(per_kernel, self.wall * 1000).items()}
        self.top = [(name, ms / self.steps) for name, ms in largest(per_kernel, 12)]

    def summary(self) -> dict[str, Any]:
        step = sum(self.ms.values())
        return {
            "steps": self.steps,
            "ms_per_step": step,
            "by_category_ms": self.ms,
            "by_category_pct": {k: 100 * v / step for k, v in self.ms.items()} if step else {},
            "largest_kernels_ms": self.top,
        }


CUDA = torch.cuda.is_available()


def _synchronize() -> None:
    if CUDA:
        torch.cuda.synchronize()


def kernel_ms(profiler: Any) -> dict[str, float]:
    """Each kernel's device time (ms) in a finished profile; each CPU operator's without CUDA."""
    per_kernel: dict[str, float] = {}
    for event in profiler.events():
        if CUDA and event.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[event.name] = per_kernel.get(event.name, 0.0) + event.device_time / 1000
        elif not CUDA:
            per_kernel[event.name] = per_kernel.get(event.name, 0.0) + event.self_cpu_time_total / 1000
    return per_kernel


def by_category(per_kernel: dict[str, float], wall_ms: float) -> dict[str, float]:
    """Kernel ms summed by category, and "GPU idle": the wall time no kernel covers."""
    totals = dict.fromkeys([name for name, _ in CATEGORIES] + ["other"], 0.0)
    for name, ms in per_kernel.items():
        totals[category(name)] += ms
    totals["GPU idle"] = max(0.0, wall_ms - sum(totals.values()))
    return totals


def largest(per_kernel: dict[str, float], count: int) -> list[tuple[str, float]]:
    return [(name[:90], ms) for name, ms in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:count]]


def category(kernel: str) -> str:
    lowered = kernel.lower()
    return next((name for name, pattern in CATEGORIES if re.search(pattern, lowered)), "other")

"""Apply a blend by patching the base weights in place: W = W_orig + Σ cᵢ ΔWᵢ.

Why patching and not peft's runtime adapters (``set_adapters``): a patched model runs
exactly as fast as the bare base whatever the number of adapters (no LoRA modules in
the forward pass), LyCORIS kinds that diffusers cannot load work the same way, and block
weights reach resnets and samplers. The studio has no unfused path.

Exactness rules (the fuse/unfuse drift reported in diffusers #5604, #4473):

* ΔW is summed in fp32 and added to an fp32 copy of the original, then cast once;
* the original of every touched layer is kept, in its own dtype, and restoring COPIES it
  back, bit for bit; nothing is ever subtracted;
* originals are kept only for layers some adapter touches, and freed when none does.

A slider change rewrites only the layers whose terms (adapter, coefficient) changed.

DoRA is not linear in the weight: its unit update Dᵢ = mᵢ ⊙ (W0 + ΔWᵢ) / ‖W0 + ΔWᵢ‖ − W0
depends on the base. Each Dᵢ is computed against the UNPATCHED original W0 (the copy kept
for restoring), never against a weight that already holds other adapters, and the blend
is W0 + Σ cᵢ·Dᵢ like any other kind: order-independent and linear in each slider; one
adapter at weight 1 is peft's DoRA layer (merged or at run time), and weight w is ComfyUI's
strength rule W0 + w·(W' − W0). Several DoRA adapters on one layer are chained by peft
(each one's rescaling also scales the updates before it) and by ComfyUI (each norm taken
on the weight the earlier patches left), both order-dependent: ``docs/dora.md``.

On a GPU, nothing in a patch waits for the device: originals stay on the weight's device
while they fit a budget (so a re-patch or restore never crosses the bus) and beyond it go
to pinned host memory with asynchronous copies; adapter factors are sent asynchronously
too. A patch is then only queued kernels, and a slider change costs milliseconds.

Unit ΔWs (one adapter, one layer, weight 1) are cached in fp32 on the weight's device
while the cache stays under a budget; beyond that they are recomputed, which costs one
small matmul per layer, from the adapter's factors kept on the device (a file's size). A full-coverage SDXL LoRA is ~12 GB of fp32 ΔW, so an unbounded
cache is not an option. Both budgets default to a quarter of the memory free when the
engine first needs them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from studio.adapters.adapter import Adapter, LayerKey
from studio.adapters.layers import AdapterDelta, delta_on
from studio.mixer.blend import BlendItem, Terms, blend_terms
from studio.mixer.lbw import layers_per_block


@dataclass(frozen=True)
class PatchStats:
    written: int  # layers rewritten by this call (patched or restored)
    restored: int  # of those, layers no adapter touches any more (back to the original)
    unchanged: int  # touched layers whose update did not change


def default_cache_budget(device: torch.device) -> int:
    """A quarter of the memory free now on ``device`` (bytes); 0 when it cannot be measured."""
    try:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return free // 4
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (AttributeError, ValueError, OSError, RuntimeError):
        return 0


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _factors_to(layer: AdapterDelta, device: torch.device) -> AdapterDelta:
    """``layer`` with its tensors on ``device``. Non-blocking: a host-to-GPU copy of these small
    factors is staged and queued, where a blocking one would wait for all queued GPU work."""
    if device.type == "cpu":
        return layer
    moved = {}
    for f in fields(layer):
        value = getattr(layer, f.name)
        if isinstance(value, Tensor):
            moved[f.name] = value.to(device, non_blocking=True)
        elif is_dataclass(value):  # the ΔW recipe a DoraDelta wraps
            moved[f.name] = _factors_to(value, device)
    return replace(layer, **moved)


class BlendEngine:
    """Owns the patched state of one base model's weights."""

    def __init__(
        self,
        components: Mapping[str, Any],
        *,
        cache_bytes: int | None = None,
        originals_bytes: int | None = None,
    ):
        """``cache_bytes`` bounds the unit-ΔW cache and ``originals_bytes`` the originals kept
        on an accelerator (the rest go to host memory); None: a quarter of the free memory."""
        self._components = components
        self._cache_budget = cache_bytes
        self._originals_budget = originals_bytes
        self._originals_on_device = 0
        self._originals: dict[LayerKey, Tensor] = {}
        self._applied: dict[LayerKey, Terms] = {}
        self._cache: dict[tuple[Adapter, LayerKey], Tensor] = {}
        self._factors: dict[tuple[Adapter, LayerKey], AdapterDelta] = {}  # of uncached ΔWs, on the device
        self._cache_used = 0

    @classmethod
    def for_pipeline(cls, pipeline: Any, **kwargs: Any) -> BlendEngine:
        return cls(pipeline.components, **kwargs)

    @property
    def patched_layers(self) -> set[LayerKey]:
        return set(self._applied)

    @property
    def cache_bytes_used(self) -> int:
        return self._cache_used

    @property
    def originals_bytes_on_device(self) -> int:
        """Bytes of originals held on an accelerator (0 on a CPU-only base)."""
        return self._originals_on_device

    def _weight(self, key: LayerKey) -> nn.Parameter:
        component, path = key
        return self._components[component].get_submodule(path).weight

    def original_weight(self, key: LayerKey) -> Tensor:
        """The unpatched weight of a layer: its saved original while patched, else the live weight."""
        original = self._originals.get(key)
        return self._weight(key).detach() if original is None else original

    def _unit_delta(self, adapter: Adapter, key: LayerKey, weight: Tensor, base: Tensor) -> Tensor:
        """ΔW of ``adapter`` at weight 1 on this layer; ``base`` is the unpatched weight on its device."""
        cached = self._cache.get((adapter, key))
        if cached is not None:
            return cached
        layer = self._factors.get((adapter, key))
        if layer is None:
            layer = _factors_to(adapter.layers[key], weight.device)
        delta = delta_on(layer, base, weight.device)
        if self._cache_budget is None:
            self._cache_budget = default_cache_budget(weight.device)
        size = _nbytes(delta)
        if self._cache_used + size <= self._cache_budget:
            self._cache[(adapter, key)] = delta
            self._cache_used += size
        else:  # recomputed at every patch: keep its (small) factors on the device, not re-sent each time
            self._factors[(adapter, key)] = layer
        return delta

    def _forget_adapters_except(self, keep: set[Adapter]) -> None:
        for cache_key in [k for k in self._cache if k[0] not in keep]:
            tensor = self._cache.pop(cache_key)
            self._cache_used -= _nbytes(tensor)
        for factor_key in [k for k in self._factors if k[0] not in keep]:
            del self._factors[factor_key]

    def _save_original(self, weight: Tensor) -> Tensor:
        """A copy of ``weight`` to restore from: on its accelerator while the budget lasts, else in
        host memory (pinned on CUDA, so neither this copy nor the ones back wait for the GPU)."""
        if weight.device.type == "cpu":
            return weight.detach().clone()
        if self._originals_budget is None:
            self._originals_budget = default_cache_budget(weight.device)
        size = _nbytes(weight)
        if self._originals_on_device + size <= self._originals_budget:
            self._originals_on_device += size
            return weight.detach().clone()
        if weight.device.type != "cuda":
            return weight.detach().to("cpu", copy=True)
        host = torch.empty(weight.shape, dtype=weight.dtype, pin_memory=True)
        return host.copy_(weight.detach(), non_blocking=True)

    def _drop_original(self, key: LayerKey) -> None:
        original = self._originals.pop(key)
        if original.device.type != "cpu":
            self._originals_on_device -= _nbytes(original)

    @torch.no_grad()
    def _write(self, key: LayerKey, terms: Terms) -> None:
        weight = self._weight(key)
        original = self._originals.get(key)
        if original is None:
            original = self._originals[key] = self._save_original(weight)
        if not terms:
            weight.copy_(original, non_blocking=True)
            self._drop_original(key)
            return
        base = original.to(weight.device, non_blocking=True)  # also what DoRA's norm is taken on
        (first, first_coefficient), *rest = terms
        delta = self._unit_delta(first, key, weight, base) * first_coefficient
        for adapter, coefficient in rest:
            delta.add_(self._unit_delta(adapter, key, weight, base), alpha=coefficient)
        # fp16/bf16 + fp32 is computed in fp32 (the original upcast exactly); copy_ casts back once.
        weight.copy_(base + delta)

    def set_blend(self, items: Sequence[BlendItem]) -> PatchStats:
        """Make the weights equal base + this blend, rewriting only the layers that change."""
        self._forget_adapters_except({item.adapter for item in items})
        wanted = blend_terms(items, layers_per_block(self._components))
        changed = [
            key for key in wanted.keys() | self._applied.keys() if wanted.get(key) != self._applied.get(key)
        ]
        restored = 0
        for key in changed:
            terms = wanted.get(key, ())
            self._write(key, terms)
            if terms:
                self._applied[key] = terms
            else:
                del self._applied[key]
                restored += 1
        return PatchStats(
            written=len(changed), restored=restored, unchanged=len(self._applied) - len(changed) + restored
        )

    def restore(self) -> int:
        """Copy every touched layer back to its original; returns how many were restored."""
        return self.set_blend(()).restored

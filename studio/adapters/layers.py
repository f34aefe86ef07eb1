"""One adapted layer of a loaded adapter, whatever its kind: a recipe for ΔW.

Every kind (LoRA/LoCon, LoHa, LoKr, full diff) answers the same two questions:
``shape_error(weight_shape)`` (does this fit the base layer?) and ``delta(weight_shape)``
(ΔW at weight 1, in fp32, scale included). The mixer only ever sums ΔWs, so adding a
kind never touches the blending or patching code. Formulas follow LyCORIS
(``lycoris/functional``) and kohya sd-scripts (``networks/lora.py``).

DoRA (``DoraDelta``) wraps any of them and is the one kind whose ΔW depends on the base
weight W0 (a norm of W0 + ΔW), so callers go through ``delta_on(layer, base)``, which hands
W0 to it and to no other kind. How several DoRA adapters add up: ``docs/dora.md``.

The classes are ``*Delta``, not ``*Layer``: peft's ``LoraLayer`` is an ``nn.Module`` that
wraps a base layer, which these plain tensor recipes are not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

Shape = tuple[int, ...]


class AdapterDelta(Protocol):
    kind: str

    @property
    def rank(self) -> int | None: ...

    def shape_error(self, weight_shape: Shape) -> str | None: ...

    def delta(self, weight_shape: Shape, device: torch.device | str | None = None) -> Tensor: ...


def _f32(t: Tensor, device) -> Tensor:
    return t.to(device=device, dtype=torch.float32)


def _flat_error(out_dim: int, in_flat: int, weight_shape: Shape) -> str | None:
    """Compare a ΔW seen as ``[out, in * kh * kw]`` with the base weight."""
    want_out, want_in = weight_shape[0], math.prod(weight_shape[1:])
    if (out_dim, in_flat) != (want_out, want_in):
        return f"gives a [{out_dim}, {in_flat}] update for a {list(weight_shape)} weight"
    return None


def rebuild_tucker(t: Tensor, wa: Tensor, wb: Tensor) -> Tensor:
    """CP/Tucker core back to a full kernel: ``ΔW[p, r, ...] = Σ t[i, j, ...] wa[i, p] wb[j, r]``."""
    return torch.einsum("i j ..., i p, j r -> p r ...", t, wa, wb)


@dataclass(frozen=True)
class LoraDelta:
    """Plain LoRA / LoCon: ``ΔW = scale · up @ down`` (``up @ mid @ down`` with a Tucker mid).

    ``scale`` is alpha/rank (kohya, peft), alpha/√rank (rsLoRA) or 1 when the file has no
    alpha. For a 3x3 conv, ``down`` is ``[r, in, kh, kw]`` and ``up`` ``[out, r, 1, 1]``, so
    ``up.flatten(1) @ down.flatten(1)`` equals sd-scripts'
    ``conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)``.
    """

    down: Tensor
    up: Tensor
    scale: float
    mid: Tensor | None = None
    kind: str = "lora"

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def is_plain(self) -> bool:
        """True when (down, up, scale) alone reproduce ΔW, so factors can be concatenated."""
        return self.mid is None

    def shape_error(self, weight_shape: Shape) -> str | None:
        r = self.down.shape[0]
        if self.up.dim() < 2 or self.up.shape[1] != r or math.prod(self.up.shape[2:]) != 1:
            return f"lora_up {list(self.up.shape)} does not match lora_down {list(self.down.shape)}"
        if self.mid is not None:
            if tuple(self.mid.shape[:2]) != (r, r) or math.prod(self.down.shape[2:]) != 1:
                return f"lora_mid {list(self.mid.shape)} does not match rank {r}"
            if tuple(self.mid.shape[2:]) != tuple(weight_shape[2:]):
                return (
                    f"lora_mid kernel {list(self.mid.shape[2:])} does not fit a {list(weight_shape)} weight"
                )
            return _flat_error(
                self.up.shape[0], self.down.shape[1] * math.prod(self.mid.shape[2:]), weight_shape
            )
        kernel = tuple(weight_shape[2:])
        if math.prod(kernel) > 1 and tuple(self.down.shape[2:]) != kernel:
            return f"lora_down {list(self.down.shape)} does not fit a {list(weight_shape)} conv weight"
        return _flat_error(self.up.shape[0], math.prod(self.down.shape[1:]), weight_shape)

    def delta(self, weight_shape: Shape, device=None) -> Tensor:
        up = _f32(self.up, device).flatten(1)
        down = _f32(self.down, device).flatten(1)
        if self.mid is None:
            return (up @ down).reshape(weight_shape) * self.scale
        full = torch.einsum("m n ..., i m, n j -> i j ...", _f32(self.mid, device), up, down)
        return full.reshape(weight_shape) * self.scale


@dataclass(frozen=True)
class LohaDelta:
    """LyCORIS LoHa: ``ΔW = scale · (w1a @ w1b) ⊙ (w2a @ w2b)``, scale = alpha / rank.

    With CP cores (``hada_t1``/``hada_t2``) each factor is rebuilt as
    ``rebuild_tucker(t, w_a, w_b)``, where ``w_a`` is ``[rank, out]`` and ``w_b`` ``[rank, in]``.
    """

    w1a: Tensor
    w1b: Tensor
    w2a: Tensor
    w2b: Tensor
    scale: float
    t1: Tensor | None = None
    t2: Tensor | None = None
    kind: str = "loha"

    @property
    def rank(self) -> int:
        return self.w1b.shape[0]

    def _factor_shapes(self) -> tuple[Shape, Shape]:
        if self.t1 is None:
            return (self.w1a.shape[0], math.prod(self.w1b.shape[1:])), (
                self.w2a.shape[0],
                math.prod(self.w2b.shape[1:]),
            )
        k = math.prod(self.t1.shape[2:])
        k2 = math.prod(self.t2.shape[2:])
        return (self.w1a.shape[1], self.w1b.shape[1] * k), (self.w2a.shape[1], self.w2b.shape[1] * k2)

    def shape_error(self, weight_shape: Shape) -> str | None:
        try:
            if self.t1 is None:
                ok = self.w1a.shape[1] == self.w1b.shape[0] and self.w2a.shape[1] == self.w2b.shape[0]
            else:
                ok = (
                    tuple(self.t1.shape[:2]) == (self.w1a.shape[0], self.w1b.shape[0])
                    and tuple(self.t2.shape[:2]) == (self.w2a.shape[0], self.w2b.shape[0])
                    and tuple(self.t1.shape[2:]) == tuple(weight_shape[2:])
                )
        except IndexError:
            ok = False
        if not ok:
            return "hada_* tensors have inconsistent ranks"
        first, second = self._factor_shapes()
        if first != second:
            return f"hada_w1 gives {list(first)} but hada_w2 gives {list(second)}"
        return _flat_error(*first, weight_shape)

    def delta(self, weight_shape: Shape, device=None) -> Tensor:
        w1a, w1b, w2a, w2b = (_f32(t, device) for t in (self.w1a, self.w1b, self.w2a, self.w2b))
        if self.t1 is None:
            first = w1a @ w1b.flatten(1)
            second = w2a @ w2b.flatten(1)
        else:
            first = rebuild_tucker(_f32(self.t1, device), w1a, w1b)
            second = rebuild_tucker(_f32(self.t2, device), w2a, w2b)
        return (first * second).reshape(weight_shape) * self.scale


@dataclass(frozen=True)
class LokrDelta:
    """LyCORIS LoKr: ``ΔW = scale · kron(w1, w2)``; each factor is given whole or as ``a @ b``.

    ``w2`` may also be a CP core ``rebuild_tucker(t2, w2_a, w2_b)``. scale = alpha / rank,
    where rank is the inner dim of the factored matrix (w1's first, as in LyCORIS); with
    no factored matrix the scale is 1. ``w2`` is flattened to ``[out2, in2·kh·kw]`` before
    the product, which gives the same layout as LyCORIS' 4-D ``make_kron``.
    """

    w1: Tensor  # [out1, in1]
    w2: Tensor  # [out2, in2, (kh, kw)] or [out2, in2 * kh * kw]
    scale: float
    factored_rank: int | None = None
    kind: str = "lokr"

    @property
    def rank(self) -> int | None:
        return self.factored_rank

    def shape_error(self, weight_shape: Shape) -> str | None:
        if self.w1.dim() != 2:
            return f"lokr_w1 must be a matrix, got {list(self.w1.shape)}"
        out2, in2 = self.w2.shape[0], math.prod(self.w2.shape[1:])
        return _flat_error(self.w1.shape[0] * out2, self.w1.shape[1] * in2, weight_shape)

    def delta(self, weight_shape: Shape, device=None) -> Tensor:
        w2 = _f32(self.w2, device).flatten(1)
        return torch.kron(_f32(self.w1, device), w2).reshape(weight_shape) * self.scale


@dataclass(frozen=True)
class FullDelta:
    """LyCORIS "full" (``.diff``): the file stores ΔW itself."""

    diff: Tensor
    kind: str = "full"

    @property
    def rank(self) -> None:
        return None

    def shape_error(self, weight_shape: Shape) -> str | None:
        return _flat_error(self.diff.shape[0], math.prod(self.diff.shape[1:]), weight_shape)

    def delta(self, weight_shape: Shape, device=None) -> Tensor:
        return _f32(self.diff, device).reshape(weight_shape)


@dataclass(frozen=True)
class DoraDelta:
    """DoRA over any ΔW kind: ``W' = m ⊙ (W0 + ΔW) / ‖W0 + ΔW‖``, so its update is ``W' − W0``.

    The norm is taken per output row (over every other dim) or per input column:
    peft's ``lora_magnitude_vector`` is always per output row (``[out]`` on a Linear,
    ``[1, out, 1, 1]`` on a conv: ``peft/tuners/lora/dora.py``); LyCORIS' ``dora_scale`` is
    ``[out, 1, ...]`` per output row (``wd_on_out``, its newer default) or ``[1, in, ...]``
    per input column (its older default, the DoRA paper's column norm). Which one a
    ``dora_scale`` is follows its shape, as ComfyUI decides it.
    """

    inner: AdapterDelta
    magnitude: Tensor
    peft: bool  # the magnitude came as peft's lora_magnitude_vector (always per output row)

    @property
    def kind(self) -> str:
        return "dora" if self.inner.kind == "lora" else f"dora-{self.inner.kind}"

    @property
    def rank(self) -> int | None:
        return self.inner.rank

    def _axis(self, weight_shape: Shape) -> int | None:
        """0: one magnitude per output row, 1: per input column, None: it fits neither."""
        shape, numel = tuple(self.magnitude.shape), self.magnitude.numel()
        out, inp = weight_shape[0], weight_shape[1]
        leading_one = len(shape) >= 2 and shape[0] == 1
        if self.peft:  # [out] (Linear) or [1, out, 1, ...] (conv)
            return 0 if numel == out and (shape == (out,) or (leading_one and shape[1] == out)) else None
        if numel == out and shape[0] == out:
            return 0
        if numel == inp and leading_one and shape[1] == inp:
            return 1
        return None

    def shape_error(self, weight_shape: Shape) -> str | None:
        if error := self.inner.shape_error(weight_shape):
            return error
        if len(weight_shape) < 2 or self._axis(weight_shape) is None:
            name = "lora_magnitude_vector" if self.peft else "dora_scale"
            shape = list(self.magnitude.shape)
            return f"has a {name} of shape {shape}, which fits no axis of a {list(weight_shape)} weight"
        return None

    def delta(self, weight_shape: Shape, device=None, base: Tensor | None = None) -> Tensor:
        if base is None:
            raise ValueError("a DoRA update depends on the base weight: use delta_on(layer, base)")
        w0 = _f32(base, device).reshape(weight_shape)
        merged = w0 + self.inner.delta(weight_shape, device)
        axis = self._axis(weight_shape)
        norm = torch.linalg.vector_norm(
            merged, dim=tuple(d for d in range(merged.dim()) if d != axis), keepdim=True
        )
        magnitude = _f32(self.magnitude, device).reshape(norm.shape)
        # A row that is zero in W0 + ΔW stays zero (its direction is undefined), rather than NaN.
        return merged * (magnitude / norm.clamp_min(torch.finfo(torch.float32).tiny)) - w0


def delta_on(layer: AdapterDelta, base: Tensor, device: torch.device | str | None = None) -> Tensor:
    """ΔW at weight 1 of ``layer`` on a layer whose unpatched weight is ``base``.

    Only DoRA reads ``base``; every other kind's ΔW is the same on any base.
    """
    if isinstance(layer, DoraDelta):
        return layer.delta(tuple(base.shape), device, base=base)
    return layer.delta(tuple(base.shape), device)

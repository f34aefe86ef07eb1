"""kohya modules of the flow transformers (SD3.5, Flux.1) read back onto diffusers' split layers.

sd-scripts (and the studio's writer, ``studio.formats.flow_lora``) name the original fused
layout: one ``..._img_attn_qkv`` module for diffusers' ``to_q``/``to_k``/``to_v`` (Flux's
single-block ``linear1``: q, k, v and ``proj_mlp``). Its ``ΔW = scale·up@down`` has the
parts' rows stacked in ``FusedPart`` order, so part i's update is exactly
``scale·up[rows i]@down``: the same down and alpha, ``up`` cut to the part's rows. Columns
of that slice which are all zero (the writer's block-diagonal ``up``) are dropped with
their ``down`` rows, which changes nothing in ΔW and gives each part its own rank back.
SD3's last joint block (diffusers' ``AdaLayerNormContinuous``) emits (scale, shift) where
SAI's layout emits (shift, scale); the two halves of ``up`` are swapped back. LyCORIS kinds
(LoHa, LoKr, full) on a fused module have no factor to cut by rows: each part is a
``PartDelta``, its rows of the whole ΔW. DoRA with one magnitude per output row splits
by rows too (``FlowTarget._split_dora``); a per-column magnitude spans the parts and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from studio.adapters.layers import DoraDelta, LoraDelta
from studio.errors import StudioError
from studio.formats.flow_lora import _is_continuous_norm
from studio.formats.flow_names import FusedPart, fused_part
from studio.formats.kohya_names import ModuleRef, adaptable_modules


@dataclass(frozen=True)
class FlowTarget:
    """The base layers one kohya module of a flow family covers, in row order."""

    name: str
    refs: tuple[ModuleRef, ...]  # one per part; a fused module has several
    swap_halves: bool = False  # SD3's AdaLayerNormContinuous: SAI's (shift, scale) order

    @property
    def shape(self) -> tuple[int, int]:
        """The fused weight's shape: the parts' rows stacked."""
        weights = [ref.module.weight for ref in self.refs]
        return sum(w.shape[0] for w in weights), weights[0].shape[1]

    def split(self, layer: Any) -> list[tuple[ModuleRef, Any]]:
        """``(base layer, its delta)`` per part; a LoRA part the file leaves at zero is left out."""
        if not isinstance(layer, LoraDelta) or not layer.is_plain:
            if len(self.refs) == 1 and not self.swap_halves:
                return [(self.refs[0], layer)]
            if isinstance(layer, DoraDelta):
                return self._split_dora(layer)
            return [
                (ref, PartDelta(layer, self.shape, start, stop, self.swap_halves))
                for ref, start, stop in self._rows()
            ]
        up = layer.up.reshape(layer.up.shape[0], -1)
        if self.swap_halves:
            first, second = up.chunk(2, dim=0)
            up = torch.cat([second, first])
        out, row = [], 0
        for ref in self.refs:
            rows = ref.module.weight.shape[0]
            piece = up[row : row + rows]
            row += rows
            used = piece.ne(0).any(dim=0)
            if not used.any():
                continue
            keep = used.nonzero().flatten() if not used.all() else slice(None)
            out.append((ref, LoraDelta(down=layer.down[keep], up=piece[:, keep], scale=layer.scale)))
        return out

    def _rows(self) -> list[tuple[ModuleRef, int, int]]:
        """Each part with its rows ``start:stop`` of the fused weight."""
        out, row = [], 0
        for ref in self.refs:
            rows = ref.module.weight.shape[0]
            out.append((ref, row, row + rows))
            row += rows
        return out

    def _split_dora(self, layer: DoraDelta) -> list[tuple[ModuleRef, Any]]:
        """DoRA with one magnitude per output row splits exactly: a row's norm is over that row
        alone, so part i is DoRA of its rows of ΔW with its rows of the magnitude, on its own W0.
        Every part is kept: a part with ΔW = 0 is still rescaled by its magnitudes."""
        if layer._axis(self.shape) != 0:
            raise StudioError(
                f"DoRA on the fused module {self.name} with a per-input-column dora_scale "
                f"{list(layer.magnitude.shape)} is not supported: each column's norm spans every "
                "part of the fused weight, which the split layers hold apart",
                hint="re-train it with LyCORIS' wd_on_out, its default: one magnitude per output row",
            )
        magnitude = layer.magnitude.reshape(-1, 1)
        if self.swap_halves:
            first, second = magnitude.chunk(2, dim=0)
            magnitude = torch.cat([second, first])
        return [
            (
                ref,
                DoraDelta(
                    PartDelta(layer.inner, self.shape, start, stop, self.swap_halves),
                    magnitude[start:stop],
                    layer.peft,
                ),
            )
            for ref, start, stop in self._rows()
        ]


@dataclass(frozen=True)
class PartDelta:
    """Rows ``start:stop`` of a fused module's ΔW, for kinds whose factors cannot be cut by rows
    (LoHa, LoKr, full): the whole ΔW is formed and sliced each time, exact and file-sized in memory."""

    whole: Any  # the fused module's AdapterDelta
    fused_shape: tuple[int, int]
    start: int
    stop: int
    swap_halves: bool = False

    @property
    def kind(self) -> str:
        return self.whole.kind

    @property
    def rank(self) -> int | None:
        return self.whole.rank

    def shape_error(self, weight_shape: tuple[int, ...]) -> str | None:
        rows = self.stop - self.start
        if (rows, self.fused_shape[1]) != tuple(weight_shape):
            return f"gives a [{rows}, {self.fused_shape[1]}] update for a {list(weight_shape)} weight"
        return None

    def delta(self, weight_shape: tuple[int, ...], device: Any = None) -> torch.Tensor:
        full = self.whole.delta(self.fused_shape, device)
        if self.swap_halves:
            first, second = full.chunk(2, dim=0)
            full = torch.cat([second, first])
        return full[self.start : self.stop].reshape(weight_shape)


def flow_kohya_index(components: dict[str, Any], family: Any) -> dict[str, FlowTarget]:
    """kohya module name -> the split layers it covers, for every adaptable layer of the base."""
    parts: dict[str, dict[int, ModuleRef]] = {}
    fused: dict[str, FusedPart] = {}
    for ref in adaptable_modules(components, family):
        try:
            part = fused_part(family.id, ref.component, ref.path)
        except ValueError:
            continue  # layers sd-scripts never names (embedders, T5, outside the blocks)
        parts.setdefault(part.name, {})[part.index] = ref
        fused[part.name] = part
    index = {}
    for name, found in parts.items():
        if len(found) != len(fused[name].parts):
            continue  # a fused module needs every one of its parts in the base
        refs = tuple(found[i] for i in range(len(found)))
        swap = len(refs) == 1 and _is_continuous_norm(components, refs[0].component, fused[name])
        index[name] = FlowTarget(name, refs, swap)
    return index

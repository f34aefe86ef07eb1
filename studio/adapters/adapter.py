"""A loaded adapter: its layers keyed by base module, plus what loading found."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from studio.adapters.info import AdapterInfo
from studio.adapters.layers import AdapterDelta
from studio.models.family import ModelFamily

LayerKey = tuple[str, str]  # (component, module path), e.g. ("unet", "down_blocks.1.attentions.0.proj_in")


@dataclass(frozen=True)
class LoadReport:
    """How a file mapped onto the base; ``unmatched`` lists every module that was not applied."""

    path: str
    formats: tuple[str, ...]  # "kohya", "diffusers", "peft"
    applied: int
    kinds: dict[str, int]
    unmatched: tuple[str, ...] = ()  # module names (kohya) or "component:path" (diffusers/peft)
    unmatched_keys: tuple[str, ...] = ()  # every tensor name behind them

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.kinds.items()))
        text = f"{self.applied} layers ({kinds}) from a {'+'.join(self.formats)} file"
        if self.unmatched:
            text += f"; {len(self.unmatched)} modules match no base layer: {', '.join(self.unmatched)}"
        return text


@dataclass(eq=False)
class Adapter:
    """One adapter file resolved against one base. Compared by identity, hashable."""

    name: str
    path: Path
    sha256: str
    family: ModelFamily
    layers: dict[LayerKey, AdapterDelta]
    info: AdapterInfo
    report: LoadReport

    @property
    def is_plain_lora(self) -> bool:
        """Every layer is a (down, up, scale) triple, so the adapter can be baked by concatenation."""
        return all(getattr(layer, "is_plain", False) for layer in self.layers.values())

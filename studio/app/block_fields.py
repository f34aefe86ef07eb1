"""Per-block weights as text fields, to and from a recipe's ``blocks``: a UNet's down, mid and
up, and a flow transformer's double-stream (SD3.5's joint) and single-stream blocks.

Each field is empty (the group keeps weight 1), a number (the group's weight), and for every
group but ``mid`` optionally numbered overrides after it: ``"0.5, 1:0"`` is
``{"down": 0.5, "down.1": 0.0}``; ``"1:0"`` alone sets only block 1. Numbers are written
back with every digit they carry, so a recipe survives the round trip through the fields.
A base uses the groups it has (``Family.layer_group``); the others' fields change nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

from studio.errors import StudioError

GROUPS = ("down", "mid", "up", "double", "single")
NUMBERED = ("down", "up", "double", "single")


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise StudioError(
            f"block weight {where}: {text!r} is not a number",
            hint="type a number like 0.5, and for numbered blocks like 0.5, 1:0",
        ) from None


def parse_block_fields(fields: Mapping[str, str | float | None]) -> dict[str, float]:
    """``{"down": "0.5, 1:0", "mid": "", "up": "1"}`` -> ``{"down": 0.5, "down.1": 0.0, "up": 1.0}``;
    a group not in ``fields`` is empty."""
    blocks: dict[str, float] = {}
    for group in GROUPS:
        text = "" if fields.get(group) is None else str(fields[group]).strip()
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            index, sep, value = part.partition(":")
            if not sep:
                blocks[group] = _number(part, group)
            elif group in NUMBERED and index.strip().isdigit():
                blocks[f"{group}.{int(index)}"] = _number(value.strip(), f"{group}.{index.strip()}")
            else:
                raise StudioError(
                    f"block weight {group}: {part!r} is not a block number and weight",
                    hint="mid has no numbered blocks; the others take them, written like 1:0.5",
                )
    return blocks


def block_field_texts(blocks: Mapping[str, float]) -> dict[str, str]:
    """The inverse of :func:`parse_block_fields`: the field texts of a recipe's blocks."""
    texts = {}
    for group in GROUPS:
        parts = [_format(blocks[group])] if group in blocks else []
        numbered = sorted(
            (int(key.split(".")[1]), value) for key, value in blocks.items() if key.startswith(f"{group}.")
        )
        parts += [f"{index}:{_format(value)}" for index, value in numbered]
        texts[group] = ", ".join(parts)
    return texts


def _format(value: float) -> str:
    return repr(float(value)).removesuffix(".0")

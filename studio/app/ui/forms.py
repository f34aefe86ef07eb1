"""Widget values by name, not by position.

A form is a dataclass whose fields are components. ``inputs(prefix)`` gives the
``{name: component}`` mapping an event takes as ``inputs_kwargs``; the handler receives
the values under those names and ``values(kwargs, prefix)`` reads them back as a
``{field: value}`` dict; ``components()`` lists the fields for an event's outputs, and a
handler answers with ``{component: value}`` for the ones it changes (the rest stay as
they are).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from gradio.components import Component


class Form:
    """Mixin for dataclasses of components."""

    def named(self) -> dict[str, Component]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def components(self) -> list[Component]:
        return list(self.named().values())

    def inputs(self, prefix: str = "") -> dict[str, Component]:
        return {prefix + name: widget for name, widget in self.named().items()}

    def values(self, kwargs: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        return {name: kwargs[prefix + name] for name in self.named()}

    def updates(self, values: dict[str, Any]) -> dict[Component, Any]:
        """``{field: value}`` -> ``{component: value}`` for a handler's return."""
        named = self.named()
        return {named[name]: value for name, value in values.items()}

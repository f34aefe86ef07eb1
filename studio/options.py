"""The option table: each training option declared once, as a dataclass field with an ``Option``.

A field made with :func:`option` carries its help text, allowed values, bounds and where it
shows (the ``studio train`` command line, the app's basic settings or its advanced options; the
Python API and config files have every option). The CLI parser, the app's advanced widgets and
``TrainConfig.validate`` are all generated from these specs, so adding an option is one edit.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import typing
from dataclasses import dataclass, field
from typing import Any

_KEY = "studio.option"


class Show(enum.Flag):
    """Where an option shows besides the Python API and config files, which have them all."""

    API = 0  # nowhere else
    CLI = enum.auto()  # a ``studio train`` flag
    BASIC = enum.auto()  # the app's main settings, laid out by hand
    ADVANCED = enum.auto()  # the app's "Advanced options", generated


@dataclass(frozen=True)
class Option:
    help: str  # the CLI help; for a switch, what the switch does
    show: Show = Show.CLI
    label: str = ""  # the app's label (advanced options)
    choices: tuple[str, ...] = ()
    minimum: float | None = None  # inclusive bounds, checked by validate and set on the app's widget
    maximum: float | None = None
    positive: bool = False  # must be > 0
    flag: str = ""  # the CLI flag when it is not --name (a switch that turns a default off: --no-x)
    metavar: str | None = None
    positional: bool = False  # the CLI's positional argument


def option(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field with its ``Option`` (a list default is copied per instance)."""
    metadata = {_KEY: Option(help, **spec)}
    if isinstance(default, list):
        return field(default_factory=functools.partial(list, default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Spec:
    """One option with what its field says: name, value type, default."""

    name: str
    kind: type  # bool, int, float, str or list (of str)
    optional: bool  # None is allowed (and means "derive it")
    default: Any
    option: Option

    @property
    def flag(self) -> str:
        if self.option.flag:
            return self.option.flag
        switch_off = self.kind is bool and self.default is True
        return ("--no-" if switch_off else "--") + self.name.replace("_", "-")

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this option, in one phrase; None when it is fine."""
        if value is None:
            return None if self.optional else f"{self.name} must be set"
        if not _has_kind(value, self.kind):
            return f"{self.name} = {value!r} must be {_KIND_NAMES[self.kind]}"
        o = self.option
        if o.choices and value not in o.choices:
            return f"{self.name} = {value!r} is not one of: {', '.join(o.choices)}"
        if o.positive and not value > 0:
            return f"{self.name} = {value!r} must be > 0"
        if o.minimum is not None and value < o.minimum:
            return f"{self.name} = {value!r} must be >= {o.minimum:g}"
        if o.maximum is not None and value > o.maximum:
            return f"{self.name} = {value!r} must be <= {o.maximum:g}"
        return None


_KIND_NAMES = {
    bool: "true or false",
    int: "a whole number",
    float: "a number",
    str: "text",
    list: "a list of text",
}


def _has_kind(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind in (int, float) and isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    if kind is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, kind)


@functools.cache
def specs(cls: type) -> tuple[Spec, ...]:
    """The options of dataclass ``cls``, in field order (every field must be an ``option``)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        optional = type(None) in typing.get_args(hint)
        inner = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
        kind = typing.get_origin(inner) or inner
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        out.append(Spec(f.name, kind, optional, default, f.metadata[_KEY]))
    return tuple(out)

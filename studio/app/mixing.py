"""Generation for the Mix tab: one live ``GenerationSession`` per base, adapters from the library.

A slider change only re-patches the layers of the adapter that moved (the session's blend
engine does that); loaded adapters are kept per base, keyed by file and modification time,
so switching weights never re-reads a file. One generation runs at a time: the patched
weights are shared state.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.adapters import Adapter, file_sha256, load_adapter
from studio.adapters.info import adapter_info, read_sidecar
from studio.app import library
from studio.app.db import Database
from studio.app.models import base_label
from studio.app.workspace import Workspace, safe_name
from studio.atomic import atomic_path
from studio.data.captions import has_word
from studio.errors import StudioError
from studio.formats.safetensors_io import read_header
from studio.generate import PLAIN, FastPath, GenerationSession
from studio.grid import adapter_prompt_grid, weight_seed_grid
from studio.mixer import AdapterWeights, BakeReport, BlendItem, bake_blend
from studio.recipes import GenerationSettings, Recipe, read_recipe, recipe_for, save_recipe


@dataclass(frozen=True)
class Slot:
    """One row of sliders in the Mix tab."""

    adapter: str  # library name; "" = empty slot
    enabled: bool = True
    weight: float = 1.0
    unet: float = 1.0
    text_encoder: float = 1.0
    blocks: Mapping[str, float] = field(default_factory=dict)  # UNet block weights, as in a recipe
    lbw: str = ""  # A1111 LoRA Block Weight preset or vector, as typed

    @property
    def weights(self) -> AdapterWeights:
        return AdapterWeights(
            self.weight, self.unet, self.text_encoder, self.enabled, dict(self.blocks), self.lbw
        )

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> Slot:
        """An API entry ``{"name", "weight", "unet", "text_encoder", "enabled", "blocks", "lbw"}``."""
        blocks = entry.get("blocks") or {}
        if not isinstance(blocks, dict):
            raise StudioError('"blocks" must be an object like {"down": 1, "mid": 0.5, "up": 0}')
        try:
            numbers = [float(entry.get(key, 1.0)) for key in ("weight", "unet", "text_encoder")]
        except (TypeError, ValueError):
            raise StudioError(
                f"adapter {entry['name']!r}: weight, unet and text_encoder must be numbers"
            ) from None
        weights = AdapterWeights(
            *numbers, bool(entry.get("enabled", True)), blocks, str(entry.get("lbw") or "")
        )
        return cls(str(entry["name"]), weights.enabled, weights.weight, weights.unet, weights.text_encoder,
                   dict(weights.blocks), weights.lbw)  # fmt: skip


def settings_from(
    prompt: str, negative: str, seed: float | None, steps: float, guidance: float, width: float | None,
    height: float | None, scheduler: str, batch: float | None = 1,
) -> GenerationSettings:  # fmt: skip
    """Settings from form values (0 or empty size: the base's native size)."""
    if not (prompt or "").strip():
        raise StudioError("type a prompt")
    return GenerationSettings(
        prompt=prompt.strip(), negative=(negative or "").strip(), seed=int(seed or 0), steps=int(steps),
        guidance=float(guidance), width=int(width) if width else None, height=int(height) if height else None,
        batch=int(batch or 1), scheduler=scheduler,
    )  # fmt: skip


def adapter_choices(db: Database) -> list[tuple[str, str]]:
    """The slot pickers: (label, library name), with an empty choice first."""
    return [("(none)", "")] + [(f"{r.name} ({r.family}, rank {r.rank})", r.name) for r in db.adapters()]


def trigger_words(ws: Workspace, db: Database, name: str, most: int = 6) -> list[str]:
    """A library adapter's trigger first, then its most frequent training tags (``ss_tag_frequency``).

    Read from the file's header and sidecar only (never its tensors): this runs on every pick.
    """
    if not name:
        return []
    path = library.adapter_file(ws, db.adapter(name))
    with warnings.catch_warnings():  # a broken tag list only loses the hints
        warnings.simplefilter("ignore")
        info = adapter_info(path, read_header(path).metadata, read_sidecar(path), [])
    words = [info.trigger] if info.trigger else []
    words += [tag for tag, count in info.tags if count > 0 and tag not in words]
    return words[:most]


def insert_word(prompt: str, word: str) -> tuple[str, bool]:
    """``prompt`` with ``word`` appended as a comma tag; (prompt, False) when it is already there."""
    prompt = (prompt or "").strip()
    if has_word(prompt, word):
        return prompt, False
    return (f"{prompt.rstrip(', ')}, {word}" if prompt else word), True


def recipe_choices(ws: Workspace) -> list[str]:
    return sorted(path.stem for path in ws.recipes.glob("*.json"))


def recipe_path(ws: Workspace, name: str) -> Path:
    """A saved recipe by its name in the picker."""
    return ws.recipes / f"{safe_name(name, 'recipe')}.json"


class MixService:
    def __init__(self, ws: Workspace, db: Database, max_sessions: int = 1, fast: FastPath = PLAIN):
        self.ws, self.db, self.max_sessions, self.fast = ws, db, max_sessions, fast
        self._sessions: OrderedDict[str, GenerationSession] = OrderedDict()
        self._adapters: dict[tuple[str, str, float], Adapter] = {}
        self._configs: dict[str, str | None] = {}
        self.lock = threading.RLock()

    def set_config(self, base: str, config: str | None) -> None:
        """How a single-file ``base`` is read (``load_base``'s ``config``); a change reloads it."""
        with self.lock:
            if self._configs.get(base) != config and base in self._sessions:
                self._sessions.pop(base).close()
                self._adapters = {k: v for k, v in self._adapters.items() if k[0] != base}
            self._configs[base] = config

    def session(self, base: str) -> GenerationSession:
        from studio.models.loader import load_base

        with self.lock:
            if base in self._sessions:
                self._sessions.move_to_end(base)
                return self._sessions[base]
            while len(self._sessions) >= self.max_sessions:
                old_base, old = self._sessions.popitem(last=False)
                old.close()
                self._adapters = {k: v for k, v in self._adapters.items() if k[0] != old_base}
            model = load_base(base, config=self._configs.get(base))
            session = GenerationSession(
                model.pipeline, base=base_label(self.ws, base), family=model.family, fast=self.fast
            )
            self._sessions[base] = session
            return session

    def _adapter(self, base: str, session: GenerationSession, name: str) -> Adapter:
        row = self.db.adapter(name)
        path = library.adapter_file(self.ws, row)
        key = (base, str(path), path.stat().st_mtime)
        if key not in self._adapters:
            for stale in [k for k in self._adapters if k[:2] == key[:2]]:  # the file changed since
                del self._adapters[stale]
            self._adapters[key] = load_adapter(
                path, session.pipeline.components, session.family, name=row.name
            )
        return self._adapters[key]

    def blend(self, base: str, slots: list[Slot]) -> GenerationSession:
        """The session for ``base`` with ``slots`` patched in (only what changed is rewritten)."""
        chosen = [slot for slot in slots if slot.adapter]
        names = [slot.adapter for slot in chosen]
        if len(set(names)) != len(names):
            raise StudioError("the same adapter is chosen in two slots; use one slot per adapter")
        with self.lock:
            session = self.session(base)
            items = [BlendItem(self._adapter(base, session, s.adapter), s.weights) for s in chosen]
            session.set_blend(items)
            return session

    def generate(self, base: str, slots: list[Slot], settings: GenerationSettings) -> list[Path]:
        with self.lock:
            session = self.blend(base, slots)
            results = session.generate(settings)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            paths = []
            for result in results:
                target = self.ws.unique(self.ws.samples, f"{stamp}-seed{result.recipe.settings.seed}", ".png")
                paths.append(result.save(target))
            return paths

    def grid(
        self, base: str, slots: list[Slot], settings: GenerationSettings, kind: str, values: str
    ) -> Path:
        """``kind`` "adapters": base and each adapter alone x prompts (one per line of ``values``);
        "weights": the first adapter at each weight of ``values`` (comma list) x 3 seeds."""
        with self.lock:
            session = self.blend(base, slots)
            if not session.items:
                raise StudioError("choose at least one adapter for a comparison grid")
            if kind == "weights":
                try:
                    weights = [float(v) for v in values.split(",") if v.strip()] or [0.0, 0.5, 1.0]
                except ValueError:
                    raise StudioError(
                        f"weights must be numbers separated by commas, got {values!r}"
                    ) from None
                seeds = [settings.seed + i for i in range(3)]
                image = weight_seed_grid(session, session.items[0].adapter.name, weights, seeds, settings)
            else:
                prompts = [line.strip() for line in values.splitlines() if line.strip()] or [settings.prompt]
                image = adapter_prompt_grid(session, prompts, settings)
            target = self.ws.unique(self.ws.samples, f"grid-{time.strftime('%Y%m%d-%H%M%S')}", ".png")
            with atomic_path(target) as tmp:
                image.save(tmp, format="PNG")
            return target

    def bake(self, base: str, slots: list[Slot], name: str, rank: int | None) -> tuple[Path, BakeReport]:
        stem = safe_name(name, "blend")
        if any(row.name == stem for row in self.db.adapters()):
            raise StudioError(
                f"an adapter named {stem!r} is already in the library", hint="pick another name"
            )
        with self.lock:
            session = self.blend(base, slots)
            target = self.ws.unique(self.ws.adapters, stem, ".safetensors")
            report = bake_blend(
                session.items,
                session.pipeline.components,
                session.family,
                target,
                rank=rank,
                originals=session.engine.original_weight,  # the session's weights hold the blend
            )
        library.register_file(self.ws, self.db, target, "baked")
        return target, report

    def recipe(self, base: str, slots: list[Slot], settings: GenerationSettings) -> Recipe:
        with self.lock:
            session = self.blend(base, slots)
            return recipe_for(session.base, session.items, settings)

    def save_recipe(self, base: str, slots: list[Slot], settings: GenerationSettings, name: str) -> Path:
        target = self.ws.recipes / f"{safe_name(name, 'recipe')}.json"
        save_recipe(self.recipe(base, slots, settings), target)
        return target

    def load_recipe(self, path: str | Path) -> tuple[Recipe, list[Slot]]:
        """A recipe file or studio PNG (uploaded into the workspace), mapped onto library adapters.

        Adapters are matched by content (sha256), then by name, never by the recorded path:
        a recipe from elsewhere must not make the app open files outside the workspace.
        """
        recipe = read_recipe(self.ws.resolve(path))
        rows = self.db.adapters()
        slots, missing = [], []
        for entry in recipe.adapters:
            match = next((r for r in rows if _sha(self.ws, r.path) == entry.sha256), None)
            match = match or next((r for r in rows if r.name == entry.name), None)
            if match is None:
                missing.append(entry.name)
                continue
            w = entry.weights
            slots.append(Slot(match.name, w.enabled, w.weight, w.unet, w.text_encoder, dict(w.blocks), w.lbw))
        if missing:
            raise StudioError(
                f"the recipe uses adapters that are not in the library: {', '.join(missing)}",
                hint="import them in the Library tab, then load the recipe again",
            )
        return recipe, slots


_SHA_CACHE: dict[tuple[str, float], str] = {}


def _sha(ws: Workspace, rel: str) -> str:
    path = ws.root / rel
    try:
        key = (str(path), path.stat().st_mtime)
    except OSError:
        return ""
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(path)
    return _SHA_CACHE[key]

"""A recipe: everything needed to make an image again (base, adapters and sliders, settings).

Recipes are JSON files, and the same JSON rides inside every PNG the studio writes (text
chunk ``studio_recipe``). Adapters are recorded by path AND sha256 of the file: loading a
recipe finds each file (at its path, else beside the recipe), warns when its contents
changed since, and refuses when it is gone.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from studio.adapters import AdapterWarning, file_sha256, load_adapter
from studio.atomic import write_text
from studio.errors import StudioError
from studio.mixer import AdapterWeights, BlendItem
from studio.models.family import ModelFamily

PNG_KEY = "studio_recipe"
RECIPE_VERSION = 1


@dataclass(frozen=True)
class GenerationSettings:
    prompt: str
    negative: str = ""
    seed: int = 0
    steps: int = 25
    guidance: float = 7.0
    width: int | None = None  # None: the base's native size
    height: int | None = None
    batch: int = 1
    scheduler: str = "euler-a"
    clip_skip: int | None = None  # A1111's count (2 = penultimate layer); None: the adapters' or the base's


@dataclass(frozen=True)
class AdapterEntry:
    name: str
    path: str
    sha256: str
    weights: AdapterWeights = AdapterWeights()


@dataclass(frozen=True)
class Recipe:
    base: str
    settings: GenerationSettings
    adapters: list[AdapterEntry] = field(default_factory=list)
    version: int = RECIPE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "base": self.base,
            "settings": asdict(self.settings),
            "adapters": [
                {"name": a.name, "path": a.path, "sha256": a.sha256, **a.weights.to_dict()}
                for a in self.adapters
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Parse, raising ``ValueError``/``TypeError``/``KeyError`` on a malformed recipe."""
        if data.get("version") != RECIPE_VERSION:
            raise ValueError(f"unsupported recipe version {data.get('version')!r}")
        raw = data["settings"]
        size = {k: None if raw.get(k) is None else int(raw[k]) for k in ("width", "height")}
        settings = GenerationSettings(
            prompt=str(raw["prompt"]),
            negative=str(raw.get("negative", "")),
            seed=int(raw.get("seed", 0)),
            steps=int(raw.get("steps", 25)),
            guidance=float(raw.get("guidance", 7.0)),
            batch=int(raw.get("batch", 1)),
            scheduler=str(raw.get("scheduler", "euler-a")),
            clip_skip=None if raw.get("clip_skip") is None else int(raw["clip_skip"]),
            **size,
        )
        adapters = []
        for entry in data.get("adapters", []):
            weights = {
                k: entry[k]
                for k in ("weight", "unet", "text_encoder", "enabled", "blocks", "lbw")
                if k in entry
            }
            adapters.append(
                AdapterEntry(
                    str(entry["name"]), str(entry["path"]), str(entry["sha256"]), AdapterWeights(**weights)
                )
            )
        return cls(base=str(data["base"]), settings=settings, adapters=adapters)


def recipe_for(base: str, items: list[BlendItem], settings: GenerationSettings) -> Recipe:
    entries = [
        AdapterEntry(i.adapter.name, str(i.adapter.path.resolve()), i.adapter.sha256, i.weights)
        for i in items
    ]
    return Recipe(base=base, settings=settings, adapters=entries)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    write_text(path, recipe.to_json() + "\n")


def read_recipe(path: str | Path) -> Recipe:
    """The recipe of a studio PNG, or of a recipe ``.json`` file."""
    path = Path(path)
    if not path.is_file():
        raise StudioError("file not found", path=path)
    if path.suffix.lower() == ".json":
        text = path.read_text(encoding="utf-8")
    else:
        try:
            with Image.open(path) as image:
                text = getattr(image, "text", {}).get(PNG_KEY) or image.info.get(PNG_KEY)
        except (UnidentifiedImageError, OSError) as exc:
            raise StudioError(f"not a readable image ({exc})", path=path) from None
        if not text:
            raise StudioError(f"the image carries no studio recipe (no {PNG_KEY!r} text chunk)", path=path)
    try:
        return Recipe.from_dict(json.loads(text))
    except StudioError as exc:
        raise StudioError(f"bad recipe: {exc.message}", path=path) from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StudioError(f"bad recipe: {type(exc).__name__}: {exc}", path=path) from None


def locate_adapter(entry: AdapterEntry, recipe_path: str | Path | None = None) -> Path:
    """The entry's file at its recorded path, else beside the recipe; warns if its sha256 changed."""
    candidates = [Path(entry.path)]
    if recipe_path is not None:
        candidates.append(Path(recipe_path).parent / Path(entry.path).name)
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise StudioError(
            f"adapter {entry.name!r} of the recipe is missing",
            path=entry.path,
            hint="put the file back or edit the recipe",
        )
    if file_sha256(found) != entry.sha256:
        warnings.warn(
            f"{found}: adapter {entry.name!r} changed since the recipe was made (sha256 differs); "
            "the image may not come out the same",
            AdapterWarning,
            stacklevel=2,
        )
    return found


def load_blend(
    recipe: Recipe, components: dict[str, Any], family: ModelFamily, recipe_path: str | Path | None = None
) -> list[BlendItem]:
    """Load the recipe's adapters against a base, with their recorded sliders."""
    return [
        BlendItem(load_adapter(locate_adapter(e, recipe_path), components, family, name=e.name), e.weights)
        for e in recipe.adapters
    ]

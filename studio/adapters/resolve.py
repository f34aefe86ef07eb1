"""Find the base layer a file's module name refers to.

kohya names are looked up in ``kohya_module_index`` plus the spellings other tools write
for the same layer (diffusers' exporter, LoRAs made on newer transformers):

* SDXL UNet with diffusers block names (``lora_unet_down_blocks_1_...``) instead of SGM ones;
* ``lora_te1_`` for the one SD 1.x/2.x text encoder (diffusers' ``convert_state_dict_to_kohya``);
* text-encoder names without ``text_model_`` (built from a flattened transformers 5.x
  ``CLIPTextModel``).

diffusers/peft module paths are matched against the components' own module paths, with
or without the ``text_model.`` level that transformers 5.x removed from ``CLIPTextModel``.
"""

from __future__ import annotations

from typing import Any

from studio.formats.keys import KOHYA, UNET_PREFIX, TensorKey
from studio.formats.kohya_names import ModuleRef, adaptable_modules, kohya_module_index, text_encoder_prefix
from studio.models.family import ModelFamily


class ModuleResolver:
    """Name -> ``ModuleRef`` for one base model (built once per load)."""

    def __init__(self, components: dict[str, Any], family: ModelFamily):
        self.family = family
        self.kohya = kohya_module_index(components, family)
        self.by_path = {(ref.component, ref.path): ref for ref in adaptable_modules(components, family)}
        self._aliases: dict[str, ModuleRef] = {}
        for ref in self.by_path.values():
            for alias in self._kohya_aliases(ref):
                self._aliases.setdefault(alias, ref)

    def _kohya_aliases(self, ref: ModuleRef) -> list[str]:
        flat = ref.path.replace(".", "_")
        if ref.component == "unet":
            return [f"{UNET_PREFIX}_{flat}"] if self.family is ModelFamily.SDXL else []
        prefixes = [text_encoder_prefix(self.family, ref.component)]
        if self.family is not ModelFamily.SDXL:
            prefixes.append("lora_te1")
        stripped = flat.removeprefix("text_model_")
        return [f"{p}_{name}" for p in prefixes for name in (f"text_model_{stripped}", stripped)]

    def ref(self, key: TensorKey) -> ModuleRef | None:
        """The base layer a parsed tensor name refers to, or None."""
        if key.convention == KOHYA:
            return self.kohya_ref(key.module)
        return self.path_ref(key.component, key.module)

    def kohya_ref(self, name: str) -> ModuleRef | None:
        return self.kohya.get(name) or self._aliases.get(name)

    def path_ref(self, component: str | None, path: str) -> ModuleRef | None:
        """A diffusers/peft module path; ``component=None`` tries the UNet, then each text encoder."""
        components = [component] if component else ["unet", *self.family.text_encoder_names]
        for name in components:
            for candidate in (path, path.removeprefix("text_model."), f"text_model.{path}"):
                if ref := self.by_path.get((name, candidate)):
                    return ref
        return None

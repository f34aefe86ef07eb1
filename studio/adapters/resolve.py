"""Find the base layer a file's module name refers to.

kohya names are looked up in ``kohya_module_index`` plus the spellings other tools write
for the same layer (diffusers' exporter, LoRAs made on newer transformers):

* SDXL UNet with diffusers block names (``lora_unet_down_blocks_1_...``) instead of SGM ones;
* ``lora_te1_`` for the one SD 1.x/2.x text encoder (diffusers' ``convert_state_dict_to_kohya``);
* text-encoder names without ``text_model_`` (built from a flattened transformers 5.x
  ``CLIPTextModel``);
* on a flow transformer, OneTrainer's ``lora_transformer_`` / SimpleTuner's ``lycoris_`` +
  the diffusers layer path flattened.

On a flow-transformer base (SD3.5, Flux.1) a kohya name is a module of the original fused
layout and may cover several diffusers layers: ``fused`` answers those
(``studio.adapters.flow``). diffusers/peft module paths are matched against the components'
own module paths (``transformer.`` included when a file's keys carry it), with or without the
``text_model.`` level that transformers 5.x removed from ``CLIPTextModel``.
"""

from __future__ import annotations

from typing import Any

from studio.adapters.flow import FlowTarget, flow_kohya_index
from studio.formats.keys import KOHYA, TRANSFORMER_PREFIXES, UNET_PREFIX, TensorKey
from studio.formats.kohya_names import ModuleRef, adaptable_modules, kohya_module_index, text_encoder_prefix
from studio.models.family import ModelFamily


class ModuleResolver:
    """Name -> ``ModuleRef`` for one base model (built once per load)."""

    def __init__(self, components: dict[str, Any], family: ModelFamily):
        self.family = family
        self.flow = family.denoiser != "unet"
        self.kohya = {} if self.flow else kohya_module_index(components, family)
        self.flow_index = flow_kohya_index(components, family) if self.flow else {}
        self.by_path = {(ref.component, ref.path): ref for ref in adaptable_modules(components, family)}
        self._aliases: dict[str, ModuleRef] = {}
        for ref in self.by_path.values():
            for alias in self._kohya_aliases(ref):
                self._aliases.setdefault(alias, ref)

    def _kohya_aliases(self, ref: ModuleRef) -> list[str]:
        flat = ref.path.replace(".", "_")
        if self.flow:  # OneTrainer's and SimpleTuner's names of the split diffusers layers
            return [f"{p}_{flat}" for p in TRANSFORMER_PREFIXES] if ref.component == "transformer" else []
        if ref.component == "unet":
            return [f"{UNET_PREFIX}_{flat}"] if self.family is ModelFamily.SDXL else []
        prefixes = [text_encoder_prefix(self.family, ref.component)]
        if self.family is not ModelFamily.SDXL:
            prefixes.append("lora_te1")
        stripped = flat.removeprefix("text_model_")
        return [f"{p}_{name}" for p in prefixes for name in (f"text_model_{stripped}", stripped)]

    def fused(self, key: TensorKey) -> FlowTarget | None:
        """On a flow base, the layers a kohya module covers (also when named without ``text_model_``)."""
        if not self.flow or key.convention != KOHYA:
            return None
        name = key.module
        if name.startswith("lora_te") and "_text_model_" not in name:
            prefix, _, rest = name.partition("_")
            kind, _, rest = rest.partition("_")
            name = f"{prefix}_{kind}_text_model_{rest}"
        return self.flow_index.get(name)

    def ref(self, key: TensorKey) -> ModuleRef | None:
        """The base layer a parsed tensor name refers to, or None."""
        if key.convention == KOHYA:
            return self.kohya_ref(key.module)
        return self.path_ref(key.component, key.module)

    def kohya_ref(self, name: str) -> ModuleRef | None:
        return self.kohya.get(name) or self._aliases.get(name)

    def path_ref(self, component: str | None, path: str) -> ModuleRef | None:
        """A diffusers/peft module path; ``component=None`` tries the denoiser, then each text encoder."""
        names = (self.family.denoiser, *self.family.text_encoder_names)
        head, dot, rest = path.partition(".")
        if component is None and dot and head in names:  # ``transformer.…``: not a grammar prefix
            component, path = head, rest
        for name in [component] if component else names:
            for candidate in (path, path.removeprefix("text_model."), f"text_model.{path}"):
                if ref := self.by_path.get((name, candidate)):
                    return ref
        return None

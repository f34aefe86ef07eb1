"""The one grammar of tensor names in LoRA files: every reader and writer parses keys here.

kohya / LyCORIS: ``<prefix>_<flattened module path>.<role>``, the prefix one of ``lora_unet``,
``lora_te`` (SD 1.x/2.x), ``lora_te1``/``lora_te2`` (SDXL), the role everything after the
first dot (``lora_down.weight``, ``alpha``, ``hada_w1_a``, ``lokr_w2_b``, ``diff`` ...).

diffusers / peft: ``[unet.|text_encoder.|text_encoder_2.|base_model.model.]<module path>``
followed by one of the suffixes below (``lora_A.weight``, the older ``lora.down.weight`` and
``lora_linear_layer.down.weight``, DoRA's ``lora_magnitude_vector``, ``alpha`` ...). The old
attention-processor form (``attn1.processor.to_q_lora.down.weight``) names the module
``attn1.to_q``: the one place the module is not kept as written.

Other tools' names for the same modules, read as the kohya names they mean:

* ComfyUI's: the checkpoint's own module path under ``diffusion_model.`` (BFL's, SAI's or SGM's
  layout) with kohya's or peft's suffixes is kohya's ``lora_unet_`` + that path flattened;
* OneTrainer's ``lora_transformer_`` and SimpleTuner's LyCORIS ``lycoris_`` + a flow
  transformer's diffusers layer path, flattened (component ``transformer``).

Loader (``studio.adapters.load``), ``studio inspect`` and the kohya reader all see a key
through ``parse_key``, so they cannot disagree on what a key means.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KOHYA = "kohya"  # module named kohya's way (``lora_unet_...``)
DIFFUSERS = "diffusers"  # module path under a pipeline component (``unet.``, ``text_encoder.``)
PEFT = "peft"  # bare module path, or under peft's ``base_model.model.``

# kohya name prefix -> the pipeline component it names. ``lora_te1`` is also what diffusers'
# ``convert_state_dict_to_kohya`` writes for the one text encoder of SD 1.x/2.x.
KOHYA_PREFIXES = {
    "lora_unet": "unet",
    "lora_te": "text_encoder",
    "lora_te1": "text_encoder",
    "lora_te2": "text_encoder_2",
    "lora_transformer": "transformer",  # OneTrainer (Flux, SD3): diffusers' layer paths
    "lycoris": "transformer",  # SimpleTuner's LyCORIS files: the same
}
UNET_PREFIX = "lora_unet"
TRANSFORMER_PREFIXES = ("lora_transformer", "lycoris")
COMFY_PREFIX = "diffusion_model."  # ComfyUI: the checkpoint's own module paths
_PREFIXES_LONGEST_FIRST = sorted(KOHYA_PREFIXES, key=len, reverse=True)

# kohya/LyCORIS tensor names after the module, mapped to their role.
KOHYA_ROLES = {
    "lora_down.weight": "down",
    "lora_up.weight": "up",
    "lora_mid.weight": "mid",
    "alpha": "alpha",
    "hada_w1_a": "hada_w1_a",
    "hada_w1_b": "hada_w1_b",
    "hada_w2_a": "hada_w2_a",
    "hada_w2_b": "hada_w2_b",
    "hada_t1": "hada_t1",
    "hada_t2": "hada_t2",
    "lokr_w1": "lokr_w1",
    "lokr_w1_a": "lokr_w1_a",
    "lokr_w1_b": "lokr_w1_b",
    "lokr_w2": "lokr_w2",
    "lokr_w2_a": "lokr_w2_a",
    "lokr_w2_b": "lokr_w2_b",
    "lokr_t2": "lokr_t2",
    "diff": "diff",
    "dora_scale": "dora_scale",  # LyCORIS DoRA magnitude, beside any of the kinds above
}
# DoRA magnitudes: LyCORIS' ``dora_scale`` and peft's ``lora_magnitude_vector`` (diffusers / peft names).
DORA_ROLES = ("dora_scale", "lora_magnitude_vector")
_KOHYA_SUFFIX = {role: suffix for suffix, role in KOHYA_ROLES.items()}

# Roles of adapter kinds we recognise but do not apply, and why. Each is its own role name.
UNSUPPORTED_ROLES = {
    "diff_b": "bias updates (diff_b) are not supported",
    "bias": "bias updates are not supported",
    "scale": "an explicit per-module scale tensor is not supported",
    "on_input": "IA3 adapters are not supported",
    "weight": "IA3 adapters are not supported",
    "oft_blocks": "OFT adapters are not supported",
    "oft_diag": "OFT adapters are not supported",
    "w_norm": "norm-layer adapters are not supported",
    "b_norm": "norm-layer adapters are not supported",
    "a1.weight": "GLoRA adapters are not supported",
}

# diffusers / peft suffixes -> (role, legacy spelling), longest first so ".lora.down.weight"
# wins over ".down.weight". Legacy: diffusers' spellings from before it used peft.
_DIFFUSERS_SUFFIXES = (
    (".lora_linear_layer.down.weight", "down", True),
    (".lora_linear_layer.up.weight", "up", True),
    (".lora.down.weight", "down", True),
    (".lora.up.weight", "up", True),
    ("_lora.down.weight", "down", True),
    ("_lora.up.weight", "up", True),
    (".lora_A.weight", "down", False),
    (".lora_B.weight", "up", False),
    (".lora_A.default.weight", "down", False),
    (".lora_B.default.weight", "up", False),
    (".lora_magnitude_vector", "lora_magnitude_vector", False),
    (".lora_A.bias", "bias", False),
    (".lora_B.bias", "bias", False),
    (".dora_scale", "dora_scale", False),
    (".alpha", "alpha", False),
)
_PEFT_SUFFIX = {"down": "lora_A.weight", "up": "lora_B.weight", "alpha": "alpha"}
_COMPONENT_PREFIXES = (
    ("text_encoder_2.", "text_encoder_2"),
    ("text_encoder.", "text_encoder"),
    ("unet.", "unet"),
    ("base_model.model.", None),
)
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)$")


@dataclass(frozen=True)
class TensorKey:
    """What one tensor name says: which module of which component, and which part of it."""

    convention: str  # KOHYA, DIFFUSERS or PEFT: how the module is named
    component: str | None  # "unet", "text_encoder", "text_encoder_2"; None: a peft path that does not say
    module: str  # kohya name (``lora_unet_...``) or the module path inside the component
    role: str  # "down", "up", "mid", "alpha", a LyCORIS name ("hada_w1_a"...), "diff", or unsupported
    legacy: bool = False  # diffusers' pre-peft spelling (``lora.down.weight``, ``lora_linear_layer``)

    @property
    def label(self) -> str:
        """The module as reports name it: the kohya name, or ``component:path`` (``?:`` if unknown)."""
        return self.module if self.convention == KOHYA else f"{self.component or '?'}:{self.module}"

    @property
    def supported(self) -> bool:
        return self.role not in UNSUPPORTED_ROLES


def is_kohya_key(key: str) -> bool:
    """Named kohya's way, so a tensor we cannot read is an error rather than a foreign extra."""
    return kohya_component(key) is not None


def kohya_component(name: str) -> str | None:
    """The component a kohya module name (or key) belongs to: ``lora_te1_...`` -> ``text_encoder``."""
    prefix = next((p for p in _PREFIXES_LONGEST_FIRST if name.startswith(p + "_")), None)
    return KOHYA_PREFIXES[prefix] if prefix else None


def _parse_kohya(key: str, component: str) -> TensorKey | None:
    module, _, suffix = key.partition(".")
    role = KOHYA_ROLES.get(suffix, suffix if suffix in UNSUPPORTED_ROLES else None)
    return TensorKey(KOHYA, component, module, role) if role else None


def _parse_diffusers(key: str) -> TensorKey | None:
    match = next((entry for entry in _DIFFUSERS_SUFFIXES if key.endswith(entry[0])), None)
    if match is None:
        return None
    suffix, role, legacy = match
    rest = key[: -len(suffix)]
    convention, component = PEFT, None
    for prefix, name in _COMPONENT_PREFIXES:
        if rest.startswith(prefix):
            rest, component = rest[len(prefix) :], name
            convention = DIFFUSERS if name else PEFT
            break
    if not rest.strip("."):
        return None  # a bare suffix names no module: a foreign key
    if m := _PROCESSOR.search(rest):
        rest = rest[: m.start()] + "." + ("to_out.0" if m[1] == "to_out" else m[1])
    return TensorKey(convention, component, rest, role, legacy)


def _parse_comfy(key: str) -> TensorKey | None:
    """``diffusion_model.<path>.<kohya or peft suffix>`` -> the kohya module ``lora_unet_<path>``."""
    rest = key[len(COMFY_PREFIX) :]
    endings = [(f".{suffix}", role) for suffix, role in KOHYA_ROLES.items()]
    endings += [(suffix, role) for suffix, role, legacy in _DIFFUSERS_SUFFIXES if not legacy]
    for suffix, role in sorted(endings, key=lambda entry: len(entry[0]), reverse=True):
        if rest.endswith(suffix) and len(rest) > len(suffix):
            return TensorKey(KOHYA, "unet", f"{UNET_PREFIX}_{rest[: -len(suffix)].replace('.', '_')}", role)
    return None


def parse_key(key: str) -> TensorKey | None:
    """The parts of a LoRA tensor name; None for a name that is not a LoRA tensor we know."""
    if (component := kohya_component(key)) is not None:
        return _parse_kohya(key, component)
    if key.startswith(COMFY_PREFIX):
        return _parse_comfy(key)
    return _parse_diffusers(key)


def kohya_key(module: str, role: str) -> str:
    """``(lora_unet_x, "down")`` -> ``lora_unet_x.lora_down.weight``: ``parse_key`` inverted."""
    return f"{module}.{_KOHYA_SUFFIX.get(role, role)}"


def peft_key(component: str, path: str, role: str) -> str:
    """``("unet", path, "down")`` -> ``unet.<path>.lora_A.weight``, as diffusers saves a pipeline."""
    return f"{component}.{path}.{_PEFT_SUFFIX[role]}"

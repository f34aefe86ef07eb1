"""Split tensor names of LoRA files into (module name, role), for every key convention we read.

kohya / LyCORIS: ``<kohya module name>.<role>`` where the role is everything after the
first dot (``lora_down.weight``, ``hada_w1_a``, ``alpha`` ...).

diffusers / peft: ``[unet.|text_encoder.|text_encoder_2.|base_model.model.]<module path>``
followed by one of the suffixes below; the old attention-processor form
(``attn1.processor.to_q_lora.down.weight``) names the module ``attn1.to_q``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")

# kohya/LyCORIS role names we can apply, mapped to our short names.
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
}

# Roles that belong to adapter kinds we recognise but do not apply. Loading such a file as
# if it were plain LoRA would give a different picture from every other tool, so we refuse.
UNSUPPORTED_ROLES = {
    "dora_scale": "DoRA (dora_scale): its weight-norm rescaling is not implemented",
    "lora_magnitude_vector": "DoRA (lora_magnitude_vector): its weight-norm rescaling is not implemented",
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

# diffusers / peft suffixes, longest first so ".lora.down.weight" wins over ".down.weight".
_DIFFUSERS_SUFFIXES = (
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    ("_lora.down.weight", "down"),
    ("_lora.up.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora_A.default.weight", "down"),
    (".lora_B.default.weight", "up"),
    (".lora_magnitude_vector", "lora_magnitude_vector"),
    (".lora_A.bias", "bias"),
    (".lora_B.bias", "bias"),
    (".dora_scale", "dora_scale"),
    (".alpha", "alpha"),
)
_COMPONENT_PREFIXES = (
    ("text_encoder_2.", "text_encoder_2"),
    ("text_encoder.", "text_encoder"),
    ("unet.", "unet"),
    ("base_model.model.", None),
)
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)$")


@dataclass(frozen=True)
class ParsedKey:
    module: str  # kohya module name, or "<component>:<module path>" for diffusers/peft keys
    role: str
    component: str | None = None  # diffusers/peft only; None = to be found by path
    path: str | None = None


def is_kohya_key(key: str) -> bool:
    return key.startswith(KOHYA_PREFIXES)


def parse_kohya(key: str) -> ParsedKey | None:
    """``lora_unet_x.lora_down.weight`` -> (``lora_unet_x``, ``down``); None if the role is foreign."""
    module, _, role = key.partition(".")
    if role in KOHYA_ROLES:
        return ParsedKey(module, KOHYA_ROLES[role])
    if role in UNSUPPORTED_ROLES:
        return ParsedKey(module, role)
    return None


def parse_diffusers(key: str) -> ParsedKey | None:
    """``unet.down_blocks.0...to_q.lora_A.weight`` -> module path and role; None if not a LoRA key."""
    match = next(((s, r) for s, r in _DIFFUSERS_SUFFIXES if key.endswith(s)), None)
    if match is None:
        return None
    suffix, role = match
    rest = key[: -len(suffix)]
    component = None
    for prefix, name in _COMPONENT_PREFIXES:
        if rest.startswith(prefix):
            rest, component = rest[len(prefix) :], name
            break
    if not rest.strip("."):
        return None  # a bare suffix names no module: reported as a foreign key instead
    if m := _PROCESSOR.search(rest):
        target = "to_out.0" if m[1] == "to_out" else m[1]
        rest = rest[: m.start()] + "." + target
    return ParsedKey(f"{component or '?'}:{rest}", role, component, rest)

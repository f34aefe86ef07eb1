"""``ModelFamily``: the ids of the built-in families, kept so existing code need not change.

``ModelFamily.SDXL`` *is* the SDXL ``Family`` object (``studio/families/sdxl``), so
``family is ModelFamily.SDXL`` and ``family.text_encoder_names`` work as they did when this
was an enum; ``ModelFamily("sd1")`` looks an id up in the registry (registered families
included) and ``list(ModelFamily)`` gives the three built-in ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from studio.families import SD1, SD2, SDXL, Family, detect_family, get_family

__all__ = ["Family", "ModelFamily", "detect_family", "prediction_type"]


class _BuiltinIds(type):
    def __call__(cls, value: Family | str) -> Family:  # type: ignore[override]
        return get_family(value)

    def __iter__(cls) -> Iterator[Family]:
        return iter((SD1, SD2, SDXL))

    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, Family)


class ModelFamily(metaclass=_BuiltinIds):
    SD1 = SD1
    SD2 = SD2
    SDXL = SDXL


def prediction_type(scheduler_config: Any) -> str:
    """``epsilon`` or ``v_prediction``, as the base's scheduler config says (SD 2.x 768 is v)."""
    value = getattr(scheduler_config, "prediction_type", None) or scheduler_config.get("prediction_type")
    return value or "epsilon"


def stated_prediction(tensor_names: Any, metadata: dict[str, str]) -> tuple[str | None, bool]:
    """``(prediction type, zero terminal SNR)`` a single-file checkpoint states: a ``v_pred``
    (and ``ztsnr``) marker tensor as NoobAI-style v-pred checkpoints carry (ComfyUI reads the same
    keys), or ``modelspec.prediction_type`` / ``ss_base_model_version``; None when it says nothing."""
    ztsnr = "ztsnr" in tensor_names or metadata.get("ss_zero_terminal_snr") == "True"
    if "v_pred" in tensor_names:
        return "v_prediction", ztsnr
    declared = metadata.get("modelspec.prediction_type")
    if declared in ("v", "v_prediction") or metadata.get("ss_base_model_version") == "sd_v2_v":
        return "v_prediction", ztsnr
    if declared == "epsilon":
        return "epsilon", ztsnr
    return None, ztsnr

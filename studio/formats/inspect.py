"""What is in a LoRA file, ours or anyone's: format, base family, modules, ranks, alphas, metadata.

Everything is read from the validated header (names, dtypes, shapes) plus the few scalar
``alpha`` tensors, so inspecting a 1 GB file is instant and a hostile one cannot run code.
The family comes from the file's structure where it can (cross-attention width, text-encoder
width, SDXL-only names) and from the metadata otherwise; when the two disagree the report
says so, since that is exactly why AUTOMATIC1111 hides a LoRA under the wrong base.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors import safe_open

from studio.adapters.family import metadata_family
from studio.errors import StudioError
from studio.formats.safetensors_io import read_header

# Dot-separated key segments that start the parameter part of a key (the rest is the module).
_PARAM_SEGMENTS = {
    "lora_down", "lora_up", "lora_mid", "lora_A", "lora_B", "lora", "lora_linear_layer",
    "alpha", "dora_scale", "lora_magnitude_vector", "scale", "diff", "diff_b",
}  # fmt: skip
_DOWN_PARAMS = ("lora_down.weight", "lora_A.weight", "lora.down.weight", "lora_linear_layer.down.weight")
_COMPONENT_PREFIXES = (
    ("lora_unet_", "unet"), ("lora_te1_", "te1"), ("lora_te2_", "te2"), ("lora_te_", "te"),
    ("unet.", "unet"), ("text_encoder_2.", "te2"), ("text_encoder.", "te"),
)  # fmt: skip
_CROSS_ATTN_WIDTH = {768: "SD1", 1024: "SD2", 2048: "SDXL"}  # text width the UNet attends to
_TE_WIDTH = {1024: "SD2", 1280: "SDXL"}  # 768 (CLIP-L) is SD 1.x or SDXL's te1: no evidence alone
_LONG = 120

Params = dict[str, dict[str, list[int]]]  # module -> {parameter name: shape}


@dataclass
class LoraReport:
    path: str
    file_size: int
    format: str
    family: str  # SD1, SD2, SDXL or unknown
    family_evidence: str
    modules: dict[str, int]  # component (unet, te, te1, te2, other) -> module count
    ranks: list[int]
    alphas: list[float]
    dtypes: dict[str, int]  # safetensors dtype -> tensor count
    tensor_count: int
    metadata: dict[str, str] = field(default_factory=dict)
    top_tags: list[tuple[str, int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def split_key(key: str) -> tuple[str, str]:
    """``(module, parameter)``: ``lora_unet_x.lora_down.weight`` -> ``lora_unet_x``, ``lora_down.weight``."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        part = parts[i]
        if part in _PARAM_SEGMENTS or part.startswith(("hada_", "lokr_")):
            return ".".join(parts[:i]), ".".join(parts[i:])
        if part.endswith("_lora"):  # old diffusers attention processors: ``to_q_lora.down.weight``
            return ".".join([*parts[:i], part[: -len("_lora")]]), ".".join(["lora", *parts[i + 1 :]])
    return key, ""


def _component(module: str) -> str:
    for prefix, component in _COMPONENT_PREFIXES:
        if module.startswith(prefix):
            return component
    return "other"


def detect_format(params: Params) -> str:
    """The adapter type, from which parameter names (and conv kernel sizes) the file has."""
    names = {name for shapes in params.values() for name in shapes}
    if any(name.startswith("hada_") for name in names):
        kind = "LyCORIS LoHa"
    elif any(name.startswith("lokr_") for name in names):
        kind = "LyCORIS LoKr"
    elif "lora_down.weight" in names:
        downs = [shapes["lora_down.weight"] for shapes in params.values() if "lora_down.weight" in shapes]
        locon = any(len(shape) == 4 and shape[2:] != [1, 1] for shape in downs)
        kind = "LoCon (kohya/LyCORIS)" if locon else "kohya LoRA"
    elif any(name.startswith(("lora.down", "lora_linear_layer")) for name in names):
        kind = "diffusers (legacy)"
    elif any(name.startswith("lora_A") for name in names):
        kind = "peft"
    else:
        return "unknown"
    if any(name.startswith(("dora_scale", "lora_magnitude_vector")) for name in names):
        return f"DoRA ({kind})"
    return kind


def _in_features(params: Params, modules: dict[str, str], needles: tuple[str, ...]) -> int | None:
    """Input width of the first module whose name contains a needle, from its down factor."""
    for module in modules:
        if not any(needle in module for needle in needles):
            continue
        for param in (*_DOWN_PARAMS, "hada_w1_b"):
            shape = params[module].get(param)
            if shape and len(shape) >= 2:
                return shape[1]
    return None


def _family_from_structure(params: Params, modules: dict[str, str]) -> tuple[str, str] | None:
    width = _in_features(params, modules, ("attn2_to_k", "attn2.to_k", "attn2.processor.to_k"))
    if width in _CROSS_ATTN_WIDTH:
        return _CROSS_ATTN_WIDTH[width], f"cross-attention width {width}"
    if "te2" in modules.values():
        return "SDXL", "second text encoder"
    if any(
        block in module for module in modules for block in ("input_blocks", "middle_block", "output_blocks")
    ):
        return "SDXL", "SGM block names"
    te_modules = {m: c for m, c in modules.items() if c in ("te", "te1")}
    width = _in_features(params, te_modules, ("q_proj",))
    if width in _TE_WIDTH:
        return _TE_WIDTH[width], f"text-encoder width {width}"
    return None


def guess_family(params: Params, modules: dict[str, str], metadata: dict[str, str]) -> tuple[str, str]:
    """``(family, evidence)``; the file's structure wins over what its metadata claims."""
    structure = _family_from_structure(params, modules)
    found = metadata_family(metadata)
    declared = (found[0].value.upper(), found[1]) if found else None
    if structure and declared and structure[0] != declared[0]:
        return structure[0], f"{structure[1]}; metadata ({declared[1]}) says {declared[0]}"
    if structure:
        return structure[0], structure[1] + (f", {declared[1]}" if declared else "")
    if declared:
        return declared
    return "unknown", "no metadata or recognisable layer"


def _scalars(path: Path, keys: list[str]) -> list[float]:
    values: set[float] = set()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            for key in keys:
                tensor = fh.get_tensor(key)
                if tensor.numel() == 1:
                    values.add(round(float(tensor.float().item()), 6))
    except Exception as exc:  # safetensors raises its own opaque error types
        raise StudioError(f"could not read alpha values ({exc})", path=path) from None
    return sorted(values)


def _config_alphas(metadata: dict[str, str]) -> list[float]:
    """Alphas a diffusers/peft file keeps in ``lora_adapter_metadata`` (no alpha tensors there)."""
    try:
        config = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    except json.JSONDecodeError:
        return []
    if not isinstance(config, dict):
        return []
    values = set()
    for key, value in config.items():
        if key.endswith(".lora_alpha") and isinstance(value, (int, float)):
            values.add(float(value))
        elif key.endswith(".alpha_pattern") and isinstance(value, dict):
            values.update(float(v) for v in value.values() if isinstance(v, (int, float)))
    return sorted(values)


def top_tags(metadata: dict[str, str], count: int = 10) -> list[tuple[str, int]]:
    """Most frequent training tags over all folders of ``ss_tag_frequency``."""
    try:
        frequency = json.loads(metadata.get("ss_tag_frequency", "{}"))
    except json.JSONDecodeError:
        return []
    totals: Counter[str] = Counter()
    if isinstance(frequency, dict):
        for tags in frequency.values():
            if isinstance(tags, dict):
                totals.update({str(tag): int(n) for tag, n in tags.items() if isinstance(n, (int, float))})
    return totals.most_common(count)


def inspect_file(path: str | Path) -> LoraReport:
    """Inspect any LoRA ``.safetensors`` file; bad input raises a one-line StudioError."""
    path = Path(path)
    try:
        header, size = read_header(path), path.stat().st_size
    except OSError as exc:  # unreadable (permissions, I/O error): the user's to fix, not a bug
        raise StudioError(f"cannot read the file ({exc.strerror or exc})", path=path) from None
    params: Params = {}
    for key, info in header.tensors.items():
        module, param = split_key(key)
        params.setdefault(module, {})[param] = info["shape"]
    modules = {module: _component(module) for module, shapes in params.items() if set(shapes) != {""}}
    family, evidence = guess_family(params, modules, header.metadata)
    if family == "SDXL":
        modules = {module: "te1" if component == "te" else component for module, component in modules.items()}

    ranks = set()
    for module in modules:
        for param in (*_DOWN_PARAMS, "hada_w1_b", "lokr_w1_b", "lokr_w2_b"):
            shape = params[module].get(param)
            if shape:
                ranks.add(shape[0])
                break
    alpha_keys = [key for key in header.tensors if key.endswith(".alpha")]
    alphas = _scalars(path, alpha_keys) if alpha_keys else _config_alphas(header.metadata)
    return LoraReport(
        path=str(path),
        file_size=size,
        format=detect_format(params),
        family=family,
        family_evidence=evidence,
        modules=dict(sorted(Counter(modules.values()).items())),
        ranks=sorted(ranks),
        alphas=alphas,
        dtypes=dict(sorted(Counter(info["dtype"] for info in header.tensors.values()).items())),
        tensor_count=len(header.tensors),
        metadata=dict(sorted(header.metadata.items())),
        top_tags=top_tags(header.metadata),
    )


def _short(value: str, limit: int = _LONG) -> str:
    if value.startswith(("{", "[")):
        with contextlib.suppress(json.JSONDecodeError):
            value = json.dumps(json.loads(value), separators=(",", ":"), ensure_ascii=False)
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def _range(values: list) -> str:
    if not values:
        return "none"
    if len(values) <= 4:
        return ", ".join(f"{v:g}" for v in values)
    return f"{min(values):g}–{max(values):g} ({len(values)} distinct)"


def format_report(report: LoraReport) -> str:
    """The human-readable report ``studio inspect`` prints."""
    total = sum(report.modules.values())
    lines = [
        f"file:     {report.path} ({_size(report.file_size)})",
        f"format:   {report.format}",
        f"base:     {report.family} ({report.family_evidence})",
        f"modules:  {total}"
        + (f" ({', '.join(f'{c} {n}' for c, n in report.modules.items())})" if total else ""),
        f"rank:     {_range(report.ranks)}",
        f"alpha:    {_range(report.alphas) if report.alphas else 'none (scale 1: alpha = rank)'}",
        f"dtype:    {', '.join(f'{d} ×{n}' for d, n in report.dtypes.items()) or 'none'}",
        f"tensors:  {report.tensor_count}",
    ]
    if report.top_tags:
        lines.append("top tags: " + ", ".join(f"{_short(tag, 40)} ({n})" for tag, n in report.top_tags))
    lines.append(f"metadata: {len(report.metadata) or 'none'}" + (" keys" if report.metadata else ""))
    width = max((len(key) for key in report.metadata), default=0)
    for key, value in report.metadata.items():
        shown = "(summarised as top tags above)" if key == "ss_tag_frequency" and report.top_tags else value
        lines.append(f"  {key.ljust(width)}  {_short(shown)}")
    return "\n".join(lines)

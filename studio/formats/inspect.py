"""What is in a LoRA file, ours or anyone's: format, base family, modules, ranks, alphas, metadata.

Everything is read from the validated header (names, dtypes, shapes) plus the few scalar
``alpha`` tensors, so inspecting a 1 GB file is instant and a hostile one cannot run code.
The family comes from the file's structure where it can (cross-attention width, text-encoder
width, SDXL-only names, Flux's and SD3's original block names) and from the metadata otherwise; when the two disagree the report
says so, since that is exactly why AUTOMATIC1111 hides a LoRA under the wrong base.
Tensor names are read with ``studio.formats.keys``, the grammar the adapter loader uses, so
a module inspect counts is one the loader sees.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors import safe_open

from studio.errors import StudioError
from studio.families import get_family
from studio.formats.family import metadata_family
from studio.formats.flow_names import block_of, flow_family_id
from studio.formats.keys import KOHYA, TensorKey, parse_key
from studio.formats.safetensors_io import read_header

_RANK_ROLES = ("down", "hada_w1_b", "lokr_w1_b", "lokr_w2_b")  # first dim = rank, first found wins
_LABELS = {"unet": "unet", "text_encoder": "te", "text_encoder_2": "te2"}  # te1 once the file is SDXL
_CROSS_ATTN_WIDTH = {768: "SD1", 1024: "SD2", 2048: "SDXL"}  # text width the UNet attends to
_TE_WIDTH = {1024: "SD2", 1280: "SDXL"}  # 768 (CLIP-L) is SD 1.x or SDXL's te1: no evidence alone
_LONG = 120
_FLOW = {"FLUX": "flux", "SD3": "sd3"}  # report name -> family id


@dataclass
class _Module:
    """One adapted module of the file: how its first tensor parsed, and every role's shape."""

    key: TensorKey
    shapes: dict[str, list[int]] = field(default_factory=dict)

    @property
    def shown_component(self) -> str:
        if self.key.component is None and self.key.module.startswith("transformer."):
            return "transformer"  # a diffusers SD3.5 / Flux file
        return _LABELS.get(self.key.component or "", "other")


@dataclass
class LoraReport:
    path: str
    file_size: int
    format: str
    family: str  # SD1, SD2, SDXL, SD3, FLUX or unknown
    family_evidence: str
    modules: dict[str, int]  # component (unet, transformer, te, te1, te2, other) -> module count
    ranks: list[int]
    alphas: list[float]
    dtypes: dict[str, int]  # safetensors dtype -> tensor count
    tensor_count: int
    metadata: dict[str, str] = field(default_factory=dict)
    top_tags: list[tuple[str, int]] = field(default_factory=list)
    blocks: dict[str, list[int]] = field(default_factory=dict)  # SD3.5/Flux: block list -> numbers present
    absent_blocks: list[str] = field(default_factory=list)  # gaps in them: "double_blocks 3-5"
    fused_ranks: list[int] = field(
        default_factory=list
    )  # SD3.5/Flux kohya qkv / linear1 modules (not in ranks)

    def to_dict(self) -> dict:
        return asdict(self)


def detect_format(parsed: list[tuple[TensorKey, list[int]]]) -> str:
    """The adapter type, from the tensors' roles, naming and (for LoCon) conv kernel sizes."""
    roles = {key.role for key, _ in parsed}
    factors = [(key, shape) for key, shape in parsed if key.role in ("down", "up")]
    if any(role.startswith("hada_") for role in roles):
        kind = "LyCORIS LoHa"
    elif any(role.startswith("lokr_") for role in roles):
        kind = "LyCORIS LoKr"
    elif any(key.convention == KOHYA for key, _ in factors):
        downs = [shape for key, shape in factors if key.convention == KOHYA and key.role == "down"]
        locon = any(len(shape) == 4 and shape[2:] != [1, 1] for shape in downs)
        kind = "LoCon (kohya/LyCORIS)" if locon else "kohya LoRA"
    elif any(key.legacy for key, _ in factors):
        kind = "diffusers (legacy)"
    elif factors:
        kind = "peft"
    elif "diff" in roles:
        kind = "LyCORIS full"
    else:
        return "unknown"
    if roles & {"dora_scale", "lora_magnitude_vector"}:
        return f"DoRA ({kind})"
    return kind


def _in_features(modules: list[_Module], needles: tuple[str, ...]) -> int | None:
    """Input width of the first module whose name contains a needle, from its down factor."""
    for module in modules:
        if not any(needle in module.key.module for needle in needles):
            continue
        for role in ("down", "hada_w1_b"):
            shape = module.shapes.get(role)
            if shape and len(shape) >= 2:
                return shape[1]
    return None


def _family_from_structure(modules: list[_Module]) -> tuple[str, str] | None:
    flow = next((found for module in modules if (found := flow_family_id(module.key.module))), None)
    if flow:
        return flow.upper(), f"{get_family(flow).display_name} block names"
    if any(module.shown_component == "transformer" for module in modules):
        return None  # SD3.5 or Flux: names both share; the metadata says which
    width = _in_features(modules, ("attn2_to_k", "attn2.to_k"))
    if width in _CROSS_ATTN_WIDTH:
        return _CROSS_ATTN_WIDTH[width], f"cross-attention width {width}"
    if any(module.key.component == "text_encoder_2" for module in modules):
        return "SDXL", "second text encoder"
    sgm_blocks = ("input_blocks", "middle_block", "output_blocks")
    if any(block in module.key.module for module in modules for block in sgm_blocks):
        return "SDXL", "SGM block names"
    te_modules = [module for module in modules if module.key.component == "text_encoder"]
    width = _in_features(te_modules, ("q_proj",))
    if width in _TE_WIDTH:
        return _TE_WIDTH[width], f"text-encoder width {width}"
    return None


def guess_family(modules: list[_Module], metadata: dict[str, str]) -> tuple[str, str]:
    """``(family, evidence)``; the file's structure wins over what its metadata claims."""
    structure = _family_from_structure(modules)
    found = metadata_family(metadata)
    declared = (found[0].value.upper(), found[1]) if found else None
    if structure and declared and structure[0] != declared[0]:
        return structure[0], f"{structure[1]}; metadata ({declared[1]}) says {declared[0]}"
    if structure:
        return structure[0], structure[1] + (f", {declared[1]}" if declared else "")
    if declared:
        return declared
    return "unknown", "no metadata or recognisable layer"


def _rank(module: _Module) -> int | None:
    shape = next((module.shapes[role] for role in _RANK_ROLES if module.shapes.get(role)), None)
    return shape[0] if shape else None


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


def flow_blocks(modules: dict[str, _Module], family_id: str) -> dict[str, list[int]]:
    """Block list (``double_blocks``, ``single_blocks``, ``joint_blocks``) -> the numbers the file adapts."""
    found: dict[str, set[int]] = {}
    for module in modules.values():
        if block := block_of(module.key.module, family_id):
            found.setdefault(block[0], set()).add(block[1])
    return {name: sorted(numbers) for name, numbers in sorted(found.items())}


def _spans(numbers: list[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"``."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)


def absent_blocks(blocks: dict[str, list[int]]) -> list[str]:
    """Gaps below each list's highest adapted block (``"double_blocks 3-5"``): a report, not an error,
    since a file may adapt only some blocks on purpose (sd-scripts' train_double_block_indices)."""
    gaps = {name: sorted(set(range(numbers[-1] + 1)) - set(numbers)) for name, numbers in blocks.items()}
    return [f"{name} {_spans(missing)}" for name, missing in gaps.items() if missing]


def inspect_file(path: str | Path) -> LoraReport:
    """Inspect any LoRA ``.safetensors`` file; bad input raises a one-line StudioError."""
    path = Path(path)
    try:
        header, size = read_header(path), path.stat().st_size
    except OSError as exc:  # unreadable (permissions, I/O error): the user's to fix, not a bug
        raise StudioError(f"cannot read the file ({exc.strerror or exc})", path=path) from None
    parsed = [(name, key, info) for name, info in header.tensors.items() if (key := parse_key(name))]
    modules: dict[str, _Module] = {}
    for _, key, info in parsed:
        modules.setdefault(key.label, _Module(key)).shapes[key.role] = info["shape"]
    family, evidence = guess_family(list(modules.values()), header.metadata)
    labels = Counter(module.shown_component for module in modules.values())
    if family in ("SDXL", *_FLOW) and "te" in labels:
        labels["te1"] = labels.pop("te")  # sd-scripts' lora_te1: CLIP-L
    if family in _FLOW and "unet" in labels:
        labels["transformer"] = labels.get("transformer", 0) + labels.pop("unet")  # lora_unet_ names it
    blocks = flow_blocks(modules, _FLOW[family]) if family in _FLOW else {}
    # A fused kohya module (q, k, v [, MLP] in one) has the parts' ranks summed when written block-diagonally.
    fused = {name for name in modules if family in _FLOW and name.endswith(("_qkv", "_linear1"))}
    ranks = {rank for name, module in modules.items() if name not in fused and (rank := _rank(module))}
    fused_ranks = {rank for name in fused if (rank := _rank(modules[name]))}
    alpha_keys = [name for name, key, _ in parsed if key.role == "alpha"]
    alphas = _scalars(path, alpha_keys) if alpha_keys else _config_alphas(header.metadata)
    return LoraReport(
        path=str(path),
        file_size=size,
        format=detect_format([(key, info["shape"]) for _, key, info in parsed]),
        family=family,
        family_evidence=evidence,
        modules=dict(sorted(labels.items())),
        ranks=sorted(ranks),
        fused_ranks=sorted(fused_ranks),
        alphas=alphas,
        dtypes=dict(sorted(Counter(info["dtype"] for info in header.tensors.values()).items())),
        tensor_count=len(header.tensors),
        metadata=dict(sorted(header.metadata.items())),
        top_tags=top_tags(header.metadata),
        blocks=blocks,
        absent_blocks=absent_blocks(blocks),
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
        *(
            [f"blocks:   {'; '.join(f'{name} {_spans(ns)}' for name, ns in report.blocks.items())}"]
            if report.blocks
            else []
        ),
        *([f"absent:   {'; '.join(report.absent_blocks)}"] if report.absent_blocks else []),
        f"rank:     {_range(report.ranks)}"
        + (f" (fused qkv / linear1 modules: {_range(report.fused_ranks)})" if report.fused_ranks else ""),
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

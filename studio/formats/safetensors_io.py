"""Reading and writing ``.safetensors`` without trusting the file, and refusing pickles.

The header is parsed and checked by hand before safetensors touches the data, so a
truncated or hostile file gets a one-line reason naming it instead of a traceback
from deep inside a loader. Pickle formats (``.ckpt``, ``.pt``, ``.bin``...) are never
opened: unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from studio.atomic import write_bytes
from studio.errors import StudioError, UnsafeFileError

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}
_MAX_HEADER = 100 * 1024 * 1024
_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, dict]  # name -> {"dtype", "shape", "data_offsets"}
    metadata: dict[str, str]
    data_start: int  # byte offset of the data section


def refuse_pickle(path: str | Path) -> None:
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeFileError(
            f"refusing to open a pickle file ({path.suffix}): loading it could run arbitrary code",
            path=path,
            hint="convert it to .safetensors with a tool you trust, or use the model's diffusers folder",
        )


def read_header(path: str | Path) -> SafetensorsHeader:
    """Parse and validate the header of a safetensors file."""
    path = Path(path)
    refuse_pickle(path)
    if path.is_dir():
        raise StudioError("is a folder, not a .safetensors file", path=path)
    if not path.is_file():
        raise StudioError("file not found", path=path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw_len = fh.read(8)
        if len(raw_len) < 8:
            raise StudioError("not a safetensors file (shorter than 8 bytes)", path=path)
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > min(_MAX_HEADER, size - 8):
            raise StudioError(
                "corrupt safetensors header: its length runs past the end of the file", path=path
            )
        try:
            header = json.loads(fh.read(header_len))
        except json.JSONDecodeError as exc:
            raise StudioError(f"corrupt safetensors header: not valid JSON ({exc.msg})", path=path) from None
        except UnicodeDecodeError:
            raise StudioError("corrupt safetensors header: not UTF-8 text", path=path) from None
    if not isinstance(header, dict):
        raise StudioError("corrupt safetensors header: not a JSON object", path=path)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise StudioError("corrupt safetensors header: __metadata__ is not an object", path=path)
    data_len = size - 8 - header_len
    spans = []
    for name, info in header.items():
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            numel = 1
            for dim in shape:
                if not isinstance(dim, int) or dim < 0:
                    raise ValueError
                numel *= dim
            expected = numel * _DTYPE_SIZES[dtype]
        except (KeyError, TypeError, ValueError):
            raise StudioError(
                f"corrupt safetensors header: bad entry for tensor {name!r}", path=path
            ) from None
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= data_len):
            raise StudioError(f"corrupt safetensors file: tensor {name!r} lies outside the data", path=path)
        if end - start != expected:
            raise StudioError(f"corrupt safetensors file: tensor {name!r} has the wrong byte size", path=path)
        spans.append((start, end, name))
    spans.sort()
    for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:]):
        if start_b < end_a:
            raise StudioError(f"corrupt safetensors file: tensors {a!r} and {b!r} overlap", path=path)
    return SafetensorsHeader(header, {str(k): str(v) for k, v in metadata.items()}, 8 + header_len)


def load_tensors(path: str | Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a validated safetensors file."""
    header = read_header(path)
    try:
        tensors = load_file(str(path), device=device)
    except Exception as exc:  # safetensors raises its own opaque error types
        raise StudioError(f"could not read safetensors data ({exc})", path=path) from None
    return tensors, header.metadata


def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write atomically: a crash leaves the previous file (if any) intact."""
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    write_bytes(path, data)


def data_section_sha256(path: str | Path) -> str:
    """sha256 of the bytes after the header: kohya's ``sshs_model_hash`` / A1111's addnet hash."""
    import hashlib

    header = read_header(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(header.data_start)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

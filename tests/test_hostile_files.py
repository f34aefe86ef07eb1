"""Hostile model and adapter files: each gets a clear refusal naming the file; none is unpickled.

The files are built here byte by byte from a valid kohya file, so every case is one
precise defect: a header length past the end, broken JSON, offsets out of range or
overlapping, a tensor of the wrong dtype or shape for the base, NaN/Inf values, a pickle.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from test_adapters_support import make_kohya, tiny

from studio.adapters import load_adapter
from studio.cli import main
from studio.errors import StudioError, UnsafeFileError
from studio.formats.inspect import inspect_file
from studio.models.family import ModelFamily
from studio.models.loader import load_base

SD1 = ModelFamily.SD1


@pytest.fixture(scope="module")
def sd1():
    return tiny("sd1")


@pytest.fixture(scope="module")
def good(sd1, tmp_path_factory) -> Path:
    return make_kohya(tmp_path_factory.mktemp("good") / "good.safetensors", sd1, "sd1", seed=1, te=False)


def split(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def join(header: dict | bytes, body: bytes, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


def first_tensor(header: dict) -> str:
    return sorted(name for name in header if name.endswith("lora_down.weight"))[0]


def _length_past_end(header, body):
    return join(header, body, length=10**9)


def _bad_json(header, body):
    raw = json.dumps(header).encode()
    return join(raw[:-5] + b"!!!!!", body)


def _out_of_range(header, body):
    name = first_tensor(header)
    start, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [len(body) - 4, len(body) - 4 + (end - start)]
    return join(header, body)


def _overlap(header, body):
    names = sorted((info["data_offsets"][0], name) for name, info in header.items() if name != "__metadata__")
    (_, first), (_, second) = names[0], names[1]
    size = header[second]["data_offsets"][1] - header[second]["data_offsets"][0]
    start = header[first]["data_offsets"][0]
    header[second]["data_offsets"] = [start, start + size]
    return join(header, body)


def _negative_dim(header, body):
    header[first_tensor(header)]["shape"] = [-1, 4]
    return join(header, body)


def _unknown_dtype(header, body):
    header[first_tensor(header)]["dtype"] = "Q128"
    return join(header, body)


def _truncated(header, body):
    return join(header, body[: len(body) // 2])


HEADER_DEFECTS = {
    "header length past the end": (_length_past_end, "past the end"),
    "malformed header JSON": (_bad_json, "not valid JSON"),
    "offset out of range": (_out_of_range, "outside the data"),
    "overlapping offsets": (_overlap, "overlap"),
    "negative dimension": (_negative_dim, "bad entry"),
    "unknown dtype": (_unknown_dtype, "bad entry"),
    "truncated data": (_truncated, "outside the data"),
}


@pytest.mark.parametrize("defect", sorted(HEADER_DEFECTS))
def test_damaged_safetensors_are_refused_by_every_reader(defect, good, sd1, tmp_path, capsys):
    make, expected = HEADER_DEFECTS[defect]
    header, body = split(good)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(make(header, body))
    before = path.read_bytes()
    with pytest.raises(StudioError, match=expected) as info:
        load_adapter(path, sd1.components, SD1)
    assert str(path) in str(info.value)
    with pytest.raises(StudioError, match=expected):
        inspect_file(path)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err
    assert path.read_bytes() == before  # refused, never "repaired" in place


def _retyped(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    name = sorted(k for k in tensors if k.endswith("lora_down.weight"))[0]
    tensors[name] = (tensors[name] * 100).to(torch.int32)
    return tensors


def _reshaped(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    name = sorted(k for k in tensors if k.endswith("lora_down.weight"))[0]
    tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1] + 3)
    return tensors


def _poisoned(value: float):
    def poison(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        name = sorted(k for k in tensors if k.endswith("lora_up.weight"))[-1]
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = value
        return tensors

    return poison


VALUE_DEFECTS = {
    "integer dtype": (_retyped, "not a float type"),
    "wrong shape for the base": (_reshaped, "shape mismatch"),
    "NaN": (_poisoned(float("nan")), "NaN or infinite"),
    "Inf": (_poisoned(float("inf")), "NaN or infinite"),
}


@pytest.mark.parametrize("defect", sorted(VALUE_DEFECTS))
def test_well_formed_files_with_bad_values_are_refused(defect, good, sd1, tmp_path):
    from safetensors.torch import load_file, save_file

    make, expected = VALUE_DEFECTS[defect]
    path = tmp_path / "bad.safetensors"
    save_file(make(load_file(str(good))), str(path))
    weights = {n: p.detach().clone() for n, p in sd1.unet.named_parameters()}
    with pytest.raises(StudioError, match=expected) as info:
        load_adapter(path, sd1.components, SD1)
    assert str(path) in str(info.value)
    assert all(torch.equal(p, weights[n]) for n, p in sd1.unet.named_parameters())  # base untouched


class _Boom:
    """Unpickling this would create a file: proof that a reader ran pickle."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickles_are_never_unpickled_anywhere(suffix, sd1, tmp_path, capsys):
    marker = tmp_path / "pickle-ran"
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps(_Boom(str(marker))))
    with pytest.raises(UnsafeFileError):
        load_adapter(path, sd1.components, SD1)
    with pytest.raises(UnsafeFileError):
        load_base(path)
    with pytest.raises(UnsafeFileError):
        inspect_file(path)
    out = tmp_path / "x.safetensors"
    for argv in (
        ["inspect", str(path)],
        ["generate", "a circle", "--lora", f"{path}:1", "--out", str(out), "--steps", "1"],
        ["train", str(tmp_path), "--base", str(path), "--output", str(out)],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "pickle" in err and "Traceback" not in err
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the file really was a working pickle payload
    assert marker.exists()


def test_a_diffusers_folder_with_pickled_weights_is_refused(tmp_path):
    folder = tmp_path / "bin-model"
    tiny("sd1").save_pretrained(folder, safe_serialization=False)
    assert (folder / "unet" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(StudioError, match="only .safetensors") as info:
        load_base(folder)
    assert str(folder) in str(info.value)

"""Property tests: the file reader, key mapper and caption/dataset parsers never crash.

Whatever bytes or names arrive, the only exception that may escape is the project's own
``StudioError`` (which the CLI and app turn into a one-line message); anything else
would be a traceback in front of the user.
"""

from __future__ import annotations

import json
import random
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_adapters_support import make_kohya, tiny

from studio.adapters import load_adapter
from studio.adapters.resolve import ModuleResolver
from studio.data.captions import MetadataCaptions, read_sidecar, with_trigger
from studio.data.dataset import DatasetConfig, scan_dataset
from studio.data.training import shuffle_tags
from studio.errors import DatasetError, StudioError
from studio.formats.inspect import inspect_file
from studio.formats.keys import KOHYA_ROLES, parse_key
from studio.formats.safetensors_io import read_header
from studio.models.family import ModelFamily

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def sd1():
    return tiny("sd1")


@pytest.fixture(scope="module")
def good_bytes(sd1, tmp_path_factory) -> bytes:
    path = make_kohya(tmp_path_factory.mktemp("fuzz") / "good.safetensors", sd1, "sd1", seed=3, te=False)
    return path.read_bytes()


def _only_studio_errors(action, *args) -> None:
    try:
        action(*args)
    except StudioError as exc:
        assert str(exc)  # a message the user can read


@FUZZ
@given(data=st.data())
def test_mutated_lora_files_only_raise_studio_errors(data, good_bytes, sd1):
    raw = bytearray(good_bytes)
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del raw[at : at + data.draw(st.integers(1, 64))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        if not raw:
            break
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzzed.safetensors"
        path.write_bytes(bytes(raw))
        _only_studio_errors(load_adapter, path, sd1.components, ModelFamily.SD1)
        _only_studio_errors(inspect_file, path)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(header=st.dictionaries(st.text(max_size=30), _JSON, max_size=5), body=st.binary(max_size=64))
def test_arbitrary_headers_only_raise_studio_errors(header, body):
    raw = json.dumps(header).encode()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzzed.safetensors"
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
        _only_studio_errors(read_header, path)
        _only_studio_errors(inspect_file, path)


_NAME_PARTS = st.sampled_from(
    ["lora_unet", "lora_te", "lora_te1", "lora_te2", "unet", "text_encoder", "down_blocks", "0", "1",
     "attentions", "transformer_blocks", "attn1", "attn2", "to_q", "to_out", "proj_in", "text_model",
     "encoder", "layers", "self_attn", "q_proj", "mlp", "fc1", "input_blocks", "4", "", "x", ".", "_"]
)  # fmt: skip
_ROLES = st.sampled_from([*KOHYA_ROLES, "lora_A.weight", "lora_B.weight", "dora_scale", "weight", "nope"])


@FUZZ
@given(
    parts=st.lists(_NAME_PARTS, max_size=10),
    sep=st.sampled_from(["_", "."]),
    role=_ROLES,
    noise=st.text(max_size=6),
)
def test_key_mapper_never_crashes(parts, sep, role, noise, sd1):
    resolver = _resolver(sd1)
    name = sep.join(parts) + noise
    for key in (f"{name}.{role}", name, noise):
        parsed = parse_key(key)
        if parsed is not None:
            assert parsed.module.strip(".") and parsed.role
        assert resolver.kohya_ref(name) is None or resolver.kohya_ref(name).module is not None
        resolver.path_ref(None, name.replace("_", "."))


_RESOLVERS: dict[int, ModuleResolver] = {}


def _resolver(pipe) -> ModuleResolver:
    if id(pipe) not in _RESOLVERS:
        _RESOLVERS[id(pipe)] = ModuleResolver(pipe.components, ModelFamily.SD1)
    return _RESOLVERS[id(pipe)]


@FUZZ
@given(
    sidecar=st.binary(max_size=300),
    jsonl=st.binary(max_size=300),
    csv=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)),
    trigger=st.one_of(st.none(), st.text(max_size=12)),
    keep=st.integers(0, 5),
)
def test_caption_parsers_never_crash(sidecar, jsonl, csv, trigger, keep):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        image = root / "a.png"
        image.write_bytes(b"")
        (root / "a.txt").write_bytes(sidecar)
        (root / "metadata.jsonl").write_bytes(jsonl)
        (root / "metadata.csv").write_bytes(csv)
        caption, _ = read_sidecar(image, root.resolve())
        table = MetadataCaptions(root, root.resolve())
        found = caption or table.lookup(image)
        text = with_trigger(found.text if found else "", trigger)
        assert not trigger or not trigger.strip() or trigger.lower() in text.lower()
        before = [tag.strip() for tag in text.split(",") if tag.strip()]
        after = [tag.strip() for tag in shuffle_tags(text, keep, random.Random(0)).split(",") if tag.strip()]
        assert sorted(after) == sorted(before) and after[:keep] == before[:keep]


_FILE_NAMES = st.text(
    alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=["Cs"]), min_size=1, max_size=12
).filter(lambda n: n not in (".", ".."))


@settings(max_examples=40, deadline=None)
@given(
    files=st.lists(
        st.tuples(
            st.sampled_from(["", "3_style/", "0_off/", "x_y/", "deep/er/"]),
            _FILE_NAMES,
            st.sampled_from([".png", ".JPG", ".webp", ".txt", ".caption", ".gif"]),
            st.binary(max_size=200),
        ),
        max_size=6,
    )
)
def test_dataset_scan_reports_instead_of_crashing(files):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for sub, stem, suffix, data in files:
            path = root / sub / f"{stem}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                path.write_bytes(data)
            except OSError:  # a name the file system refuses (too long, reserved) is not our input
                continue
        dataset = scan_dataset(DatasetConfig(root=root, resolution=64), allow_empty=True)
        assert all(problem.reason for problem in dataset.problems)
        assert not dataset.items  # 200 random bytes are never a usable (>= 16 px) image
        with pytest.raises(DatasetError, match="no usable images"):
            scan_dataset(DatasetConfig(root=root, resolution=64))

"""The one key grammar: what each convention's tensor names parse to, and that every reader agrees.

The agreement table feeds one module's tensors, in each convention we read, to the adapter
loader, ``studio inspect``, the kohya reader and the family detector, and checks that each
sees the module, component, role and convention that ``parse_key`` says. (The kohya reader
resolves only the canonical names our exporter writes; the loader also takes other tools'
spellings of them, such as ``lora_te1_`` for SD 1.x.)
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from test_adapters_support import tiny

from studio.adapters import load_adapter
from studio.adapters.family import family_from_keys, family_from_shapes
from studio.errors import StudioError
from studio.formats.inspect import inspect_file
from studio.formats.keys import (
    DIFFUSERS,
    DORA_ROLES,
    KOHYA,
    KOHYA_ROLES,
    PEFT,
    UNSUPPORTED_ROLES,
    TensorKey,
    is_kohya_key,
    kohya_key,
    parse_key,
    peft_key,
)
from studio.formats.kohya import from_kohya_state_dict
from studio.formats.kohya_names import kohya_module_index
from studio.models.family import ModelFamily

SD1 = ModelFamily.SD1
BLOCK = "down_blocks.1.attentions.0.transformer_blocks.0"
TO_K = f"{BLOCK}.attn2.to_k"  # [64, 32] in the tiny SD 1.x UNet
TO_K_KOHYA = "lora_unet_" + TO_K.replace(".", "_")
Q_PROJ = "text_model.encoder.layers.0.self_attn.q_proj"  # [32, 32]
ROLES = {*KOHYA_ROLES.values(), *DORA_ROLES, *UNSUPPORTED_ROLES}  # every role a key can have

PARSED = [
    # kohya / LyCORIS
    (f"{TO_K_KOHYA}.lora_down.weight", TensorKey(KOHYA, "unet", TO_K_KOHYA, "down")),
    (f"{TO_K_KOHYA}.lora_up.weight", TensorKey(KOHYA, "unet", TO_K_KOHYA, "up")),
    (f"{TO_K_KOHYA}.lora_mid.weight", TensorKey(KOHYA, "unet", TO_K_KOHYA, "mid")),
    (f"{TO_K_KOHYA}.alpha", TensorKey(KOHYA, "unet", TO_K_KOHYA, "alpha")),
    ("lora_te_x.hada_w1_a", TensorKey(KOHYA, "text_encoder", "lora_te_x", "hada_w1_a")),
    ("lora_te1_x.hada_t2", TensorKey(KOHYA, "text_encoder", "lora_te1_x", "hada_t2")),
    ("lora_te2_x.lokr_w1_b", TensorKey(KOHYA, "text_encoder_2", "lora_te2_x", "lokr_w1_b")),
    ("lora_unet_x.lokr_t2", TensorKey(KOHYA, "unet", "lora_unet_x", "lokr_t2")),
    ("lora_unet_x.diff", TensorKey(KOHYA, "unet", "lora_unet_x", "diff")),
    ("lora_unet_x.diff_b", TensorKey(KOHYA, "unet", "lora_unet_x", "diff_b")),
    ("lora_unet_x.dora_scale", TensorKey(KOHYA, "unet", "lora_unet_x", "dora_scale")),
    ("lora_unet_x.lora_foo.weight", None),  # kohya name, unknown role
    # diffusers / peft
    (f"unet.{TO_K}.lora_A.weight", TensorKey(DIFFUSERS, "unet", TO_K, "down")),
    (f"unet.{TO_K}.lora_B.default.weight", TensorKey(DIFFUSERS, "unet", TO_K, "up")),
    (f"text_encoder.{Q_PROJ}.lora_A.weight", TensorKey(DIFFUSERS, "text_encoder", Q_PROJ, "down")),
    (f"text_encoder_2.{Q_PROJ}.alpha", TensorKey(DIFFUSERS, "text_encoder_2", Q_PROJ, "alpha")),
    (f"base_model.model.{TO_K}.lora_B.weight", TensorKey(PEFT, None, TO_K, "up")),
    (f"{TO_K}.lora_A.weight", TensorKey(PEFT, None, TO_K, "down")),
    (f"unet.{TO_K}.lora.down.weight", TensorKey(DIFFUSERS, "unet", TO_K, "down", legacy=True)),
    (f"unet.{TO_K}.lora_linear_layer.up.weight", TensorKey(DIFFUSERS, "unet", TO_K, "up", legacy=True)),
    (
        f"unet.{BLOCK}.attn1.processor.to_out_lora.down.weight",
        TensorKey(DIFFUSERS, "unet", f"{BLOCK}.attn1.to_out.0", "down", legacy=True),
    ),
    (f"unet.{TO_K}.lora_magnitude_vector", TensorKey(DIFFUSERS, "unet", TO_K, "lora_magnitude_vector")),
    (f"unet.{TO_K}.lora_A.bias", TensorKey(DIFFUSERS, "unet", TO_K, "bias")),
    # ComfyUI (the checkpoint's own paths), OneTrainer and SimpleTuner (flow transformers)
    (
        "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight",
        TensorKey(KOHYA, "unet", "lora_unet_double_blocks_0_img_attn_qkv", "up"),
    ),
    (
        "diffusion_model.single_blocks.3.linear1.lora_down.weight",
        TensorKey(KOHYA, "unet", "lora_unet_single_blocks_3_linear1", "down"),
    ),
    (
        "diffusion_model.joint_blocks.1.x_block.attn.qkv.alpha",
        TensorKey(KOHYA, "unet", "lora_unet_joint_blocks_1_x_block_attn_qkv", "alpha"),
    ),
    ("diffusion_model.lora_A.weight", None),
    (
        "lora_transformer_single_transformer_blocks_0_attn_to_q.lora_up.weight",
        TensorKey(KOHYA, "transformer", "lora_transformer_single_transformer_blocks_0_attn_to_q", "up"),
    ),
    (
        "lycoris_transformer_blocks_2_ff_net_2.lokr_w1",
        TensorKey(KOHYA, "transformer", "lycoris_transformer_blocks_2_ff_net_2", "lokr_w1"),
    ),
    # not LoRA tensors
    ("unet.lora_A.weight", TensorKey(PEFT, None, "unet", "down")),  # a bare path that says "unet"
    (".lora_A.weight", None),
    ("bundle_emb.style.string_to_param.*", None),
    ("lora_unet.lora_down.weight", None),  # no "_" after the prefix: not a kohya name
]


@pytest.mark.parametrize(("key", "expected"), PARSED, ids=[key for key, _ in PARSED])
def test_parse_key(key, expected):
    assert parse_key(key) == expected


def test_labels_name_the_module_as_reports_do():
    assert parse_key(f"{TO_K_KOHYA}.alpha").label == TO_K_KOHYA
    assert parse_key(f"unet.{TO_K}.lora_A.weight").label == f"unet:{TO_K}"
    assert parse_key(f"base_model.model.{TO_K}.lora_A.weight").label == f"?:{TO_K}"


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.sampled_from(["lora_unet", "lora_te", "lora_te1", "lora_te2"]),
    body=st.from_regex(r"[a-z0-9_]{1,30}", fullmatch=True),
    role=st.sampled_from(sorted(set(KOHYA_ROLES.values()) | set(UNSUPPORTED_ROLES))),
)
def test_kohya_keys_round_trip(prefix, body, role):
    name = f"{prefix}_{body}"
    parsed = parse_key(kohya_key(name, role))
    assert (parsed.convention, parsed.module, parsed.role) == (KOHYA, name, role)


@settings(max_examples=200, deadline=None)
@given(
    component=st.sampled_from(["unet", "text_encoder", "text_encoder_2"]),
    path=st.from_regex(r"[a-z][a-z0-9_]{0,8}(\.[a-z0-9_]{1,8}){0,5}", fullmatch=True),
    role=st.sampled_from(["down", "up", "alpha"]),
)
def test_peft_keys_round_trip(component, path, role):
    assert parse_key(peft_key(component, path, role)) == TensorKey(DIFFUSERS, component, path, role)


_PIECES = st.sampled_from(
    ["lora_unet_", "lora_te1_", "unet.", "text_encoder_2.", "base_model.model.", "attn1", ".processor.to_q",
     "_lora", ".lora", ".lora_A", ".default", ".down", ".weight", ".alpha", ".hada_w1_a", ".diff", "_b", ".", "_"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(key=st.one_of(st.text(max_size=40), st.lists(_PIECES, max_size=8).map("".join)))
def test_any_string_parses_to_a_known_role_or_nothing(key):
    parsed = parse_key(key)
    if parsed is not None:
        assert (parsed.convention == KOHYA) == is_kohya_key(key)
        assert parsed.module.strip(".") and parsed.role in ROLES
        assert parsed.component in (None, "unet", "text_encoder", "text_encoder_2")


# --- every reader on the same files ---------------------------------------------------------

TE_PATH = "encoder.layers.0.self_attn.q_proj"  # the tiny CLIP has no text_model level


def _lora(names: tuple[str, str, str | None], out: int, inp: int, rank: int = 4) -> dict[str, torch.Tensor]:
    down, up, alpha = names
    tensors = {down: torch.randn(rank, inp) * 0.1, up: torch.randn(out, rank) * 0.1}
    return tensors | ({alpha: torch.tensor(2.0)} if alpha else {})


def _kohya(name, out, inp):
    return _lora((f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"), out, inp)


def _peft(prefix, out, inp, a="lora_A.weight", b="lora_B.weight"):
    return _lora((f"{prefix}.{a}", f"{prefix}.{b}", None), out, inp)


# id -> (tensors of one module, the layer it names, the component inspect shows, inspect's format)
AGREEMENT = {
    "kohya unet": (_kohya(TO_K_KOHYA, 64, 32), ("unet", TO_K), "unet", "kohya LoRA"),
    "kohya te": (
        _kohya("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 32, 32),
        ("text_encoder", TE_PATH),
        "te",
        "kohya LoRA",
    ),
    "kohya te1 on SD 1.x": (
        _kohya("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 32, 32),
        ("text_encoder", TE_PATH),
        "te",
        "kohya LoRA",
    ),
    "LoHa": (
        {
            f"{TO_K_KOHYA}.hada_w1_a": torch.randn(64, 2),
            f"{TO_K_KOHYA}.hada_w1_b": torch.randn(2, 32),
            f"{TO_K_KOHYA}.hada_w2_a": torch.randn(64, 2),
            f"{TO_K_KOHYA}.hada_w2_b": torch.randn(2, 32),
            f"{TO_K_KOHYA}.alpha": torch.tensor(1.0),
        },
        ("unet", TO_K),
        "unet",
        "LyCORIS LoHa",
    ),
    "LoKr": (
        {
            f"{TO_K_KOHYA}.lokr_w1": torch.randn(8, 4),
            f"{TO_K_KOHYA}.lokr_w2_a": torch.randn(8, 2),
            f"{TO_K_KOHYA}.lokr_w2_b": torch.randn(2, 8),
        },
        ("unet", TO_K),
        "unet",
        "LyCORIS LoKr",
    ),
    "full diff": ({f"{TO_K_KOHYA}.diff": torch.randn(64, 32)}, ("unet", TO_K), "unet", "LyCORIS full"),
    "diffusers": (_peft(f"unet.{TO_K}", 64, 32), ("unet", TO_K), "unet", "peft"),
    "diffusers te": (
        _peft(f"text_encoder.text_model.{TE_PATH}", 32, 32),
        ("text_encoder", TE_PATH),
        "te",
        "peft",
    ),
    "peft base_model": (_peft(f"base_model.model.{TO_K}", 64, 32), ("unet", TO_K), "other", "peft"),
    "peft default adapter": (
        _peft(TO_K, 64, 32, "lora_A.default.weight", "lora_B.default.weight"),
        ("unet", TO_K),
        "other",
        "peft",
    ),
    "diffusers lora.down": (
        _peft(f"unet.{TO_K}", 64, 32, "lora.down.weight", "lora.up.weight"),
        ("unet", TO_K),
        "unet",
        "diffusers (legacy)",
    ),
    "diffusers processor": (
        _peft(f"unet.{BLOCK}.attn1.processor", 64, 64, "to_q_lora.down.weight", "to_q_lora.up.weight"),
        ("unet", f"{BLOCK}.attn1.to_q"),
        "unet",
        "diffusers (legacy)",
    ),
    "diffusers lora_linear_layer": (
        _peft(
            f"text_encoder.{TE_PATH}", 32, 32, "lora_linear_layer.down.weight", "lora_linear_layer.up.weight"
        ),
        ("text_encoder", TE_PATH),
        "te",
        "diffusers (legacy)",
    ),
    "kohya DoRA": (
        _kohya(TO_K_KOHYA, 64, 32) | {f"{TO_K_KOHYA}.dora_scale": torch.randn(1, 32)},
        ("unet", TO_K),
        "unet",
        "DoRA (kohya LoRA)",
    ),
    "peft DoRA": (
        _peft(f"unet.{TO_K}", 64, 32) | {f"unet.{TO_K}.lora_magnitude_vector": torch.randn(64)},
        ("unet", TO_K),
        "unet",
        "DoRA (peft)",
    ),
    "kohya bias diff": (
        {f"{TO_K_KOHYA}.diff": torch.randn(64, 32), f"{TO_K_KOHYA}.diff_b": torch.randn(64)},
        ("unet", TO_K),
        "unet",
        "LyCORIS full",
    ),
}


@pytest.fixture(scope="module")
def sd1():
    return tiny("sd1")


@pytest.mark.parametrize("case", sorted(AGREEMENT))
def test_every_reader_agrees_with_the_grammar(case, sd1, tmp_path):
    tensors, layer, shown, kind = AGREEMENT[case]
    path = tmp_path / "one.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    parsed = [parse_key(key) for key in tensors]
    assert None not in parsed and len({(p.convention, p.component, p.module) for p in parsed}) == 1
    grammar = parsed[0]
    unsupported = [p.role for p in parsed if not p.supported]

    # the loader: applies it to the layer the grammar names, or refuses the role the grammar names
    if unsupported:
        with pytest.raises(StudioError, match=re.escape(UNSUPPORTED_ROLES[unsupported[0]])):
            load_adapter(path, sd1.components, SD1)
        ranks = [tensors[key].shape[0] for key, p in zip(tensors, parsed) if p.role == "down"]
    else:
        adapter = load_adapter(path, sd1.components, SD1, strict=True)
        assert set(adapter.layers) == {layer} and adapter.report.formats == (grammar.convention,)
        assert grammar.component in (None, layer[0])
        ranks = [adapter.layers[layer].rank] if adapter.layers[layer].rank else []

    # studio inspect: one module, of the component, kind and rank the roles say
    report = inspect_file(path)
    assert (report.modules, report.format, report.ranks) == ({shown: 1}, kind, ranks)

    # the kohya reader: takes down/up/alpha of a kohya module under its canonical name, onto the
    # same layer, and hands back every other tensor unmatched
    lora, unmatched = from_kohya_state_dict(tensors, sd1.components, SD1)
    canonical = grammar.module in kohya_module_index(sd1.components, SD1)
    taken = [key for key, p in zip(tensors, parsed) if canonical and p.role in ("down", "up", "alpha")]
    taken = taken if {"down", "up"} <= {parse_key(key).role for key in taken} else []
    assert set(lora) == ({layer} if taken else set())
    assert unmatched == sorted(set(tensors) - set(taken))

    # the family detector: no SDXL-only name, and the tiny widths are no real context width
    assert family_from_keys(tensors) is None and family_from_shapes(tensors) is None


def test_unknown_module_is_unmatched_for_every_reader(sd1, tmp_path):
    name = "lora_unet_down_blocks_7_attentions_0_proj_in"
    tensors = _kohya(TO_K_KOHYA, 64, 32) | _kohya(name, 64, 64)
    path = tmp_path / "extra.safetensors"
    save_file(tensors, str(path))
    assert inspect_file(path).modules == {"unet": 2}
    with pytest.warns(UserWarning, match=name):
        adapter = load_adapter(path, sd1.components, SD1)
    assert adapter.report.unmatched == (parse_key(f"{name}.alpha").label,)
    _, unmatched = from_kohya_state_dict(tensors, sd1.components, SD1)
    assert unmatched == sorted(key for key in tensors if parse_key(key).module == name)


def test_sdxl_marks_come_from_parsed_keys():
    assert (
        family_from_keys(["lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"])
        is ModelFamily.SDXL
    )
    assert family_from_keys([f"text_encoder_2.{Q_PROJ}.lora_A.weight"]) is ModelFamily.SDXL
    assert family_from_keys(["lora_unet_input_blocks_4_1_proj_in.alpha"]) is ModelFamily.SDXL
    assert family_from_keys(["lora_unet_down_blocks_1_attentions_0_proj_in.alpha"]) is None
    wide = {f"unet.{TO_K}.lora_A.weight": torch.zeros(4, 2048)}
    assert family_from_shapes(wide) is ModelFamily.SDXL

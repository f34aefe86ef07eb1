"""ΔW of every adapter kind, from files built with known factors, against independent formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from test_adapters_support import tiny

from studio.adapters import load_adapter
from studio.errors import StudioError
from studio.mixer import AdapterWeights, BlendEngine, BlendItem
from studio.models.family import ModelFamily

LINEAR = ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k")  # [64, 32]
LINEAR_NAME = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
CONV = ("unet", "down_blocks.0.resnets.0.conv1")  # [32, 32, 3, 3]
CONV_NAME = "lora_unet_down_blocks_0_resnets_0_conv1"


@pytest.fixture(scope="module")
def pipe():
    return tiny("sd1")


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed + sum(shape)))


def load_one(tmp_path, pipe, name, tensors, key):
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(path))
    adapter = load_adapter(path, pipe.components, ModelFamily.SD1)
    weight = pipe.unet.get_submodule(key[1]).weight
    return adapter, adapter.layers[key].delta(tuple(weight.shape))


def test_lora_linear_and_missing_or_zero_alpha(tmp_path, pipe):
    down, up = rand(4, 32), rand(64, 4)
    tensors = {f"{LINEAR_NAME}.lora_down.weight": down, f"{LINEAR_NAME}.lora_up.weight": up}
    _, delta = load_one(tmp_path, pipe, "noalpha", tensors, LINEAR)
    torch.testing.assert_close(delta, up @ down)  # no alpha: alpha = rank, scale 1
    _, delta = load_one(
        tmp_path, pipe, "zero", {**tensors, f"{LINEAR_NAME}.alpha": torch.tensor(0.0)}, LINEAR
    )
    torch.testing.assert_close(delta, up @ down)  # kohya: alpha 0 means alpha = rank
    half = {**tensors, f"{LINEAR_NAME}.alpha": torch.tensor(1.0, dtype=torch.float16)}
    _, delta = load_one(tmp_path, pipe, "fp16alpha", half, LINEAR)
    torch.testing.assert_close(delta, up @ down / 4)


def test_locon_3x3_matches_sd_scripts_conv_formula(tmp_path, pipe):
    down, up = rand(4, 32, 3, 3), rand(32, 4, 1, 1)
    tensors = {
        f"{CONV_NAME}.lora_down.weight": down,
        f"{CONV_NAME}.lora_up.weight": up,
        f"{CONV_NAME}.alpha": torch.tensor(2.0),
    }
    _, delta = load_one(tmp_path, pipe, "locon", tensors, CONV)
    expected = F.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3) * (2.0 / 4)  # sd-scripts merge_to
    torch.testing.assert_close(delta, expected)


def test_locon_tucker_mid_equals_the_three_convs_it_replaces(tmp_path, pipe):
    down, mid, up = rand(4, 32, 1, 1), rand(4, 4, 3, 3), rand(32, 4, 1, 1)
    tensors = {
        f"{CONV_NAME}.lora_down.weight": down,
        f"{CONV_NAME}.lora_mid.weight": mid,
        f"{CONV_NAME}.lora_up.weight": up,
        f"{CONV_NAME}.alpha": torch.tensor(4.0),
    }
    _, delta = load_one(tmp_path, pipe, "tucker", tensors, CONV)
    x = rand(1, 32, 8, 8, seed=7)
    expected = F.conv2d(F.conv2d(F.conv2d(x, down), mid, padding=1), up)
    torch.testing.assert_close(F.conv2d(x, delta, padding=1), expected, rtol=1e-4, atol=1e-4)


def test_loha_linear(tmp_path, pipe):
    w1a, w1b, w2a, w2b = rand(64, 4), rand(4, 32), rand(64, 4, seed=1), rand(4, 32, seed=1)
    tensors = {
        f"{LINEAR_NAME}.hada_w1_a": w1a,
        f"{LINEAR_NAME}.hada_w1_b": w1b,
        f"{LINEAR_NAME}.hada_w2_a": w2a,
        f"{LINEAR_NAME}.hada_w2_b": w2b,
        f"{LINEAR_NAME}.alpha": torch.tensor(2.0),
    }
    adapter, delta = load_one(tmp_path, pipe, "loha", tensors, LINEAR)
    assert adapter.report.kinds == {"loha": 1}
    torch.testing.assert_close(delta, (w1a @ w1b) * (w2a @ w2b) * (2.0 / 4))


def test_loha_conv_flattened_factors(tmp_path, pipe):
    w1a, w1b, w2a, w2b = rand(32, 2), rand(2, 32 * 9), rand(32, 2, seed=1), rand(2, 32 * 9, seed=1)
    tensors = {
        f"{CONV_NAME}.hada_w1_a": w1a,
        f"{CONV_NAME}.hada_w1_b": w1b,
        f"{CONV_NAME}.hada_w2_a": w2a,
        f"{CONV_NAME}.hada_w2_b": w2b,
        f"{CONV_NAME}.alpha": torch.tensor(1.0),
    }
    _, delta = load_one(tmp_path, pipe, "loha_conv", tensors, CONV)
    expected = ((w1a @ w1b) * (w2a @ w2b)).reshape(32, 32, 3, 3) * 0.5
    torch.testing.assert_close(delta, expected)


def test_loha_cp_cores(tmp_path, pipe):
    r = 2
    t1, t2 = rand(r, r, 3, 3), rand(r, r, 3, 3, seed=1)
    w1a, w1b, w2a, w2b = rand(r, 32), rand(r, 32, seed=2), rand(r, 32, seed=3), rand(r, 32, seed=4)
    tensors = {
        f"{CONV_NAME}.hada_t1": t1,
        f"{CONV_NAME}.hada_t2": t2,
        f"{CONV_NAME}.hada_w1_a": w1a,
        f"{CONV_NAME}.hada_w1_b": w1b,
        f"{CONV_NAME}.hada_w2_a": w2a,
        f"{CONV_NAME}.hada_w2_b": w2b,
        f"{CONV_NAME}.alpha": torch.tensor(1.0),
    }
    _, delta = load_one(tmp_path, pipe, "loha_cp", tensors, CONV)

    def core(t, wa, wb):  # Σ_ab t[a, b] · outer(wa[a], wb[b]), written as explicit sums
        out = torch.zeros(32, 32, 3, 3)
        for a in range(r):
            for b in range(r):
                out += torch.outer(wa[a], wb[b])[:, :, None, None] * t[a, b][None, None]
        return out

    torch.testing.assert_close(
        delta, core(t1, w1a, w1b) * core(t2, w2a, w2b) * (1.0 / r), rtol=1e-4, atol=1e-5
    )


def test_lokr_linear_factored_w2(tmp_path, pipe):
    w1, w2a, w2b = rand(4, 2), rand(16, 3), rand(3, 16)
    tensors = {
        f"{LINEAR_NAME}.lokr_w1": w1,
        f"{LINEAR_NAME}.lokr_w2_a": w2a,
        f"{LINEAR_NAME}.lokr_w2_b": w2b,
        f"{LINEAR_NAME}.alpha": torch.tensor(1.5),
    }
    adapter, delta = load_one(tmp_path, pipe, "lokr", tensors, LINEAR)
    assert adapter.layers[LINEAR].rank == 3
    torch.testing.assert_close(delta, torch.kron(w1, w2a @ w2b) * (1.5 / 3))


def test_lokr_full_factors_have_scale_one(tmp_path, pipe):
    w1, w2 = rand(8, 4), rand(8, 8)
    tensors = {
        f"{LINEAR_NAME}.lokr_w1": w1,
        f"{LINEAR_NAME}.lokr_w2": w2,
        f"{LINEAR_NAME}.alpha": torch.tensor(9.0),
    }
    _, delta = load_one(tmp_path, pipe, "lokr_full", tensors, LINEAR)
    torch.testing.assert_close(delta, torch.kron(w1, w2))


def test_lokr_conv_factored_w1_and_4d_w2(tmp_path, pipe):
    w1a, w1b, w2 = rand(4, 2), rand(2, 4), rand(8, 8, 3, 3)
    tensors = {
        f"{CONV_NAME}.lokr_w1_a": w1a,
        f"{CONV_NAME}.lokr_w1_b": w1b,
        f"{CONV_NAME}.lokr_w2": w2,
        f"{CONV_NAME}.alpha": torch.tensor(1.0),
    }
    _, delta = load_one(tmp_path, pipe, "lokr_conv", tensors, CONV)
    expected = torch.kron((w1a @ w1b)[:, :, None, None], w2) * (1.0 / 2)  # LyCORIS make_kron on 4-D
    torch.testing.assert_close(delta, expected)


def test_full_diff_and_patch_at_weight_one(tmp_path, pipe):
    diff = rand(64, 32)
    adapter, delta = load_one(tmp_path, pipe, "full", {f"{LINEAR_NAME}.diff": diff}, LINEAR)
    torch.testing.assert_close(delta, diff)
    weight = pipe.unet.get_submodule(LINEAR[1]).weight
    before = weight.detach().clone()
    engine = BlendEngine(pipe.components)
    engine.set_blend([BlendItem(adapter, AdapterWeights(0.5))])
    assert torch.equal(weight.detach(), before + 0.5 * diff)
    engine.restore()
    assert torch.equal(weight.detach(), before)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({f"{LINEAR_NAME}.lora_down.weight": rand(4, 32)}, "incomplete"),
        ({f"{LINEAR_NAME}.lokr_w1": rand(4, 2), f"{LINEAR_NAME}.lokr_w2": rand(16, 15)}, LINEAR_NAME),
        (
            {f"{LINEAR_NAME}.hada_w1_a": rand(64, 2), f"{LINEAR_NAME}.hada_w1_b": rand(2, 32)}
            | {f"{LINEAR_NAME}.hada_w2_a": rand(64, 2), f"{LINEAR_NAME}.hada_w2_b": rand(2, 32)}
            | {f"{LINEAR_NAME}.hada_t1": rand(2, 2)},
            "hada_t1",
        ),
        ({f"{LINEAR_NAME}.lora_down.weight": rand(4, 32), f"{LINEAR_NAME}.hada_w1_a": rand(64, 2)}, "mixes"),
    ],
)
def test_malformed_modules_are_refused_by_name(tmp_path, pipe, tensors, message):
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(StudioError, match=message) as info:
        load_adapter(path, pipe.components, ModelFamily.SD1)
    assert str(path) in str(info.value)

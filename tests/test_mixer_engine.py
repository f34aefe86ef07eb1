"""In-place patching: exact values, bit-exact restore, block weights, minimal re-patching."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from test_adapters_support import make_kohya, one_thread, tiny, weights_of  # noqa: F401 (fixture)

from studio.adapters import load_adapter
from studio.errors import StudioError
from studio.mixer import AdapterWeights, BlendEngine, BlendItem, blend_terms, unet_block
from studio.models.family import ModelFamily


@pytest.fixture()
def setup(tmp_path):
    pipe = tiny("sd1")
    a = load_adapter(
        make_kohya(tmp_path / "a.safetensors", pipe, "sd1", 1, conv=True), pipe.components, ModelFamily.SD1
    )
    b = load_adapter(
        make_kohya(tmp_path / "b.safetensors", pipe, "sd1", 2, rank=2), pipe.components, ModelFamily.SD1
    )
    return pipe, a, b


def param(pipe, key):
    return pipe.components[key[0]].get_submodule(key[1]).weight


def expected_weight(original, items, key):
    delta = torch.zeros(original.shape)
    for item in items:
        if key in item.adapter.layers:
            delta += item.weights.coefficient(*key) * item.adapter.layers[key].delta(tuple(original.shape))
    return original + delta


def test_patch_values_and_no_runtime_modules(setup):
    pipe, a, b = setup
    originals = weights_of(pipe)
    items = [BlendItem(a, AdapterWeights(0.7)), BlendItem(b, AdapterWeights(-0.3, text_encoder=0.5))]
    stats = BlendEngine(pipe.components).set_blend(items)
    assert stats.written == len(set(a.layers) | set(b.layers)) and stats.restored == 0
    for key in set(a.layers) | set(b.layers):
        name = f"{key[0]}.{key[1]}.weight"
        torch.testing.assert_close(
            param(pipe, key).detach(), expected_weight(originals[name], items, key), rtol=0, atol=1e-6
        )
    touched = {f"{k[0]}.{k[1]}.weight" for k in set(a.layers) | set(b.layers)}
    after = weights_of(pipe)
    assert all(torch.equal(after[n], originals[n]) for n in originals if n not in touched)
    # Same modules, same parameter count as the bare base: generation costs exactly the same.
    assert not any(isinstance(m, BaseTunerLayer) for m in pipe.unet.modules())
    assert after.keys() == originals.keys()


@pytest.mark.usefixtures("one_thread")
def test_hundred_patch_restore_cycles_leave_no_drift(setup):
    pipe, a, b = setup
    keys = sorted(set(a.layers) | set(b.layers))
    originals = {key: param(pipe, key).detach().clone() for key in keys}
    engine = BlendEngine(pipe.components)
    blend = [BlendItem(a, AdapterWeights(0.7)), BlendItem(b, AdapterWeights(-0.3))]
    moved = [BlendItem(a, AdapterWeights(1.3, blocks={"up": 0.2})), BlendItem(b, AdapterWeights(0.9))]
    engine.set_blend(blend)
    first_patch = {key: param(pipe, key).detach().clone() for key in keys}
    for i in range(100):
        assert engine.restore() == len(keys)
        assert all(torch.equal(param(pipe, key), originals[key]) for key in keys), i
        engine.set_blend(moved if i % 2 else blend)  # odd rounds also move the sliders away and back
        engine.set_blend(blend)
    assert all(torch.equal(param(pipe, key), first_patch[key]) for key in keys)
    engine.restore()
    assert all(torch.equal(param(pipe, key), originals[key]) for key in keys)


@pytest.mark.usefixtures("one_thread")
def test_fp16_base_is_patched_in_fp32_and_restored_bit_exactly(setup):
    pipe, a, _ = setup
    pipe.unet.half()
    key = next(k for k in a.layers if k[0] == "unet")
    weight = param(pipe, key)
    original = weight.detach().clone()
    engine = BlendEngine(pipe.components)
    engine.set_blend([BlendItem(a, AdapterWeights(0.37))])
    expected = (original.float() + 0.37 * a.layers[key].delta(tuple(weight.shape))).half()
    assert weight.dtype is torch.float16 and torch.equal(weight.detach(), expected)
    for _ in range(5):
        engine.set_blend([BlendItem(a, AdapterWeights(-0.61))])
        engine.set_blend([BlendItem(a, AdapterWeights(0.37))])
    assert torch.equal(weight.detach(), expected)
    engine.restore()
    assert torch.equal(weight.detach(), original)


def test_block_weight_zero_on_up_leaves_up_blocks_untouched(setup):
    pipe, a, _ = setup
    originals = weights_of(pipe)
    up_keys = [k for k in a.layers if k[0] == "unet" and k[1].startswith("up_blocks.")]
    kinds = {p.rsplit(".", 1)[-1] for _, p in up_keys}
    assert {"conv1", "conv2", "conv", "to_q", "proj_in"} <= kinds  # resnet, upsampler and attention layers
    engine = BlendEngine(pipe.components)
    engine.set_blend([BlendItem(a, AdapterWeights(1.0, blocks={"up": 0.0, "mid": 0.5}))])
    after = weights_of(pipe)
    for key in a.layers:
        name = f"{key[0]}.{key[1]}.weight"
        untouched = torch.equal(after[name], originals[name])
        assert untouched == (key in up_keys), key
    mid_key = next(k for k in a.layers if k[1].startswith("mid_block.resnets"))
    expected = originals[f"unet.{mid_key[1]}.weight"] + 0.5 * a.layers[mid_key].delta(
        tuple(after[f"unet.{mid_key[1]}.weight"].shape)
    )
    torch.testing.assert_close(after[f"unet.{mid_key[1]}.weight"], expected, rtol=0, atol=1e-6)

    # A numbered block overrides its group.
    engine.set_blend([BlendItem(a, AdapterWeights(1.0, blocks={"up": 0.0, "up.0": 1.0}))])
    after = weights_of(pipe)
    for key in up_keys:
        changed = not torch.equal(after[f"unet.{key[1]}.weight"], originals[f"unet.{key[1]}.weight"])
        assert changed == key[1].startswith("up_blocks.0."), key


def test_slider_change_rewrites_only_that_adapters_layers(setup, tmp_path):
    pipe, a, _ = setup
    conv_only = make_kohya(tmp_path / "c.safetensors", pipe, "sd1", 3, conv=True, te=False, unet=False)
    c = load_adapter(conv_only, pipe.components, ModelFamily.SD1)
    shared = set(a.layers) & set(c.layers)
    assert shared and set(a.layers) - shared
    engine = BlendEngine(pipe.components)
    engine.set_blend([BlendItem(a, AdapterWeights(0.7)), BlendItem(c, AdapterWeights(0.5))])
    versions = {key: param(pipe, key)._version for key in set(a.layers) | set(c.layers)}

    stats = engine.set_blend([BlendItem(a, AdapterWeights(0.7)), BlendItem(c, AdapterWeights(-0.2))])
    written = {key for key, v in versions.items() if param(pipe, key)._version != v}
    assert written == set(c.layers) and stats.written == len(c.layers)
    assert stats.unchanged == len(set(a.layers) - set(c.layers))

    stats = engine.set_blend([BlendItem(a, AdapterWeights(0.7)), BlendItem(c, AdapterWeights(-0.2))])
    assert stats.written == 0

    stats = engine.set_blend(
        [BlendItem(a, AdapterWeights(0.7)), BlendItem(c, AdapterWeights(-0.2, enabled=False))]
    )
    assert stats.written == len(c.layers) and stats.restored == 0  # c's layers are all shared with a
    assert engine.patched_layers == set(a.layers)


def test_recomputing_without_cache_gives_identical_weights(setup):
    pipe, a, b = setup
    items = [BlendItem(a, AdapterWeights(0.7)), BlendItem(b, AdapterWeights(-0.3))]
    cached = BlendEngine(pipe.components)
    cached.set_blend(items)
    with_cache = weights_of(pipe)
    assert cached.cache_bytes_used > 0
    cached.restore()
    uncached = BlendEngine(pipe.components, cache_bytes=0)
    uncached.set_blend(items)
    assert uncached.cache_bytes_used == 0
    assert all(torch.equal(t, with_cache[n]) for n, t in weights_of(pipe).items())


def test_coefficients_and_block_names():
    assert unet_block("down_blocks.1.resnets.0.conv1") == ("down", "down.1")
    assert unet_block("up_blocks.0.upsamplers.0.conv") == ("up", "up.0")
    assert unet_block("mid_block.attentions.0.proj_in") == ("mid", None)
    assert unet_block("conv_in") is None and unet_block("time_embedding.linear_1") is None
    w = AdapterWeights(0.5, unet=2.0, text_encoder=0.1, blocks={"down": 0.5, "down.1": 3.0})
    assert w.coefficient("unet", "down_blocks.0.resnets.0.conv1") == 0.5
    assert w.coefficient("unet", "down_blocks.1.attentions.0.proj_in") == 3.0
    assert w.coefficient("unet", "conv_in") == 1.0
    assert w.coefficient("text_encoder_2", "encoder.layers.0.mlp.fc1") == pytest.approx(0.05)
    assert AdapterWeights(0.5, enabled=False).coefficient("unet", "conv_in") == 0.0
    assert blend_terms([]) == {}
    with pytest.raises(StudioError, match="unknown UNet block 'middle'"):
        AdapterWeights(blocks={"middle": 1.0})
    with pytest.raises(StudioError, match="finite"):
        AdapterWeights(float("nan"))


def test_factors_go_to_the_weights_device_whatever_the_layer_kind():
    from studio.adapters.layers import LohaDelta, LoraDelta
    from studio.mixer.engine import _factors_to

    loha = LohaDelta(*(torch.ones(2, 2) for _ in range(4)), scale=0.5)
    moved = _factors_to(loha, torch.device("meta"))
    assert all(t.is_meta for t in (moved.w1a, moved.w1b, moved.w2a, moved.w2b))
    assert moved.t1 is None and moved.scale == 0.5 and not loha.w1a.is_meta
    lora = LoraDelta(torch.ones(2, 3), torch.ones(3, 2), 1.0)
    assert _factors_to(lora, torch.device("cpu")) is lora


@pytest.mark.gpu
@pytest.mark.parametrize(
    "budget", [None, 0], ids=["originals-and-deltas-on-gpu", "pinned-host-and-recomputed"]
)
def test_cuda_patch_never_waits_for_the_gpu_and_restores_bit_exactly(setup, budget):
    """On CUDA a patch is only queued work (no host sync per layer), wherever the originals live
    and whether ΔWs are cached or recomputed from factors kept on the GPU."""
    pipe, a, b = setup
    items = [BlendItem(a, AdapterWeights(0.7)), BlendItem(b, AdapterWeights(-0.3, text_encoder=0.5))]
    keys = sorted(set(a.layers) | set(b.layers))
    on_cpu = BlendEngine(pipe.components)
    on_cpu.set_blend(items)
    expected = {key: param(pipe, key).detach().clone() for key in keys}
    on_cpu.restore()

    pipe.to("cuda", torch.float16)
    originals = {key: param(pipe, key).detach().clone() for key in keys}
    engine = BlendEngine(pipe.components, originals_bytes=budget, cache_bytes=budget)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        engine.set_blend(items)
        on_gpu, cached = engine.originals_bytes_on_device, engine.cache_bytes_used
        engine.set_blend([BlendItem(a, AdapterWeights(1.3)), items[1]])
        engine.set_blend(items)
        patched = {key: param(pipe, key).detach().clone() for key in keys}
        engine.restore()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert (on_gpu > 0) == (cached > 0) == (budget is None)
    for key in keys:
        torch.testing.assert_close(patched[key].float().cpu(), expected[key], rtol=2e-3, atol=2e-3)
        assert torch.equal(param(pipe, key), originals[key]), key
    assert engine.originals_bytes_on_device == 0  # freed once nothing is patched

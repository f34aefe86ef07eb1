"""DoRA files in the loader, the mixer and bake, checked against peft's own DoRA layers.

peft's ``LoraConfig(use_dora=True)`` layers on the tiny UNet (a Linear, a 1x1 and a 3x3 conv)
get random A, B and magnitudes; the test writes them as a peft file (``lora_magnitude_vector``)
and as a LyCORIS file (``dora_scale``, written here by LyCORIS' rule), loads each, patches it
with the engine and compares with peft's merged weights and its runtime forward.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from test_adapters_support import tiny

from studio.adapters import load_adapter
from studio.adapters.layers import DoraDelta, FullDelta, LohaDelta, LoraDelta, delta_on
from studio.errors import StudioError
from studio.formats.inspect import inspect_file
from studio.formats.kohya_names import kohya_module_index
from studio.mixer import AdapterWeights, BlendEngine, BlendItem, bake_blend
from studio.models.family import ModelFamily

SD1 = ModelFamily.SD1
BLOCK = "down_blocks.1.attentions.0"
TO_K = f"{BLOCK}.transformer_blocks.0.attn2.to_k"  # Linear [64, 32]
FF = f"{BLOCK}.transformer_blocks.0.ff.net.0.proj"  # Linear [512, 64]
PROJ_IN = f"{BLOCK}.proj_in"  # 1x1 conv [64, 64, 1, 1]
CONV = "down_blocks.1.resnets.0.conv1"  # 3x3 conv [64, 32, 3, 3]
TARGETS = {"a": [TO_K, PROJ_IN, CONV], "b": [TO_K, CONV, FF]}
RANK, ALPHA = 4, 6.0


@pytest.fixture(scope="module")
def pipe():
    return tiny("sd1")


@pytest.fixture(scope="module")
def peft_unet(pipe):
    """A copy of the UNet with DoRA adapters "a" and "b" injected by peft, random and non-zero."""
    unet = copy.deepcopy(pipe.unet)
    generator = torch.Generator().manual_seed(7)
    for name, targets in TARGETS.items():
        config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, use_dora=True)
        inject_adapter_in_model(config, unet, adapter_name=name)
    with torch.no_grad():
        for module in unet.modules():
            if not isinstance(module, LoraLayer):
                continue
            for name in module.lora_A:
                for factor in (module.lora_A[name].weight, module.lora_B[name].weight):
                    factor.copy_(torch.randn(factor.shape, generator=generator) * 0.3)
                magnitude = module.lora_magnitude_vector[name].weight
                magnitude.mul_(1 + 0.3 * torch.rand(magnitude.shape, generator=generator))
    unet.eval()
    return unet


def _lora_layers(unet):
    return {path: m for path, m in unet.named_modules() if isinstance(m, LoraLayer)}


def _set_active(unet, names: list[str]) -> None:
    for module in _lora_layers(unet).values():
        module.set_adapter([n for n in names if n in module.lora_A])


def peft_merged(peft_unet, name: str) -> dict[str, torch.Tensor]:
    """peft's own merge of adapter ``name`` alone: W' per adapted layer."""
    unet = copy.deepcopy(peft_unet)
    merged = {}
    for path, module in _lora_layers(unet).items():
        if name in module.lora_A:
            module.merge(adapter_names=[name])
            merged[path] = module.get_base_layer().weight.detach().clone()
    return merged


def write_peft(path, peft_unet, name: str):
    """The adapter as diffusers saves a pipeline's peft adapter: ``unet.`` keys and the config header."""
    state = get_peft_model_state_dict(peft_unet, adapter_name=name)
    assert any(k.endswith("lora_magnitude_vector") for k in state)
    config = {"unet.r": RANK, "unet.lora_alpha": ALPHA, "unet.use_dora": True}
    tensors = {f"unet.{k}": v.contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"lora_adapter_metadata": json.dumps(config)})
    return path


def _kohya_names(pipe) -> dict[str, str]:
    return {
        ref.path: name
        for name, ref in kohya_module_index(pipe.components, SD1).items()
        if ref.component == "unet"
    }


def write_lycoris(path, pipe, peft_unet, name: str, magnitudes: dict[str, torch.Tensor] | None = None):
    """The same adapter as LyCORIS writes a DoRA LoCon: kohya names, ``alpha`` and ``dora_scale``.

    LyCORIS keeps the magnitude as ``[out, 1, ...]`` with ``wd_on_out`` (per output row, what
    peft learns); ``magnitudes`` overrides it (an input-axis ``[1, in, ...]`` scale).
    """
    names = _kohya_names(pipe)
    tensors = {}
    for layer_path, module in _lora_layers(peft_unet).items():
        if name not in module.lora_A:
            continue
        kohya = names[layer_path]
        weight = module.get_base_layer().weight
        tensors[f"{kohya}.lora_down.weight"] = module.lora_A[name].weight.detach().clone()
        tensors[f"{kohya}.lora_up.weight"] = module.lora_B[name].weight.detach().clone()
        tensors[f"{kohya}.alpha"] = torch.tensor(ALPHA)
        m = module.lora_magnitude_vector[name].weight.detach()
        scale = m.reshape(weight.shape[0], *[1] * (weight.dim() - 1))
        tensors[f"{kohya}.dora_scale"] = (magnitudes or {}).get(layer_path, scale).contiguous()
    save_file(tensors, str(path))
    return path


def _unet_weights(pipe) -> dict[str, torch.Tensor]:
    return {
        path: m.weight.detach().clone()
        for path, m in pipe.unet.named_modules()
        if hasattr(m, "weight") and isinstance(m.weight, torch.Tensor)
    }


def _inputs():
    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(2, 4, 32, 32, generator=generator)
    context = torch.randn(2, 8, 32, generator=generator)
    return sample, torch.tensor([10, 500]), context


@torch.no_grad()
def _run(unet):
    sample, t, context = _inputs()
    return unet(sample, t, encoder_hidden_states=context).sample


@pytest.fixture()
def engine(pipe):
    engine = BlendEngine(pipe.components)
    yield engine
    engine.restore()


@pytest.mark.parametrize("writer", ["peft", "lycoris"])
def test_one_dora_adapter_at_weight_1_is_peft_merged_and_runtime(tmp_path, pipe, peft_unet, engine, writer):
    path = tmp_path / f"a-{writer}.safetensors"
    if writer == "peft":
        write_peft(path, peft_unet, "a")
    else:
        write_lycoris(path, pipe, peft_unet, "a")
    adapter = load_adapter(path, pipe.components, SD1, strict=True)
    assert set(adapter.layers) == {("unet", p) for p in TARGETS["a"]}
    assert all(isinstance(layer, DoraDelta) and layer.kind == "dora" for layer in adapter.layers.values())
    assert adapter.report.kinds == {"dora": 3}
    engine.set_blend([BlendItem(adapter)])

    # the mixer's weights after loading equal the trained model's (peft's merge of it)
    patched = _unet_weights(pipe)
    for layer_path, expected in peft_merged(peft_unet, "a").items():
        torch.testing.assert_close(patched[layer_path], expected, rtol=1e-5, atol=1e-6, msg=layer_path)
    # and the patched base runs as peft's runtime DoRA layers do
    _set_active(peft_unet, ["a"])
    torch.testing.assert_close(_run(pipe.unet), _run(peft_unet), rtol=1e-4, atol=1e-5)


def test_two_dora_adapters_add_their_updates_on_the_unpatched_base(tmp_path, pipe, peft_unet, engine):
    a = load_adapter(write_peft(tmp_path / "a.safetensors", peft_unet, "a"), pipe.components, SD1)
    b = load_adapter(write_lycoris(tmp_path / "b.safetensors", pipe, peft_unet, "b"), pipe.components, SD1)
    base = _unet_weights(pipe)
    merged = {name: peft_merged(peft_unet, name) for name in ("a", "b")}

    # patched in turn, b's update is still taken on W0, not on the weights holding a
    engine.set_blend([BlendItem(a)])
    engine.set_blend([BlendItem(a, AdapterWeights(weight=0.7)), BlendItem(b, AdapterWeights(weight=0.5))])
    patched = _unet_weights(pipe)
    for layer_path in {*TARGETS["a"], *TARGETS["b"]}:
        w0 = base[layer_path]
        expected = w0.clone()
        for name, weight in (("a", 0.7), ("b", 0.5)):
            if layer_path in merged[name]:
                expected += weight * (merged[name][layer_path] - w0)  # ComfyUI's strength rule, per adapter
        torch.testing.assert_close(patched[layer_path], expected, rtol=1e-5, atol=1e-6, msg=layer_path)

    # order-independent (to fp32 rounding: the first term is scaled, the next ones fused-added)
    engine.restore()
    engine.set_blend([BlendItem(b, AdapterWeights(weight=0.5)), BlendItem(a, AdapterWeights(weight=0.7))])
    swapped = _unet_weights(pipe)
    for layer_path in patched:
        torch.testing.assert_close(swapped[layer_path], patched[layer_path], rtol=1e-6, atol=1e-7)

    # peft chains instead (docs/dora.md): with a and b active, b's factor f_b = m_b / ‖W0 + ΔW_b‖
    # also rescales a's update, W = f_b ⊙ (W'_a + ΔW_b), in its forward as in its merge
    _set_active(peft_unet, ["a", "b"])
    chained = copy.deepcopy(peft_unet)
    layers = _lora_layers(chained)
    for module in layers.values():
        module.merge(adapter_names=list(module.active_adapters))
    for layer_path in {*TARGETS["a"]} & {*TARGETS["b"]}:
        w0, module = base[layer_path], _lora_layers(peft_unet)[layer_path]
        up, down = module.lora_B["b"].weight.detach(), module.lora_A["b"].weight.detach()
        delta_b = (ALPHA / RANK) * (up.flatten(1) @ down.flatten(1)).reshape(w0.shape)
        rows = torch.stack([row.pow(2).sum().sqrt() for row in w0 + delta_b])
        f_b = (module.lora_magnitude_vector["b"].weight.detach().flatten() / rows).reshape(
            -1, *[1] * (w0.dim() - 1)
        )
        by_hand = f_b * (merged["a"][layer_path] + delta_b)
        torch.testing.assert_close(layers[layer_path].get_base_layer().weight, by_hand, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_run(chained), _run(peft_unet), rtol=1e-4, atol=1e-5)


def test_restore_after_dora_patches_is_bit_exact(tmp_path, pipe, peft_unet, engine):
    a = load_adapter(write_peft(tmp_path / "a.safetensors", peft_unet, "a"), pipe.components, SD1)
    b = load_adapter(write_lycoris(tmp_path / "b.safetensors", pipe, peft_unet, "b"), pipe.components, SD1)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    first = None
    for step in range(10):
        engine.set_blend(
            [BlendItem(a, AdapterWeights(weight=0.1 * step)), BlendItem(b, AdapterWeights(weight=-0.3))]
        )
        engine.set_blend([BlendItem(a), BlendItem(b)])
        now = _unet_weights(pipe)
        first = first or now
        assert all(torch.equal(now[p], first[p]) for p in first)  # a slider round trip lands on the same bits
    engine.restore()
    after = pipe.unet.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def _columns_norm(weight: torch.Tensor) -> torch.Tensor:
    """‖W[:, j]‖ for each input column j, over the output rows and the kernel, as a [1, in, 1, 1] tensor."""
    norms = torch.stack([weight[:, j].pow(2).sum().sqrt() for j in range(weight.shape[1])])
    return norms.reshape(1, -1, *[1] * (weight.dim() - 2))


def test_lycoris_input_axis_dora_scale(tmp_path, pipe, peft_unet, engine):
    """LyCORIS' older default (the DoRA paper's column norm): ``dora_scale`` ``[1, in, ...]``."""
    generator = torch.Generator().manual_seed(11)
    shapes = {p: pipe.unet.get_submodule(p).weight.shape for p in TARGETS["a"]}
    scales = {
        p: 0.5 + torch.rand(1, s[1], *[1] * (len(s) - 2), generator=generator) for p, s in shapes.items()
    }
    path = write_lycoris(tmp_path / "in.safetensors", pipe, peft_unet, "a", magnitudes=scales)
    adapter = load_adapter(path, pipe.components, SD1)
    base = _unet_weights(pipe)
    engine.set_blend([BlendItem(adapter, AdapterWeights(weight=0.6))])
    patched = _unet_weights(pipe)
    layers = _lora_layers(peft_unet)
    for layer_path, scale in scales.items():
        module, w0 = layers[layer_path], base[layer_path]
        up, down = module.lora_B["a"].weight.detach(), module.lora_A["a"].weight.detach()
        merged = w0 + (ALPHA / RANK) * (up.flatten(1) @ down.flatten(1)).reshape(w0.shape)
        decomposed = (
            merged
            / _columns_norm(merged).reshape(1, -1, *[1] * (w0.dim() - 2))
            * scale.reshape(1, -1, *[1] * (w0.dim() - 2))
        )
        expected = w0 + 0.6 * (decomposed - w0)
        torch.testing.assert_close(patched[layer_path], expected, rtol=1e-5, atol=1e-6, msg=layer_path)


def test_dora_over_loha(tmp_path, pipe, engine):
    """LyCORIS decomposes any of its kinds; a DoRA LoHa is W0 + ΔW_loha, then the row norms."""
    kohya = _kohya_names(pipe)[TO_K]
    generator = torch.Generator().manual_seed(5)
    w1a, w1b, w2a, w2b = (
        torch.randn(s, generator=generator) * 0.3 for s in ((64, 2), (2, 32), (64, 2), (2, 32))
    )
    scale = 0.5 + torch.rand(64, 1, generator=generator)
    tensors = {
        "hada_w1_a": w1a,
        "hada_w1_b": w1b,
        "hada_w2_a": w2a,
        "hada_w2_b": w2b,
        "alpha": torch.tensor(1.0),
    }
    tensors = {f"{kohya}.{k}": v for k, v in tensors.items()} | {f"{kohya}.dora_scale": scale}
    save_file(tensors, str(tmp_path / "doha.safetensors"))
    adapter = load_adapter(tmp_path / "doha.safetensors", pipe.components, SD1, strict=True)
    layer = adapter.layers[("unet", TO_K)]
    assert isinstance(layer, DoraDelta) and isinstance(layer.inner, LohaDelta) and layer.kind == "dora-loha"
    w0 = pipe.unet.get_submodule(TO_K).weight.detach().clone()
    engine.set_blend([BlendItem(adapter)])
    merged = w0 + (w1a @ w1b) * (w2a @ w2b) * 0.5
    rows = torch.stack([row.pow(2).sum().sqrt() for row in merged]).reshape(-1, 1)
    torch.testing.assert_close(
        pipe.unet.get_submodule(TO_K).weight, merged / rows * scale, rtol=1e-5, atol=1e-6
    )


# --- bake ------------------------------------------------------------------------------------


def test_exact_bake_of_dora_is_refused_with_the_reason(tmp_path, pipe, peft_unet):
    a = load_adapter(write_peft(tmp_path / "a.safetensors", peft_unet, "a"), pipe.components, SD1)
    with pytest.raises(StudioError, match=r"adapter 'a' is DoRA .*no exact bake") as info:
        bake_blend([BlendItem(a)], pipe.components, SD1, tmp_path / "exact.safetensors")
    assert "svd" in info.value.hint
    assert not (tmp_path / "exact.safetensors").exists()


def test_svd_bake_of_a_dora_blend_reproduces_it(tmp_path, pipe, peft_unet, engine):
    a = load_adapter(write_peft(tmp_path / "a.safetensors", peft_unet, "a"), pipe.components, SD1)
    b = load_adapter(write_lycoris(tmp_path / "b.safetensors", pipe, peft_unet, "b"), pipe.components, SD1)
    items = [BlendItem(a, AdapterWeights(weight=0.7)), BlendItem(b, AdapterWeights(weight=0.5))]
    base = _unet_weights(pipe)
    fresh = bake_blend(items, pipe.components, SD1, tmp_path / "fresh.safetensors", rank=64)
    assert fresh.method == "svd" and fresh.overall_error < 1e-5

    # baked while the blend is patched in (as the app does): the engine hands over the originals
    engine.set_blend(items)
    expected = _unet_weights(pipe)
    patched = bake_blend(
        items,
        pipe.components,
        SD1,
        tmp_path / "patched.safetensors",
        rank=64,
        originals=engine.original_weight,
    )
    assert patched.overall_error < 1e-5
    engine.restore()

    baked = load_adapter(tmp_path / "patched.safetensors", pipe.components, SD1, strict=True)
    assert all(isinstance(layer, LoraDelta) for layer in baked.layers.values())
    engine.set_blend([BlendItem(baked)])
    now = _unet_weights(pipe)
    for layer_path in {*TARGETS["a"], *TARGETS["b"]}:
        scale = (expected[layer_path] - base[layer_path]).abs().max()
        assert (now[layer_path] - expected[layer_path]).abs().max() <= 1e-5 * scale + 1e-6, layer_path


def test_svd_bake_of_dora_on_a_shape_only_base_is_refused(tmp_path, pipe, peft_unet):
    a = load_adapter(write_peft(tmp_path / "a.safetensors", peft_unet, "a"), pipe.components, SD1)
    meta = {
        name: copy.deepcopy(c).to("meta") if isinstance(c, torch.nn.Module) else c
        for name, c in pipe.components.items()
    }
    with pytest.raises(StudioError, match="DoRA: its update depends on the base model's weights") as info:
        bake_blend([BlendItem(a)], meta, SD1, tmp_path / "meta.safetensors", rank=8)
    assert "--base" in info.value.hint


# --- reading ---------------------------------------------------------------------------------


def test_inspect_still_names_dora(tmp_path, pipe, peft_unet):
    assert inspect_file(write_peft(tmp_path / "a.safetensors", peft_unet, "a")).format == "DoRA (peft)"
    assert inspect_file(write_lycoris(tmp_path / "b.safetensors", pipe, peft_unet, "b")).format.startswith(
        "DoRA ("
    )


def test_bad_dora_files_are_one_clear_line(tmp_path, pipe, peft_unet):
    kohya = _kohya_names(pipe)[TO_K]
    lora = {f"{kohya}.lora_down.weight": torch.randn(4, 32), f"{kohya}.lora_up.weight": torch.randn(64, 4)}
    cases = {
        "wrong shape": (
            lora | {f"{kohya}.dora_scale": torch.rand(1, 64)},
            {},
            r"dora_scale of shape \[1, 64\]",
        ),
        "magnitude alone": ({f"{kohya}.dora_scale": torch.rand(64, 1)}, {}, "no update to decompose"),
        "use_dora without magnitude": (
            {
                f"unet.{TO_K}.lora_A.weight": torch.randn(4, 32),
                f"unet.{TO_K}.lora_B.weight": torch.randn(64, 4),
            },
            {"lora_adapter_metadata": json.dumps({"unet.use_dora": True, "unet.lora_alpha": 4})},
            "use_dora, but module .* has no lora_magnitude_vector",
        ),
    }
    for case, (tensors, metadata, message) in cases.items():
        path = tmp_path / f"{case}.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        with pytest.raises(StudioError, match=message) as info:
            load_adapter(path, pipe.components, SD1)
        assert info.value.path is not None and "\n" not in info.value.message, case


def test_dora_over_a_full_diff_and_a_zero_row():
    """DoraDelta alone, against the formula: a full ``diff`` inside, and a row that W0 + ΔW zeroes
    (its direction is undefined: it stays zero, not NaN)."""
    generator = torch.Generator().manual_seed(2)
    w0 = torch.randn(6, 5, generator=generator)
    diff = torch.randn(6, 5, generator=generator)
    diff[2] = -w0[2]
    magnitude = 0.5 + torch.rand(6, 1, generator=generator)
    layer = DoraDelta(inner=FullDelta(diff=diff), magnitude=magnitude, peft=False)
    assert layer.kind == "dora-full" and layer.shape_error((6, 5)) is None
    patched = w0 + delta_on(layer, w0)
    merged = w0 + diff
    for row in (0, 1, 3, 4, 5):
        expected = merged[row] / merged[row].pow(2).sum().sqrt() * magnitude[row]
        torch.testing.assert_close(patched[row], expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(patched[2], torch.zeros(5))


def test_cli_merge_of_dora_says_why_in_one_line(tmp_path, capsys):
    """``studio merge`` without --base has only full-size shapes: DoRA needs the weights."""
    from studio.cli import main
    from studio.models.configs import build_meta_components

    generator = torch.Generator().manual_seed(4)
    tensors = {}
    for name, ref in kohya_module_index(build_meta_components("sd15"), SD1).items():
        if name.startswith("lora_unet_") and name.endswith("attn2_to_k"):
            out_features, in_features = ref.module.weight.shape
            tensors[f"{name}.lora_down.weight"] = torch.randn(4, in_features, generator=generator)
            tensors[f"{name}.lora_up.weight"] = torch.randn(out_features, 4, generator=generator)
            tensors[f"{name}.dora_scale"] = torch.rand(out_features, 1, generator=generator)
    path = tmp_path / "dora.safetensors"
    save_file(tensors, str(path), metadata={"ss_base_model_version": "sd_v1"})
    for extra, message in (([], "no exact bake"), (["--rank", "4"], "depends on the base model's weights")):
        assert main(["merge", str(path), "--out", str(tmp_path / "out.safetensors"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out.safetensors").exists()


def test_text_encoder_dora_is_peft_merged_and_runtime(tmp_path, pipe, engine):
    """The same on the text encoder: a peft DoRA file for its q_proj and fc1, at weight 1."""
    targets = ["encoder.layers.0.self_attn.q_proj", "encoder.layers.1.mlp.fc1"]
    encoder = copy.deepcopy(pipe.text_encoder)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, use_dora=True)
    inject_adapter_in_model(config, encoder, adapter_name="te")
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for module in _lora_layers(encoder).values():
            for factor in (module.lora_A["te"].weight, module.lora_B["te"].weight):
                factor.copy_(torch.randn(factor.shape, generator=generator) * 0.3)
            module.lora_magnitude_vector["te"].weight.mul_(1.5)
    encoder.eval()
    state = get_peft_model_state_dict(encoder, adapter_name="te")
    header = {"text_encoder.r": RANK, "text_encoder.lora_alpha": ALPHA, "text_encoder.use_dora": True}
    path = tmp_path / "te.safetensors"
    save_file(
        {f"text_encoder.{k}": v.contiguous() for k, v in state.items()},
        str(path),
        metadata={"lora_adapter_metadata": json.dumps(header)},
    )
    adapter = load_adapter(path, pipe.components, SD1, strict=True)
    assert set(adapter.layers) == {("text_encoder", t) for t in targets}
    engine.set_blend([BlendItem(adapter)])
    ids = torch.randint(0, 100, (2, 12), generator=generator)
    with torch.no_grad():
        expected = encoder(ids).last_hidden_state
        torch.testing.assert_close(pipe.text_encoder(ids).last_hidden_state, expected, rtol=1e-4, atol=1e-5)
    merged = copy.deepcopy(encoder)
    for layer_path, module in _lora_layers(merged).items():
        module.merge()
        weight = pipe.text_encoder.get_submodule(layer_path).weight
        torch.testing.assert_close(weight, module.get_base_layer().weight, rtol=1e-5, atol=1e-6)


def test_fp16_base_gets_dora_in_fp32_and_is_restored_bit_exactly(tmp_path, peft_unet):
    """fp16 weights: Dᵢ is taken on the fp16 original upcast, added in fp32, cast once."""
    half = tiny("sd1")
    adapter = load_adapter(write_peft(tmp_path / "a.safetensors", peft_unet, "a"), half.components, SD1)
    half.unet.half()
    weight = half.unet.get_submodule(CONV).weight
    original = weight.detach().clone()
    engine = BlendEngine(half.components)
    engine.set_blend([BlendItem(adapter, AdapterWeights(weight=0.37))])
    expected = (original.float() + 0.37 * delta_on(adapter.layers[("unet", CONV)], original)).half()
    assert weight.dtype is torch.float16 and torch.equal(weight.detach(), expected)
    engine.set_blend([BlendItem(adapter, AdapterWeights(weight=-0.61))])
    engine.set_blend([BlendItem(adapter, AdapterWeights(weight=0.37))])
    assert torch.equal(weight.detach(), expected)
    engine.restore()
    assert torch.equal(weight.detach(), original)

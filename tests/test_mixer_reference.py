"""Our patched blend against diffusers' own multi-adapter path, on real (tiny) pipelines.

Reference: a fresh pipeline, ``load_lora_weights(file, adapter_name=...)`` twice, then
``set_adapters([...], adapter_weights=[0.7, -0.3])`` (runtime peft LoRA layers). Same seed,
same image, within fp32 round-off. Text encoders included: with transformers 5.x
diffusers 0.42 loads kohya TE keys when the file has the out_proj layers it uses to
detect the key format, which these files (like sd-scripts') do; for files without them
the text-encoder reference is peft itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from test_adapters_support import lora_factors, make_kohya, tiny, write_kohya

from studio.adapters import load_adapter
from studio.formats.kohya_names import kohya_module_index
from studio.mixer import AdapterWeights, BlendEngine, BlendItem
from studio.models.family import ModelFamily

WEIGHTS = (0.7, -0.3)


def render(pipe) -> np.ndarray:
    generator = torch.Generator(device=pipe.device).manual_seed(1234)
    out = pipe(
        "a red circle on a blue background", num_inference_steps=2, generator=generator, output_type="np"
    )
    return out.images


def prompt_embeds(pipe) -> torch.Tensor:
    with torch.no_grad():
        out = pipe.encode_prompt(
            prompt="a red circle",
            device=pipe.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
    return out[0]  # SDXL: both text encoders' hidden states, concatenated


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")  # diffusers, 2nd adapter
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_blend_matches_diffusers_set_adapters(tmp_path, family):
    ours = tiny(family)
    files = [
        make_kohya(tmp_path / f"style_{i}.safetensors", ours, family, seed=10 + i, conv=i == 0)
        for i in range(2)
    ]
    base_embeds = prompt_embeds(ours)
    base_image = render(ours)

    adapters = [load_adapter(f, ours.components, ModelFamily(family)) for f in files]
    BlendEngine(ours.components).set_blend(
        [BlendItem(a, AdapterWeights(w)) for a, w in zip(adapters, WEIGHTS)]
    )
    our_embeds, our_image = prompt_embeds(ours), render(ours)

    reference = tiny(family)
    names = ["style_one", "style_two"]
    for name, path in zip(names, files):
        reference.load_lora_weights(str(path), adapter_name=name)
    reference.set_adapters(names, adapter_weights=list(WEIGHTS))
    ref_embeds, ref_image = prompt_embeds(reference), render(reference)

    assert (our_embeds - base_embeds).abs().max() > 1e-2  # the text encoders really were patched
    torch.testing.assert_close(our_embeds, ref_embeds, rtol=0, atol=1e-5)
    assert np.abs(our_image - base_image).max() > 1e-2
    assert np.abs(our_image - ref_image).max() < 1e-4


def test_text_encoder_patch_matches_peft_runtime_lora(tmp_path):
    """TE files without out_proj defeat diffusers' key-format detection (0.42.1: a ValueError, or
    q/k/v silently dropped), so the reference here is peft itself with the same factors."""
    ours = tiny("sd1")
    factors = {
        name: value
        for name, value in lora_factors(ours, "sd1", seed=3, unet=False).items()
        if not name.endswith("out_proj")
    }
    adapter = load_adapter(
        write_kohya(tmp_path / "te.safetensors", factors), ours.components, ModelFamily.SD1
    )
    BlendEngine(ours.components).set_blend([BlendItem(adapter, AdapterWeights(0.6, text_encoder=-1.5))])

    reference = tiny("sd1")
    index = kohya_module_index(reference.components, ModelFamily.SD1)
    paths = {index[name].path: value for name, value in factors.items()}
    config = LoraConfig(r=4, lora_alpha=2.0, target_modules=list(paths), init_lora_weights=False)
    inject_adapter_in_model(config, reference.text_encoder)
    for path, (down, up, _) in paths.items():
        layer = reference.text_encoder.get_submodule(path)
        layer.lora_A["default"].weight.data.copy_(down)
        layer.lora_B["default"].weight.data.copy_(up)
        layer.set_scale("default", 0.6 * -1.5)
    assert prompt_embeds(ours).sub(prompt_embeds(tiny("sd1"))).abs().max() > 1e-2
    torch.testing.assert_close(prompt_embeds(ours), prompt_embeds(reference), rtol=0, atol=1e-5)

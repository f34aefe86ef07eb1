"""The Flux.1 family: full-size structure on the meta device, sd-scripts' module names and counts,
detection from components and from BFL single-file keys, and the tiny pipeline's parts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import T5TokenizerFast

from studio.config import TrainConfig
from studio.data import DatasetConfig, load_training_image, scan_dataset
from studio.families import FLUX, SD3, SDXL, DenoiserInput, detect_family, family_for_checkpoint
from studio.formats.flow_names import fused_part
from studio.formats.safetensors_io import read_header
from studio.lora.inject import extract_lora, inject_lora, set_lora_enabled
from studio.models.configs import build_meta_components
from studio.models.flow_configs import build_flow_components
from studio.models.loader import BaseModel, load_base
from studio.samples import make_demo_dataset
from studio.training.encoding import encode_latents
from studio.training.recipe import train

# sd-scripts 48d368f, networks/lora_flux.py: LoRANetwork([], flux_models.Flux(configs["dev"].params) on
# the meta device, lora_dim=16) logs "create LoRA for FLUX all blocks: 304 modules"; per double block
# img/txt _attn_qkv, _attn_proj, _mlp_0, _mlp_2, _mod_lin (10), per single block linear1, linear2,
# modulation_lin (3), nothing outside the blocks. (Run once with torchvision/cv2 stubbed out, einops
# installed aside; the script lived outside the project.)
SD_SCRIPTS_FLUX_MODULES = 304

FAMILY, BASE_VERSION = FLUX, "flux1"


@pytest.fixture(scope="module")
def flux_dev():
    return build_flow_components("flux1-dev", with_text_encoders=False)["transformer"]


@pytest.fixture(scope="module")
def tiny():
    pipe = FLUX.build_tiny(0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_full_size_dev_and_schnell_have_flux1s_structure(flux_dev):
    assert len(flux_dev.transformer_blocks) == 19 and len(flux_dev.single_transformer_blocks) == 38
    assert sum(p.numel() for p in flux_dev.parameters()) == 11_901_408_320  # Flux.1-dev's 11.9B
    assert flux_dev.get_submodule("single_transformer_blocks.0.proj_mlp").out_features == 12288
    assert flux_dev.config.guidance_embeds and hasattr(flux_dev.time_text_embed, "guidance_embedder")
    meta = build_meta_components(FLUX.full_size)  # what `studio merge` builds without a base
    assert (
        type(meta["text_encoder_2"]).__name__ == "T5EncoderModel"
        and meta["text_encoder_2"].config.d_model == 4096
    )
    schnell = build_flow_components("flux1-schnell", with_text_encoders=False)["transformer"]
    assert not schnell.config.guidance_embeds
    assert not hasattr(schnell.time_text_embed, "guidance_embedder")
    assert FLUX.matches({"transformer": schnell}) and FLUX.matches({"transformer": flux_dev})


def test_full_layer_set_is_sd_scripts_coverage_on_the_fused_layout(flux_dev):
    targets = FLUX.lora_targets({"transformer": flux_dev}, "full", train_text_encoder=False)["transformer"]
    names = {fused_part("flux", "transformer", path).name for path in targets}
    assert len(names) == SD_SCRIPTS_FLUX_MODULES
    assert (
        "lora_unet_double_blocks_18_txt_attn_qkv" in names and "lora_unet_single_blocks_37_linear1" in names
    )
    block0 = {
        n.removeprefix("lora_unet_double_blocks_0_")
        for n in names
        if n.startswith("lora_unet_double_blocks_0_")
    }
    assert block0 == {
        f"{s}_{p}" for s in ("img", "txt") for p in ("attn_qkv", "attn_proj", "mlp_0", "mlp_2", "mod_lin")
    }
    single0 = {n for n in names if n.startswith("lora_unet_single_blocks_0_")}
    assert single0 == {f"lora_unet_single_blocks_0_{p}" for p in ("linear1", "linear2", "modulation_lin")}
    # q, k, v (and the MLP input in single blocks) are parts of one fused module, in row order
    part = fused_part("flux", "transformer", "single_transformer_blocks.3.proj_mlp")
    assert (part.name, part.index) == ("lora_unet_single_blocks_3_linear1", 3)
    assert fused_part("flux", "transformer", "transformer_blocks.2.attn.add_k_proj").index == 1


def test_layer_sets_grow_from_joint_attention_to_every_block_linear(flux_dev):
    counts = {
        s: len(FLUX.lora_targets({"transformer": flux_dev}, s, False)["transformer"])
        for s in FLUX.lora_patterns
    }
    assert counts == {"cross-attn": 19 * 8, "attn": 19 * 8 + 38 * 3, "full": 19 * 14 + 38 * 6}


def test_detected_from_components_and_from_bfl_single_file_keys(tiny):
    assert detect_family(tiny.components) is FLUX
    assert not SD3.matches(tiny.components) and not SDXL.matches(tiny.components)
    bfl = {
        "double_blocks.0.img_attn.qkv.weight", "double_blocks.0.txt_mod.lin.weight",
        "single_blocks.0.linear1.weight", "img_in.weight", "guidance_in.in_layer.weight",
    }  # fmt: skip
    assert family_for_checkpoint(bfl) is FLUX and FLUX.checkpoint_model(bfl) == "flux1-dev"
    assert FLUX.checkpoint_model({k for k in bfl if not k.startswith("guidance_in")}) == "flux1-schnell"
    assert family_for_checkpoint({f"model.diffusion_model.{k}" for k in bfl}) is FLUX  # ComfyUI's prefix
    assert not FLUX.matches_checkpoint({"conditioner.embedders.1.model.ln_final.weight"})
    assert family_for_checkpoint({"conditioner.embedders.1.model.ln_final.weight"}) is SDXL


def test_tiny_pipeline_reloads_with_its_tokenizers_and_draws(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    loaded = load_base(tmp_path)  # the studio's loader on a diffusers folder
    assert loaded.family is FLUX and type(loaded.pipeline).__name__ == "FluxPipeline"
    t5 = T5TokenizerFast.from_pretrained(tmp_path / "tokenizer_2")
    assert len(t5) == len(tiny.tokenizer_2) == tiny.text_encoder_2.config.vocab_size
    caption = "a red circle on a blue background"
    assert t5(caption).input_ids == tiny.tokenizer_2(caption).input_ids
    assert t5(caption).input_ids[-1] == t5.eos_token_id and t5.unk_token_id not in t5(caption).input_ids
    assert tiny.vae.config.latent_channels == 16 and tiny.transformer.config.in_channels == 64
    image = tiny("a red circle", num_inference_steps=2, height=32, width=32, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
    hidden, pooled = FLUX.encode_text(tiny.components, ["a red circle"], "cpu")
    assert hidden.shape == (1, 32, 32) and pooled.shape == (1, 32)  # T5 tokens x width; CLIP-L pooled


def _fixed_batch_loss(base, dataset_dir) -> float:
    """Flow-matching loss on fixed images, noise and σ: comparable before and after training."""
    family, components = base.family, base.components
    items = scan_dataset(DatasetConfig(root=str(dataset_dir), trigger="inkstyle", resolution=64)).items
    pixels = torch.stack([load_training_image(item, item.bucket, None)[0] for item in items])
    latents = encode_latents(components["vae"], pixels)
    with torch.no_grad():
        text = family.encode_text(components, [item.caption for item in items], "cpu")
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(123))
        timesteps = torch.linspace(100, 900, len(items))
        scheduler = family.training_scheduler(base.pipeline)
        noisy = family.noisy_latents(scheduler, latents, noise, timesteps)
        batch = DenoiserInput(noisy, timesteps, text, [], [], (64, 64), scheduler)
        prediction = family.predict(components["transformer"], batch, torch.float32)
        return torch.nn.functional.mse_loss(
            prediction, family.training_target(scheduler, latents, noise, timesteps)
        ).item()


def test_trains_through_the_studio_trainer_and_overfits(tmp_path):
    dataset = make_demo_dataset(tmp_path / "data", count=2)
    base = BaseModel(FAMILY.build_tiny(0), FAMILY, "epsilon", "tiny")
    config = TrainConfig(
        data=str(dataset), output=str(tmp_path / "style.safetensors"), trigger="inkstyle", resolution=64,
        batch_size=2, rank=4, alpha=4.0, lr=1e-2, steps=6, seed=7, layers="full", train_text_encoder=False,
        sample_every=6, sample_steps=1,
    )  # fmt: skip
    result = train(config, base=base)
    transformer = result.base.components["transformer"]
    assert len(result.losses) == 6 and all(np.isfinite(result.losses))
    assert len(list((result.run_dir / "samples").glob("step-000006-*.png"))) == 3  # previews drawn
    after = _fixed_batch_loss(result.base, dataset)
    set_lora_enabled(transformer, False)
    before = _fixed_batch_loss(result.base, dataset)
    set_lora_enabled(transformer, True)
    assert after < 0.97 * before, (before, after)
    header = read_header(result.outputs[0])  # the run's kohya file, on the original fused layout
    assert header.metadata["ss_base_model_version"] == BASE_VERSION


def test_schnell_has_no_guidance_input_and_writes_schnell_files(tmp_path):
    pipe = FLUX.build_tiny(0, guidance=False)
    inject_lora(pipe.components, FLUX, 2, 2.0, "cross-attn", train_text_encoder=False)
    scheduler = FLUX.training_scheduler(pipe)
    assert not scheduler.config.use_dynamic_shifting and scheduler.config.shift == 1.0  # schnell: no shift
    latents = torch.randn(1, 16, 8, 8)
    timesteps = torch.tensor([500.0])
    torch.testing.assert_close(FLUX.sigmas(scheduler, timesteps, latents).flatten(), torch.tensor([0.5]))
    text = FLUX.encode_text(pipe.components, ["a circle"], "cpu")
    batch = DenoiserInput(latents, timesteps, text, [], [], (32, 32), scheduler)
    with torch.no_grad():
        assert FLUX.predict(pipe.transformer, batch, torch.float32).shape == latents.shape
    lora = {
        key: dataclasses.replace(t, up=torch.ones_like(t.up))
        for key, t in extract_lora(pipe.components).items()
    }
    metadata = read_header(
        FLUX.save_kohya_file(tmp_path / "s.safetensors", lora, pipe.components, {})
    ).metadata
    assert metadata["modelspec.architecture"] == "flux-1-schnell/lora"


@pytest.mark.parametrize(
    "option, value",
    [("clip_skip", 2), ("v_prediction", True), ("zero_terminal_snr", True), ("min_snr_gamma", 5.0)],
)
def test_sd_schedule_and_clip_options_are_refused_in_one_line(tiny, tmp_path, option, value):
    from studio.errors import StudioError

    dataset = make_demo_dataset(tmp_path / "data", count=1)
    base = BaseModel(tiny, FAMILY, "epsilon", "tiny")
    config = TrainConfig(
        data=str(dataset), output=str(tmp_path / "s.safetensors"), steps=1, **{option: value}
    )
    flag = "--" + option.replace("_", "-")
    with pytest.raises(StudioError, match=f"{flag} does not apply to {FAMILY.display_name}"):
        train(config, base=base)
    assert not (tmp_path / "s.safetensors").exists()


@pytest.mark.parametrize("name, family", [("Style (Flux.1-dev)", FLUX), ("Style (SD3.5)", SD3)])
def test_the_flow_style_presets_train_their_family(name, family, tmp_path):
    """Each flow preset, shrunk to a few tiny steps, trains its family with its memory switches
    (parked encoders, fp8 base where it says so) and writes the family's kohya file."""
    from studio.presets import PRESETS

    preset = PRESETS[name]
    assert preset.family == family.id and "GiB" in preset.description
    dataset = make_demo_dataset(tmp_path / "data", count=2)
    base = BaseModel(family.build_tiny(0), family, "epsilon", "tiny")
    config = preset.apply(
        data=str(dataset), output=str(tmp_path / "style.safetensors"), resolution=64, steps=2,
        sample_every=0, checkpoint_every=0, warmup_steps=0, mixed_precision="no",
    )  # fmt: skip
    result = train(config, base=base)
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    metadata = read_header(result.outputs[0]).metadata
    assert metadata["ss_fp8_base"] == str(preset.values.get("fp8_base", False))
    assert metadata["ss_base_model_version"] == family.base_model_version
    assert result.base.components[family.t5[0]].device.type == "cpu"  # T5 parked


@pytest.mark.slow
def test_a_bfl_single_file_loads_with_a_config_folder(tmp_path):
    """A transformer-only BFL file (as flux1-dev.safetensors ships) plus a diffusers folder for the
    rest loads through diffusers' converter to the same weights. diffusers hard-codes Flux.1's
    width (3072) there, so the transformer is full width with one block of each kind (~0.5 B)."""
    from bfl_checkpoint import save_bfl_flux
    from diffusers import FluxTransformer2DModel

    tiny_pipe = FAMILY.build_tiny(0)
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    ).to(torch.bfloat16)  # fmt: skip
    tiny_pipe.transformer = transformer
    tiny_pipe.register_modules(transformer=transformer)
    folder = tmp_path / "flux-config"
    tiny_pipe.save_pretrained(folder, safe_serialization=True)
    for weights in (folder / "transformer").glob("*.safetensors"):
        weights.unlink()  # the folder gives configs (and the other parts); the file gives the transformer
    checkpoint = save_bfl_flux(transformer, tmp_path / "flux1-narrow.safetensors")

    assert family_for_checkpoint(set(read_header(checkpoint).tensors)) is FLUX
    base = load_base(checkpoint, config=str(folder), dtype=torch.bfloat16)
    assert base.family is FLUX and FLUX.is_dev(base.components["transformer"])
    loaded = base.components["transformer"].state_dict()
    expected = transformer.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_a_transformer_only_file_without_a_config_asks_for_one(tmp_path):
    from safetensors.torch import save_file

    from studio.errors import StudioError

    path = tmp_path / "flux1-dev.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(6, 2)}, str(path))
    with pytest.raises(StudioError, match="holds the transformer only") as caught:
        load_base(path)
    assert "--base-config" in caught.value.hint and "black-forest-labs/FLUX.1-dev" in caught.value.hint
    assert caught.value.path == str(path)


@pytest.mark.gpu
@pytest.mark.parametrize("family", [FLUX, SD3], ids=["flux", "sd3"])
def test_bf16_previews_render_on_the_gpu(tmp_path, family):
    """bf16 training keeps the VAE in fp32; the flow pipelines' bf16 latents must still decode."""
    dataset = make_demo_dataset(tmp_path / "data", count=2)
    config = TrainConfig(
        data=str(dataset), output=str(tmp_path / "style.safetensors"), resolution=64, batch_size=2, rank=4,
        steps=1, train_text_encoder=False, sample_every=1, sample_steps=1, mixed_precision="bf16",
    )  # fmt: skip
    result = train(config, base=BaseModel(family.build_tiny(0), family, "epsilon", "tiny"))
    previews = sorted((result.run_dir / "samples").glob("step-000001-*.png"))
    assert previews and all(np.asarray(Image.open(p)).std() > 0 for p in previews)

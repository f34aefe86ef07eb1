"""The SD3.5 family: full-size Large and Medium on the meta device, sd-scripts' module names and
counts, detection from components and from SAI single-file keys, and the tiny pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.config import TrainConfig
from studio.data import DatasetConfig, load_training_image, scan_dataset
from studio.families import FLUX, SD3, DenoiserInput, detect_family, family_for_checkpoint
from studio.formats.flow_names import fused_part
from studio.formats.safetensors_io import read_header
from studio.lora.inject import set_lora_enabled
from studio.models.flow_configs import build_flow_components
from studio.models.loader import BaseModel, load_base
from studio.samples import make_demo_dataset
from studio.training.encoding import encode_latents
from studio.training.recipe import train

# sd-scripts 48d368f, networks/lora_sd3.py: LoRANetwork([], sd3_models.create_sd3_mmdit(SD3Params(...))
# on the meta device, lora_dim=16) logs "create LoRA for SD3 MMDiT: 377 modules" for 3.5-Large
# (depth 38, qk_norm rms, no x_block attn2) and 263 for 3.5-Medium (depth 24, attn2 in blocks 0-12):
# 10 per joint block (x/context _attn_qkv, _attn_proj, _mlp_fc1, _mlp_fc2, _adaLN_modulation_1),
# +2 where x_block has attn2 (attn2_qkv, attn2_proj), 7 in the last block (its context block is
# pre-only: adaLN_modulation_1 and attn_qkv). SD3Params as sd3_utils.analyze_state_dict_state reads
# them from the real files; the script lived outside the project (torchvision/cv2 stubbed out).
SD_SCRIPTS_SD3_MODULES = {"sd35-large": 377, "sd35-medium": 263}

FAMILY, BASE_VERSION = SD3, "sd3"


@pytest.fixture(scope="module")
def tiny():
    pipe = SD3.build_tiny(0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    ("model", "blocks", "params"), [("sd35-large", 38, 8_056_627_520), ("sd35-medium", 24, None)]
)
def test_full_size_layer_names_and_counts_are_sd_scripts(model, blocks, params):
    transformer = build_flow_components(model, with_text_encoders=False)["transformer"]
    assert len(transformer.transformer_blocks) == blocks and SD3.matches({"transformer": transformer})
    if params:
        assert sum(p.numel() for p in transformer.parameters()) == params
    targets = SD3.lora_targets({"transformer": transformer}, "full", train_text_encoder=False)["transformer"]
    names = {fused_part("sd3", "transformer", path).name for path in targets}
    assert len(names) == SD_SCRIPTS_SD3_MODULES[model]
    last = {n.removeprefix(f"lora_unet_joint_blocks_{blocks - 1}_") for n in names if f"_{blocks - 1}_" in n}
    assert last == {"context_block_adaLN_modulation_1", "context_block_attn_qkv", "x_block_adaLN_modulation_1",
                    "x_block_attn_proj", "x_block_attn_qkv", "x_block_mlp_fc1", "x_block_mlp_fc2"}  # fmt: skip
    assert ("lora_unet_joint_blocks_0_x_block_attn2_qkv" in names) == (model == "sd35-medium")


def test_detected_from_components_and_from_sai_single_file_keys(tiny):
    assert detect_family(tiny.components) is SD3 and not FLUX.matches(tiny.components)
    sai = {
        "joint_blocks.0.x_block.attn.qkv.weight",
        "joint_blocks.0.context_block.attn.qkv.weight",
        "pos_embed",
    }
    assert family_for_checkpoint({f"model.diffusion_model.{k}" for k in sai}) is SD3
    assert family_for_checkpoint(sai) is SD3 and not SD3.matches_checkpoint(
        {"double_blocks.0.img_attn.qkv.weight"}
    )
    assert SD3.checkpoint_model(sai) == "sd35-large"
    assert SD3.checkpoint_model(sai | {"joint_blocks.0.x_block.attn2.qkv.weight"}) == "sd35-medium"


def test_tiny_pipeline_saves_and_loads_through_the_studio_loader(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    loaded = load_base(tmp_path)
    assert loaded.family is SD3 and type(loaded.pipeline).__name__ == "StableDiffusion3Pipeline"
    assert len(loaded.pipeline.tokenizer_3) == loaded.pipeline.text_encoder_3.config.vocab_size


def test_tiny_pipeline_encodes_like_sd3_and_draws(tiny):
    hidden, pooled = SD3.encode_text(tiny.components, ["a red circle"], "cpu")
    # 77 CLIP tokens (both CLIPs side by side, zero-padded to T5's width) then T5's tokens
    assert hidden.shape == (1, 77 + tiny.tokenizer_3.model_max_length, 64) and pooled.shape == (1, 64)
    embeds, _, pooled_pipe, _ = tiny.encode_prompt("a red circle", None, None, do_classifier_free_guidance=False,
                                                   max_sequence_length=tiny.tokenizer_3.model_max_length)  # fmt: skip
    torch.testing.assert_close(hidden, embeds)  # the pipeline's own conditioning
    torch.testing.assert_close(pooled, pooled_pipe)
    image = tiny("a red circle", num_inference_steps=2, height=32, width=32, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


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

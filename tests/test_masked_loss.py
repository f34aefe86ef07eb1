"""``--masked-loss``: the loss is weighed per latent pixel by the image's alpha or masks/NAME.png.

The training test trains on one image whose left half is masked out, then measures the
denoising loss of each half with the adapter off and on (fixed noise and timesteps): the right
half's loss falls, the left half's does not fall; trained without the mask, the left half's falls
too, so the test can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from studio import train
from studio.config import TrainConfig
from studio.data import Bucket, DatasetConfig, load_training_image, scan_dataset
from studio.data.masks import load_mask
from studio.errors import DatasetError
from studio.lora.inject import set_lora_enabled
from studio.training.encoding import encode_latents, encode_text
from studio.training.loss import apply_loss_mask, diffusion_loss, latent_mask

SIDE = 64


def _half(left: tuple[int, int, int], right: str) -> Image.Image:
    pixels = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    pixels[:, : SIDE // 2] = left
    yy, xx = np.mgrid[:SIDE, SIDE // 2 : SIDE]
    pattern = (yy // 4 % 2) if right == "stripes" else ((yy // 8 + xx // 8) % 2)
    pixels[:, SIDE // 2 :] = np.where(pattern[..., None] == 1, (250, 250, 250), (20, 120, 20))
    return Image.fromarray(pixels)


def _left_masked(folder, image: Image.Image):
    folder.mkdir(parents=True)
    image.save(folder / "img.png")
    (folder / "img.txt").write_text("a picture")
    mask = np.full((SIDE, SIDE), 255, dtype=np.uint8)
    mask[:, : SIDE // 2] = 0
    (folder / "masks").mkdir()
    Image.fromarray(mask).save(folder / "masks" / "img.png")
    return folder


def test_masked_mse_is_the_weighted_mse_reference():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    mask = torch.rand(2, 1, 8, 8, generator=g)
    reference = (mask * (pred - target) ** 2).mean()  # sd-scripts: loss * mask, then the mean

    class Scheduler:  # only the loss's prediction-type switch is read without Min-SNR
        config = type("C", (), {"prediction_type": "epsilon"})

    assert torch.allclose(diffusion_loss(*apply_loss_mask(pred, target, mask), None, Scheduler), reference)


def test_masks_come_from_masks_folder_or_alpha_and_shrink_to_the_latent_grid(tmp_path):
    root = _left_masked(tmp_path / "set", _half((200, 0, 0), "stripes"))
    rgba = np.zeros((SIDE, SIDE, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[: SIDE // 4, :, 3] = 0  # top quarter transparent
    Image.fromarray(rgba).save(root / "alpha.png")
    Image.fromarray(np.zeros((SIDE, SIDE, 3), dtype=np.uint8)).save(root / "plain.png")
    bucket = Bucket(SIDE, SIDE)
    from_file = latent_mask(load_mask(root / "img.png", root, (SIDE, SIDE), bucket, (0, 0)), (8, 8))
    assert from_file.shape == (1, 8, 8)
    assert from_file[0, :, :4].max() == 0 and from_file[0, :, 4:].min() == 1
    alpha = latent_mask(load_mask(root / "alpha.png", root, (SIDE, SIDE), bucket, (0, 0)), (8, 8))
    assert alpha[0, :2].max() == 0 and alpha[0, 2:].min() == 1
    assert load_mask(root / "plain.png", root, (SIDE, SIDE), bucket, (0, 0)) is None
    assert torch.equal(latent_mask(None, (8, 8)), torch.ones(1, 8, 8))
    # the masks folder is never trained on
    assert sorted(item.path.name for item in scan_dataset(DatasetConfig(root)).items) == [
        "alpha.png",
        "img.png",
        "plain.png",
    ]
    Image.fromarray(np.zeros((10, 20), dtype=np.uint8)).save(root / "masks" / "plain.png")
    with pytest.raises(DatasetError, match="mask is 20x10 but its image is 64x64"):
        load_mask(root / "plain.png", root, (SIDE, SIDE), bucket, (0, 0))


def _half_losses(result, folder) -> tuple[float, float, float, float]:
    """Denoising loss of the left and right halves with the adapter off, then on (fixed noise)."""
    base = result.base
    unet = base.components["unet"]
    item = scan_dataset(DatasetConfig(root=str(folder), resolution=SIDE)).items[0]
    pixels = load_training_image(item, item.bucket, None)[0][None].repeat(8, 1, 1, 1)
    latents = encode_latents(base.components["vae"], pixels)
    hidden, _ = encode_text(base.components, base.family, [item.caption] * 8, latents.device)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(5))
    timesteps = torch.linspace(20, 980, 8).long()
    noisy = base.pipeline.scheduler.add_noise(latents, noise, timesteps)
    losses = []
    unet.eval()
    for enabled in (False, True):
        set_lora_enabled(unet, enabled)
        with torch.no_grad():
            error = (unet(noisy, timesteps, hidden).sample - noise) ** 2
        half = error.shape[-1] // 2
        losses += [error[..., :half].mean().item(), error[..., half:].mean().item()]
    set_lora_enabled(unet, True)
    return tuple(losses)


def _train(folder, tmp_path, masked: bool):
    config = TrainConfig(
        data=str(folder),
        output=str(tmp_path / f"{folder.name}-{masked}.safetensors"),
        resolution=SIDE,
        batch_size=2,
        rank=8,
        alpha=8.0,
        layers="full",
        lr=3e-3,
        steps=6,
        seed=3,
        train_text_encoder=False,
        masked_loss=masked,
    )
    return train(config)


@pytest.mark.slow  # two short trainings of the embedded model
def test_a_masked_out_half_learns_nothing_while_the_other_half_learns(tmp_path):
    folder = _left_masked(tmp_path / "a", _half((200, 0, 0), "stripes"))
    off_left, off_right, on_left, on_right = _half_losses(_train(folder, tmp_path, masked=True), folder)
    learned_left, learned_right = off_left - on_left, off_right - on_right
    assert learned_right > 0.05 * off_right, (off_right, on_right)
    # the left half gains nothing (the adapter's effect there, learned from the right, may even hurt)
    assert learned_left < 0.1 * learned_right, (learned_left, learned_right)
    # the same run without the mask learns the left half too, so the check above can fail
    u_off_left, _, u_on_left, _ = _half_losses(_train(folder, tmp_path, masked=False), folder)
    assert u_off_left - u_on_left > 0.5 * learned_right, (u_off_left - u_on_left, learned_right)

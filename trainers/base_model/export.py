"""Checkpoint -> the shipped diffusers folder (fp16 safetensors, every file under 15 MB).

python -m trainers.base_model.export --checkpoint .bm-ckpt --to assets/default-model
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import CLIPTokenizer

from studio.atomic import atomic_dir
from studio.models.tokenizer import train_clip_bpe
from trainers.base_model import architecture, checkpoint

MAX_FILE_BYTES = 15 * 1000**2


def _write_bpe_files(directory: Path) -> None:
    """CLIP's classic vocab.json + merges.txt beside tokenizer.json, for tools that read only those."""
    vocab, merges = train_clip_bpe(architecture.tokenizer_words())
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def export(checkpoint_dir: Path, target: Path) -> Path:
    tokenizer = architecture.make_tokenizer()
    vae, unet = architecture.make_vae(), architecture.make_unet()
    text_encoder = architecture.make_text_encoder(tokenizer)
    tensors = checkpoint.load_tensors(checkpoint_dir)
    state = checkpoint.load_state(checkpoint_dir)
    for name, model in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder)):
        if not checkpoint.restore_model(model, tensors, name):
            raise SystemExit(f"{checkpoint_dir} holds no {name} weights")
    vae.register_to_config(scaling_factor=state["vae"]["scaling_factor"])
    pipeline = architecture.make_pipeline(vae, unet, text_encoder, tokenizer).to(torch.float16)
    if target.exists():
        shutil.rmtree(target)
    with atomic_dir(target) as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=True, max_shard_size="14MB")
        _write_bpe_files(tmp / "tokenizer")
    reloaded = CLIPTokenizer.from_pretrained(str(target / "tokenizer"))
    if len(reloaded) != len(tokenizer):
        raise RuntimeError(f"saved tokenizer has {len(reloaded)} tokens, expected {len(tokenizer)}")
    too_big = [p for p in target.rglob("*") if p.is_file() and p.stat().st_size > MAX_FILE_BYTES]
    if too_big:
        raise RuntimeError(f"files over 15 MB: {too_big}")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--to", type=Path, required=True)
    args = parser.parse_args()
    path = export(args.checkpoint, args.to)
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    print(f"wrote {path} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

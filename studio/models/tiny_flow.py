"""Tiny parts of the flow-matching families (SD3.5, Flux.1), built in code: a 16-channel VAE,
a T5 encoder and its tokenizer.

T5 tokenizers are SentencePiece Unigram models; none may be downloaded, so a small Unigram
is trained here on the tiny models' corpus and wrapped in ``T5TokenizerFast`` (specials
``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2 as in T5, ``</s>`` appended). It saves and reloads with
``from_pretrained`` like a real one. The transformers are built by each family
(``studio/families/sd3``, ``studio/families/flux``) from these parts and the CLIP parts of
``studio.models.tiny``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
from diffusers import AutoencoderKL
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import T5Config, T5EncoderModel, T5TokenizerFast

from studio.models.tokenizer import DEFAULT_CORPUS

LATENT_CHANNELS = 16  # SD3 and Flux VAEs both have 16 latent channels
T5_SPECIALS = ["<pad>", "</s>", "<unk>"]
T = TypeVar("T")


def build_t5_tokenizer(
    words: Iterable[str] = DEFAULT_CORPUS, vocab_size: int = 300, max_length: int = 32
) -> T5TokenizerFast:
    """A T5-style Unigram tokenizer trained on ``words``; checks that transformers kept every token."""
    words = list(words)
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=T5_SPECIALS, unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator([" ".join(words)] * 4 + words, trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    tokenizer = T5TokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=max_length,
    )
    # transformers 5 can silently build a tokenizer that lost its vocabulary: check it.
    if len(tokenizer) != tok.get_vocab_size() or tokenizer.pad_token_id != 0 or tokenizer.eos_token_id != 1:
        raise RuntimeError(f"T5TokenizerFast has {len(tokenizer)} tokens, expected {tok.get_vocab_size()}")
    return tokenizer


def tiny_t5(vocab_size: int, d_model: int) -> T5EncoderModel:
    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=d_model,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
            tie_word_embeddings=False,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
            dropout_rate=0.0,
        )
    ).eval()


def tiny_flow_vae(scaling_factor: float, shift_factor: float) -> AutoencoderKL:
    """A three-level VAE (latents 4x smaller than the image, the real ones 8x) with 16 latent channels."""
    return AutoencoderKL(
        block_out_channels=[16, 32, 32],
        norm_num_groups=8,
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        latent_channels=LATENT_CHANNELS,
        sample_size=64,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def seeded(seed: int, build: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``build(*args, **kwargs)`` with torch's global RNG seeded first (each part its own seed)."""
    torch.manual_seed(seed)
    model = build(*args, **kwargs)
    return model.eval() if isinstance(model, torch.nn.Module) else model  # as from_pretrained leaves it

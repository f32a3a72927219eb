"""A tiny Stable Diffusion pipeline with seeded random weights: the embedded image model.

It has the real geometry (a UNet2DConditionModel with cross-attention, an AutoencoderKL with 4 blocks, so
the VAE scale factor is 8 as in SD 1.x/2.x, a CLIP text encoder and tokenizer, an Euler scheduler) at a
size that draws 256 px in under a second on one CPU core. Its weights are random: it draws noise. It exists
so that the whole image path (loading through `from_pretrained`, validation, batching, cancellation,
encoding) runs and is tested offline; point the config at a real model to draw pictures.

Building twice with the same seed gives byte-identical files.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

from llmops.engines.registry import require

VOCAB_SIZE = 1000
LETTERS = "etaoinshrdlucmfwypvbgkjqxz"


def _bytes_to_unicode() -> list[str]:
    """CLIP's byte-level alphabet: 256 printable stand-ins for the 256 byte values."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    extra = 0
    out = {}
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def clip_vocab() -> tuple[dict[str, int], list[str]]:
    """A CLIP-layout vocabulary of VOCAB_SIZE entries and the merges that build its multi-letter tokens."""
    symbols = _bytes_to_unicode()
    tokens = symbols + [s + "</w>" for s in symbols]
    n_pairs = (VOCAB_SIZE - len(tokens) - 2) // 2
    pairs = list(itertools.islice(itertools.product(LETTERS, LETTERS), n_pairs))
    merges = [f"{a} {b}" for a, b in pairs] + [f"{a} {b}</w>" for a, b in pairs]
    tokens += [a + b for a, b in pairs] + [a + b + "</w>" for a, b in pairs]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def _tokenizer(folder: Path) -> Any:
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def build_tiny_sd(out_dir: str | Path, seed: int = 0) -> Path:
    """Build the pipeline with weights drawn from `seed` and save it to `out_dir` (about 10 MB)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    d = require("diffusers", "diffusers")
    out = Path(out_dir)
    torch.manual_seed(seed)
    unet = d.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8)
    vae = d.AutoencoderKL(
        block_out_channels=(32, 32, 64, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=5, num_attention_heads=4,
        vocab_size=VOCAB_SIZE, max_position_embeddings=77, bos_token_id=VOCAB_SIZE - 2,
        eos_token_id=VOCAB_SIZE - 1, pad_token_id=VOCAB_SIZE - 1))
    # steps_offset=1: what the pipeline would otherwise patch in itself, with a 25-line FutureWarning
    scheduler = d.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         steps_offset=1)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer(Path(tmp))
        pipe = d.StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(out)
    return out

"""A tiny ResNet trained on scikit-learn's handwritten digits: the embedded image classifier.

The data set ships inside scikit-learn (`sklearn.datasets.load_digits`: 1,797 8x8 grey images of the digits
0-9), so building needs no download. The split is fixed (20% held out, stratified, `random_state=0`); the
model sees each digit as the server will, an 8x8 grey PNG turned RGB and resized to 32x32 by the saved image
processor. Training is seeded and runs on one CPU thread, so the same seed gives byte-identical weights,
in about ten seconds. The result is a normal transformers checkpoint (`ResNetForImageClassification`,
config.json + model.safetensors + preprocessor_config.json) that the classifier engine loads like any
other, plus `llmops.json` with how it was built and its measured held-out accuracy.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmops.engines.registry import require

log = logging.getLogger("llmops.tiny_resnet")

IMAGE_SIZE = 32
TEST_SIZE = 0.2
SPLIT_SEED = 0
EPOCHS = 10
BATCH = 64
METADATA = "llmops.json"


@dataclass(frozen=True)
class Digits:
    """The digits as 8x8 grey images (PIL, mode L, ink bright), their labels, and the fixed split."""

    images: list[Any]
    labels: list[int]
    train: list[int]
    test: list[int]


def digits() -> Digits:
    """scikit-learn's digits with the fixed train/held-out split every build, test and bench uses."""
    import numpy as np
    from PIL import Image

    datasets = require("sklearn.datasets", "classify")
    selection = require("sklearn.model_selection", "classify")
    data = datasets.load_digits()
    images = [Image.fromarray(np.round(a * 255 / 16).astype(np.uint8), mode="L") for a in data.images]
    labels = [int(t) for t in data.target]
    train, test = selection.train_test_split(list(range(len(labels))), test_size=TEST_SIZE, random_state=SPLIT_SEED,
                                             stratify=labels)
    return Digits(images, labels, sorted(int(i) for i in train), sorted(int(i) for i in test))


def image_processor() -> Any:
    """Resize to 32x32, scale to [0, 1], normalise to [-1, 1]: saved as a ViTImageProcessor config."""
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    return ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3,
                                image_std=[0.5] * 3)


def _model(seed: int) -> Any:
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    shape: dict[str, Any] = {"num_channels": 3, "embedding_size": 16, "hidden_sizes": [16, 32, 64],
                             "depths": [1, 1, 1], "layer_type": "basic", "downsample_in_first_stage": False}
    labels: dict[str, Any] = {"id2label": {i: str(i) for i in range(10)}, "label2id": {str(i): i for i in range(10)}}
    config = ResNetConfig(**shape, **labels)
    return ResNetForImageClassification(config)


def _train(model: Any, pixels: Any, labels: Any, seed: int) -> None:
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = EPOCHS * -(-len(labels) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(labels), generator=order)
        for start in range(0, len(labels), BATCH):
            batch = perm[start:start + BATCH]
            loss = model(pixel_values=pixels[batch], labels=labels[batch]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    model.eval()


def accuracy(model: Any, pixels: Any, labels: Any) -> float:
    import torch

    with torch.inference_mode():
        predicted = model(pixel_values=pixels).logits.argmax(-1)
    return float((predicted == labels).float().mean().item())


def build_tiny_resnet(out_dir: str | Path, seed: int = 0) -> Path:
    """Train on the fixed split with `seed`, save the checkpoint to `out_dir`, and record the held-out
    accuracy in `out_dir/llmops.json`. Returns `out_dir`."""
    import torch

    data = digits()
    processor = image_processor()
    rgb = [im.convert("RGB") for im in data.images]
    pixels = processor(images=rgb, return_tensors="pt")["pixel_values"]
    labels = torch.tensor(data.labels)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same float sums in the same order, so the same weights
    try:
        model = _model(seed)
        _train(model, pixels[data.train], labels[data.train], seed)
        held_out = accuracy(model, pixels[data.test], labels[data.test])
    finally:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / METADATA).write_text(json.dumps(metadata(seed, len(data.train), len(data.test), held_out), indent=2) + "\n")
    log.info("tiny-resnet: held-out accuracy %.4f on %d digits", held_out, len(data.test))
    return out


def metadata(seed: int, n_train: int, n_test: int, held_out: float) -> dict[str, Any]:
    return {
        "model": "tiny-resnet",
        "built_by": "llmops models build-tiny-resnet",
        "dataset": "sklearn.datasets.load_digits (8x8 grey digits 0-9)",
        "split": {"test_size": TEST_SIZE, "random_state": SPLIT_SEED, "stratify": True,
                  "n_train": n_train, "n_test": n_test},
        "input": f"grey or RGB image, resized to {IMAGE_SIZE}x{IMAGE_SIZE}; ink bright on a dark background",
        "training": {"seed": seed, "epochs": EPOCHS, "batch_size": BATCH, "optimizer": "AdamW, one-cycle lr 3e-3",
                     "threads": 1},
        "held_out_accuracy": round(held_out, 4),
    }


def read_metadata(folder: str | Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((Path(folder) / METADATA).read_text())
    return data

"""Image request parameters checked against the model's limits; every refusal names its field."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from llmops.engines.base import ImageRequest
from llmops.errors import InvalidRequest
from llmops.settings import ImageLimits, ModelConfig

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


@dataclass(frozen=True)
class ImageFields:
    prompt: str
    negative_prompt: str | None
    width: int | None
    height: int | None
    steps: int | None
    guidance: float | None
    n: int
    seed: int | None


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    if size is None:
        return None, None
    m = _SIZE.match(size)
    if not m:
        raise InvalidRequest(f"size must look like 512x512, got {size!r}", param="size")
    return int(m.group(1)), int(m.group(2))


def _check_side(value: int, lim: ImageLimits, param: str) -> int:
    if not lim.min_size <= value <= lim.max_size:
        raise InvalidRequest(f"{param} must be between {lim.min_size} and {lim.max_size}", param=param)
    if value % 8:
        raise InvalidRequest(f"{param} must be a multiple of 8 (the VAE works on 8x8 blocks)", param=param)
    return value


def _check_text(f: ImageFields, lim: ImageLimits) -> str | None:
    if not 1 <= len(f.prompt) <= lim.max_prompt_chars:
        raise InvalidRequest(f"prompt must be 1 to {lim.max_prompt_chars} characters", param="prompt")
    negative = lim.default_negative_prompt if f.negative_prompt is None else f.negative_prompt
    if len(negative) > lim.max_prompt_chars:
        raise InvalidRequest(f"negative_prompt must be at most {lim.max_prompt_chars} characters",
                             param="negative_prompt")
    return negative


def resolve(cfg: ModelConfig, f: ImageFields, *, size_params: tuple[str, str] = ("width", "height")) -> ImageRequest:
    lim = cfg.limits.image
    negative = _check_text(f, lim)
    width = _check_side(f.width or lim.default_size, lim, size_params[0])
    height = _check_side(f.height or lim.default_size, lim, size_params[1])
    steps = lim.default_steps if f.steps is None else f.steps
    if not lim.min_steps <= steps <= lim.max_steps:
        raise InvalidRequest(f"num_inference_steps must be between {lim.min_steps} and {lim.max_steps}",
                             param="num_inference_steps")
    guidance = lim.default_guidance if f.guidance is None else f.guidance
    if not lim.min_guidance <= guidance <= lim.max_guidance:
        raise InvalidRequest(f"guidance_scale must be between {lim.min_guidance} and {lim.max_guidance}",
                             param="guidance_scale")
    if f.n > cfg.limits.max_n:
        raise InvalidRequest(f"n must be at most {cfg.limits.max_n} for model {cfg.name!r}", param="n")
    return ImageRequest(f"img-{uuid.uuid4().hex}", f.prompt, negative, width, height, steps, guidance, f.n, f.seed)

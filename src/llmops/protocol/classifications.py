"""POST /v1/classifications: images in (base64 JSON, or a multipart upload), top-k labels and scores out."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llmops.protocol.common import INT32_MAX
from llmops.protocol.wire import WireModel


class ClassificationRequest(WireModel):
    """The JSON form. The multipart form has the same fields: `model`, `top_k`, and one `file` per image."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="a classify model; default: the first configured")
    images: list[str] = Field(min_length=1, description="base64 encoded images (PNG, JPEG, WebP, GIF, BMP)")
    top_k: int | None = Field(None, ge=1, le=INT32_MAX, description="labels per image; default: the model's "
                              "limits.classify.default_top_k")


class LabelScore(BaseModel):
    label: str
    score: float = Field(description="softmax probability")
    index: int = Field(description="the class id")


class Classification(BaseModel):
    index: int = Field(description="the image's position in the request")
    labels: list[LabelScore] = Field(description="best first")


class ClassificationUsage(BaseModel):
    images: int


class ClassificationResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[Classification]
    usage: ClassificationUsage

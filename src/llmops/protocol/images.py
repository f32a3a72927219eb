"""Images: the OpenAI Images API (POST /v1/images/generations), the guide's POST /generate, and the
image jobs API (POST /v1/images/jobs, GET and DELETE /v1/images/jobs/{id}).

Ranges (sizes, steps, guidance, prompt length) are per-model settings, checked by the API layer against
the model's limits, so the schemas here fix the types and what is never valid for any model (a zero or
malformed size, a seed outside 0..2^63-1): those get a 400 naming the field, never a silent default.
Unset fields take the model's defaults.

The OpenAI-shaped body's fields are in protocol/fields.py's `images` table: any other field it is sent
(OpenAI's `quality`, `style`, `output_format`, ... or one OpenAI does not have) is a 400
`unsupported_parameter` naming it, unless null, false or empty, as for chat. The guide's body has no table:
a field it does not declare is refused by pydantic (`extra="forbid"`), a 400 naming it, as the other
non-OpenAI bodies (classifications, the v2 protocol) refuse theirs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmops.protocol.common import INT32_MAX
from llmops.protocol.fields import refused_field
from llmops.protocol.wire import WireModel

SEED_MAX = 2**63 - 1  # torch generators take up to 2^64 - 1: room for seed + i over a request's n images
Seed = Annotated[int, Field(ge=0, le=SEED_MAX, description="0 to 2^63-1; the same seed gives the same image")]
Side = Annotated[int, Field(ge=1, le=65_536, description="pixels; the model's limits narrow it")]
SIZE_PATTERN = r"^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}$"


# Options OpenAI's image types take as null meaning "unset": null here means the default.
IMAGE_NULLABLE_DEFAULTS: dict[str, Any] = {"n": 1, "response_format": "b64_json"}


class ImageGenerationRequest(WireModel):
    """POST /v1/images/generations and POST /v1/images/jobs. Undeclared fields are kept (`extra="allow"`) for
    `unsupported_field` to name."""

    model_config = ConfigDict(extra="allow")

    prompt: str
    model: str | None = None
    n: int = Field(1, ge=1, le=INT32_MAX)
    size: str | None = Field(None, pattern=SIZE_PATTERN, description="WxH, e.g. 512x512")
    response_format: Literal["b64_json", "url"] = "b64_json"
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: Seed | None = None
    user: str | None = None

    @field_validator(*IMAGE_NULLABLE_DEFAULTS, mode="before")
    @classmethod
    def _null_is_default(cls, v: Any, info: Any) -> Any:
        return IMAGE_NULLABLE_DEFAULTS[info.field_name] if v is None else v

    def unsupported_field(self) -> str | None:
        """The first field this request sets that the server does not honour (protocol/fields.py), if any."""
        return refused_field("images", dict(self.model_extra or {}))


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class GenerateRequest(WireModel):
    """The guide's request, field for field (an optional `model` and `seed` added); any other field is a 400
    naming it (it had been ignored: `"n": 2` gave one image)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    width: Side | None = None
    height: Side | None = None
    model: str | None = None
    seed: Seed | None = None


class GenerateResponse(BaseModel):
    """The guide's response."""

    image_base64: str
    generation_time: float
    parameters: dict[str, Any]


class JobProgress(BaseModel):
    step: int
    total: int


class ImageJob(BaseModel):
    id: str
    object: Literal["image.job"] = "image.job"
    model: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created_at: int
    position: int | None = Field(None, description="place in the model's queue while queued (0: next)")
    progress: JobProgress | None = None
    data: list[ImageData] | None = None
    error: dict[str, Any] | None = None

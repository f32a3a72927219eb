"""The Open Inference Protocol (KServe V2; also spoken by Triton, MLServer and TorchServe), REST/JSON.

Endpoints: GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}, /v2/models/{name}/ready,
POST /v2/models/{name}/infer, and the `/v2/models/{name}/versions/{version}` forms of the last three (a model's
one version: api/inference_v2.MODEL_VERSION). Errors are `{"error": "<message>"}`.
A tensor is `{name, shape, datatype, parameters?, data}`; `data` is the tensor's elements in row-major
order, flat or nested as its shape is (`flatten`). Fields the protocol marks optional are left out of
responses when unset.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmops.protocol.wire import WireModel

Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
                   "FP64", "BYTES"]
Parameters = dict[str, Any]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Request(WireModel):
    """A request's objects: strict about JSON types (protocol/wire.py); the tensor's `data` and the
    `parameters` stay free JSON."""

    model_config = ConfigDict(extra="forbid")


class RequestInput(_Request):
    name: str
    shape: list[int] = Field(description="the tensor's shape; -1 is not allowed in a request")
    datatype: Datatype
    parameters: Parameters | None = None
    data: list[Any]


class RequestOutput(_Request):
    name: str
    parameters: Parameters | None = None


class InferenceRequest(_Request):
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(_Wire):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: Parameters | None = None
    data: list[Any]


class InferenceResponse(_Wire):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(_Wire):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1 marks a dimension of any size")


class ModelMetadata(_Wire):
    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ServerMetadata(_Wire):
    name: str
    version: str
    extensions: list[str]


class ErrorResponse(_Wire):
    error: str


def flatten(data: list[Any], shape: list[int], count: int) -> list[Any]:
    """The elements of `data`, a tensor of `shape` holding `count` elements, in row-major order: `data` is
    flat (`count` elements, none a list) or nested exactly as `shape` (at depth d every list holds shape[d]
    items, and only the innermost hold elements). ValueError naming the first mismatch otherwise: a ragged
    nesting whose total happens to match (shape [1, 3, 32, 32] as [[3071 numbers], [1 number]]) included.
    One pass a level, no recursion."""
    if not any(isinstance(x, list) for x in data):
        if len(data) != count:
            raise ValueError(f"shape {shape} holds {count} elements but data has {len(data)}")
        return data
    level: list[Any] = [data]
    for depth, size in enumerate(shape):
        below: list[Any] = []
        for item in level:
            if not isinstance(item, list):
                raise ValueError(f"data is nested {depth} deep where shape {shape} nests {len(shape)}: nest it "
                                 "as the shape is, or send it flat")
            if len(item) != size:
                raise ValueError(f"data's nesting does not match shape {shape}: a list {depth} deep holds "
                                 f"{len(item)} items where the shape has {size}")
            below.extend(item)
        level = below
    if any(isinstance(x, list) for x in level):
        raise ValueError(f"data is nested deeper than shape {shape}: nest it as the shape is, or send it flat")
    return level


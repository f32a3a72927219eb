"""Read a GGUF file's metadata keys without loading the model or its token table.

`gguf.GGUFReader` parses every tensor and the whole 262k-entry vocabulary (23 s for Gemma here); this
reader skips arrays and stops at the tensor table, which takes well under a second.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
            12: "<d"}
_STRING, _ARRAY = 8, 9

Scalar = int | float | bool | str


def _read(f: BinaryIO, fmt: str) -> int | float | bool:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF file")
    value: int | float | bool = struct.unpack(fmt, data)[0]
    return value


def _read_str(f: BinaryIO) -> str:
    n = int(_read(f, "<Q"))
    return f.read(n).decode("utf-8", errors="replace")


def _skip_array(f: BinaryIO) -> None:
    elem_type, count = int(_read(f, "<I")), int(_read(f, "<Q"))
    if elem_type == _STRING:
        for _ in range(count):
            f.seek(int(_read(f, "<Q")), 1)
    elif elem_type == _ARRAY:
        for _ in range(count):
            _skip_array(f)
    else:
        f.seek(struct.calcsize(_SCALARS[elem_type]) * count, 1)


def read_metadata(path: str | Path) -> dict[str, Scalar]:
    """Every scalar and string key of the GGUF header (arrays are skipped)."""
    out: dict[str, Scalar] = {}
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        _read(f, "<I")  # version
        _read(f, "<Q")  # tensor count
        for _ in range(int(_read(f, "<Q"))):
            key, vtype = _read_str(f), int(_read(f, "<I"))
            if vtype == _STRING:
                out[key] = _read_str(f)
            elif vtype == _ARRAY:
                _skip_array(f)
            else:
                out[key] = _read(f, _SCALARS[vtype])
    return out

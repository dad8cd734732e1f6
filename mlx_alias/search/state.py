"""A search checkpoint on disk: plain JSON values and numpy arrays in one safetensors file.

The JSON sits in the safetensors metadata (``state``), each array is a tensor that the JSON
names as ``{"$array": name}``. Reading it parses JSON and copies tensor bytes, nothing more:
a file from a run folder can never run code, and a damaged or foreign one is refused in one
sentence. Written atomically and flushed to disk (a power cut leaves the previous step's).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from mlx_alias.files import atomic_write_bytes

FORMAT = "mlx-alias.search-state/4"
_ARRAY = "$array"


class StateError(ValueError):
    """A checkpoint that cannot be read; the message is one sentence naming the file."""


class _Unreadable(Exception):
    """Why a file is not a checkpoint this version reads (a clause)."""


def _pack(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, np.ndarray):
        name = f"a{len(arrays)}"
        arrays[name] = np.ascontiguousarray(value)
        return {_ARRAY: name}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("checkpoint dicts need string keys")
        return {k: _pack(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_pack(v, arrays) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a checkpoint holds JSON values and numpy arrays, not {type(value).__name__}")


def _unpack(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if set(value) == {_ARRAY}:
            return arrays[value[_ARRAY]]
        return {k: _unpack(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_unpack(v, arrays) for v in value]
    return value


def save_state(path: Path, state: dict[str, Any]) -> None:
    arrays: dict[str, np.ndarray] = {}
    text = json.dumps(_pack(state, arrays))
    atomic_write_bytes(path, save_tensors(arrays, metadata={"format": FORMAT, "state": text}), durable=True)


def _metadata(data: bytes) -> dict:
    """The safetensors header's ``__metadata__`` (the format: an 8-byte length, then JSON)."""
    if len(data) < 8:
        raise _Unreadable("it is shorter than a safetensors header")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise _Unreadable("it is not a whole safetensors file (truncated, or another kind of file)")
    header = json.loads(data[8 : 8 + size])
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise _Unreadable("it carries no search state")
    return metadata


def load_state(path: Path) -> dict[str, Any]:
    """The state ``save_state`` wrote; ``StateError`` for anything else."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise StateError(f"cannot read the checkpoint {path} ({exc.strerror or exc})") from exc
    try:
        metadata = _metadata(data)
        if metadata.get("format") != FORMAT:
            raise _Unreadable(f"its format is {metadata.get('format')!r}, not {FORMAT!r}")
        arrays = load_tensors(data)
        state = _unpack(json.loads(metadata["state"]), arrays)
        if not isinstance(state, dict):
            raise _Unreadable("its state is not an object")
    except _Unreadable as exc:
        raise StateError(f"the checkpoint {path} cannot be read: {exc}") from exc
    except (ValueError, KeyError, TypeError, SafetensorError) as exc:  # JSON, UTF-8, tensors
        raise StateError(f"the checkpoint {path} cannot be read: it is damaged") from exc
    return state

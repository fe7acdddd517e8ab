"""Decoding and checking of stored raw samples, shared by every on-disk format (folder, TFDS).

A raw sample is `{modality: value}` as `scenes.render` returns it, and `scenes.raw_specs(cfg)`
says what each value must be (`RawSpec.check`: dtype, shape, value range or class count). Every
reader decodes its storage into that form and calls `check_sample`, which runs those checks and
prefixes each failure with where the value came from (a file path, a TFDS record). What is a
valid depth map is therefore decided in scenes.py, and how stored values are decoded (PNG, poses
without padding, the figure count) is decided here, once for all formats.

Failures are `RawDataError` (a ValueError) naming the place, the field, the expected and the
found value.
"""

from __future__ import annotations

import io
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from m4.data import scenes

# Keys of a raw sample that are not modalities but travel with one.
NUM_FIGURES = "num_figures"
CAPTION = "caption"
POSES = "poses"


class RawDataError(ValueError):
    """A stored raw value (a file or a record) that does not match its spec."""


def error(where: str, field: str, expected: Any, found: Any) -> RawDataError:
    return RawDataError(f"{where}: {field}: expected {expected}, found {found}")


def check_value(name: str, value: Any, spec: scenes.RawSpec, *, where: str) -> Any:
    """Checks one modality value against its spec; the error names `where`."""
    if spec.dtype != "str" and not isinstance(value, np.ndarray):
        # RawSpec.check would convert a list; a stored value must already be an array.
        raise error(where, name, f"a numpy array ({spec.dtype} {list(spec.shape)})",
                    type(value).__name__)
    if spec.dtype != "str" and np.issubdtype(value.dtype, np.floating) and value.size:
        bad = value.size - int(np.count_nonzero(np.isfinite(value)))
        if bad:
            raise error(where, name, "finite values", f"{bad} NaN/Inf values")
    try:
        spec.check(name, value)
    except ValueError as e:
        raise RawDataError(f"{where}: {e}") from None
    return value


def check_num_figures(value: Any, max_figures: int, *, where: str) -> int:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise error(where, NUM_FIGURES, "an int", type(value).__name__)
    if not 0 <= value <= max_figures:
        raise error(where, NUM_FIGURES, f"0..{max_figures} (max_figures)", int(value))
    return int(value)


def check_sample(sample: Mapping[str, Any], specs: Mapping[str, scenes.RawSpec], *, where: str,
                 modalities: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Checks the given modalities (default: all of `specs`) of one raw sample.

    Returns a new dict with exactly those modalities, plus `num_figures` when poses are among
    them (it says how many pose rows hold figures; the rows after it must be zero).
    """
    modalities = tuple(specs) if modalities is None else tuple(modalities)
    out: dict[str, Any] = {}
    for name in modalities:
        if name not in specs:
            raise error(where, name, f"a modality of {sorted(specs)}", repr(name))
        if name not in sample:
            raise error(where, name, "a value", "none (key missing)")
        out[name] = check_value(name, sample[name], specs[name], where=where)
    if POSES in out:
        if NUM_FIGURES not in sample:
            raise error(where, NUM_FIGURES, "a value (poses need it)", "none (key missing)")
        poses = out[POSES]
        n = check_num_figures(sample[NUM_FIGURES], poses.shape[0], where=where)
        if np.any(poses[n:]):
            raise error(where, POSES, f"rows {n}.. all zero (num_figures={n})", "non-zero rows")
        out[NUM_FIGURES] = n
    return out


# ---------------------------------------------------------------------------------------------
# Poses of a variable number of figures: stored [num_figures, J, 3], sampled [max_figures, J, 3].

def pad_poses(poses: np.ndarray, spec: scenes.RawSpec, *, where: str) -> tuple[np.ndarray, int]:
    """[n, J, 3] -> ([max_figures, J, 3] zero-padded, n). More than max_figures is an error."""
    max_figures, *rest = spec.shape
    expected_shape = f"[num_figures <= {max_figures}, {', '.join(map(str, rest))}]"
    if not isinstance(poses, np.ndarray):
        raise error(where, POSES, f"a numpy array {expected_shape}", type(poses).__name__)
    if poses.dtype != np.dtype(spec.dtype):
        raise error(where, POSES, f"dtype {spec.dtype}", poses.dtype.name)
    if poses.ndim != len(spec.shape) or list(poses.shape[1:]) != rest:
        raise error(where, POSES, f"shape {expected_shape}", list(poses.shape))
    n = poses.shape[0]
    if n > max_figures:
        raise error(where, POSES, f"at most max_figures={max_figures} figures", n)
    padded = np.zeros(spec.shape, poses.dtype)
    padded[:n] = poses
    return padded, n


# ---------------------------------------------------------------------------------------------
# PNG: the storage of the uint8 image modalities (rgb, semseg) in every format. Encoding with
# PIL rather than TensorFlow is what lets the TFDS builder run without TensorFlow.

def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W] or [H, W, 3] -> PNG bytes (lossless)."""
    if image.dtype != np.uint8:
        raise RawDataError(f"encode_png: expected dtype uint8, found {image.dtype.name}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes | pathlib.Path, *, where: str, field: str) -> np.ndarray:
    """PNG bytes or file -> the array as stored: [H, W] for grey or palette (the indices, which
    is how segmentation datasets store class ids), [H, W, C] for colour. Nothing is converted,
    so an RGBA or 16-bit file reaches the spec check and fails there with what it holds."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with Image.open(source) as image:
            if image.format != "PNG":
                raise error(where, field, "a PNG file", f"a {image.format} file")
            image.load()
            array = np.asarray(image)
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise error(where, field, "a readable PNG file", f"{type(e).__name__}: {e}") from None
    if array.dtype == bool:  # 1-bit PNG
        raise error(where, field, "an 8-bit PNG", "a 1-bit PNG")
    return array

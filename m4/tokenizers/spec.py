"""A tokenizer's preprocessing spec: what raw input it accepts and how it normalises it.

The spec travels inside the tokenizer artifact (spec.json), so a tokenizer can never be fed with
the wrong constants: `validate` refuses input of the wrong shape, dtype kind, value range or class
ids with a message that names the modality, the field, the expected and the received value, and
`normalize` / `denormalize` are the only raw <-> model conversions (training uses them too).

Normalisations (`PreprocessSpec.normalization`):
  rgb_uint8     uint8 0..255                  -> x / 127.5 - 1, in [-1, 1]
  linear_range  float in [lo, hi] (depth: [0, DEPTH_MAX] metres) -> 2 (x - lo) / (hi - lo) - 1
  unit_vectors  float unit vectors (normals)  -> unchanged, in [-1, 1]
  class_ids     integer ids in [0, num_classes) -> unchanged (embedded by the model)
  standardize   float features                -> (x - mean) / std per channel (stats measured on
                                                 the training data, stored in `norm_params`)
  pose_pixels   [F, J, 3] (x, y, visible)     -> x, y scaled to [-1, 1] by the resolution
  text          str                           -> SentencePiece ids
Dtype rule: float specs accept any floating dtype (float16/32/64; computed in float32), integer
specs (uint8 images, class ids) accept any integer dtype; the other kind is refused.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp
import numpy as np


class TokenizerInputError(ValueError):
    """Input that does not match a tokenizer's preprocessing spec."""


@dataclasses.dataclass(frozen=True)
class PreprocessSpec:
    modality: str
    kind: str                                  # "image" | "poses" | "text"
    dtype: str                                 # raw dtype ("uint8", "float32", "str")
    shape: tuple[int, ...]                     # raw shape of ONE example (no batch axis)
    normalization: str                         # see the module docstring
    resolution: int                            # side of the images the data comes from
    vocab_size: int                            # token ids are in [0, vocab_size)
    token_shape: tuple[int, ...]               # tokens of one example
    value_range: tuple[float, float] | None = None
    num_classes: int | None = None
    norm_params: dict = dataclasses.field(default_factory=dict)
    description: str = ""
    content_hash: str = ""                     # sha256 of weights + spec + config (artifact.py)

    # ------------------------------------------------------------------------ serialisation
    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["shape"], out["token_shape"] = list(self.shape), list(self.token_shape)
        out["value_range"] = list(self.value_range) if self.value_range is not None else None
        return out

    @classmethod
    def from_json(cls, data: dict) -> "PreprocessSpec":
        data = dict(data)
        data["shape"] = tuple(data["shape"])
        data["token_shape"] = tuple(data["token_shape"])
        if data.get("value_range") is not None:
            data["value_range"] = tuple(data["value_range"])
        return cls(**data)

    def canonical_json(self) -> str:
        """The spec without its hash, as stable bytes for hashing."""
        data = self.to_json()
        data.pop("content_hash")
        return json.dumps(data, sort_keys=True)

    # ----------------------------------------------------------------------------- validate
    def validate(self, x: Any) -> np.ndarray:
        """Checks a batch of raw examples; returns it as a numpy array (computation dtype)."""
        if self.kind == "text":
            raise TypeError("text specs are validated by the text tokenizer")
        name = f"{self.modality} tokenizer"
        if isinstance(x, (list, tuple)):
            x = np.asarray(x)
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TokenizerInputError(
                f"{name}: input: expected an array of shape [B, {_dims(self.shape)}], received "
                f"{type(x).__name__}")
        x = np.asarray(x)
        expected_shape = f"[B, {_dims(self.shape)}]"
        if x.ndim == len(self.shape) and tuple(x.shape) == self.shape:
            raise TokenizerInputError(
                f"{name}: input shape: expected {expected_shape} (a batch), received "
                f"{list(x.shape)}, a single example; add a batch axis, e.g. x[None]")
        if x.ndim != len(self.shape) + 1 or tuple(x.shape[1:]) != self.shape:
            hint = ""
            wrong_side = x.ndim == len(self.shape) + 1 and x.shape[1] != self.shape[0]
            if self.kind == "image" and wrong_side:
                hint = f" (this tokenizer was trained at resolution {self.resolution})"
            raise TokenizerInputError(
                f"{name}: input shape: expected {expected_shape}, received {list(x.shape)}{hint}")
        if x.shape[0] == 0:
            raise TokenizerInputError(f"{name}: input shape: expected B >= 1, received 0 examples")
        integer_spec = np.issubdtype(np.dtype(self.dtype), np.integer)
        kind_ok = (np.issubdtype(x.dtype, np.integer) if integer_spec
                   else np.issubdtype(x.dtype, np.floating))
        if not kind_ok:
            raise TokenizerInputError(
                f"{name}: input dtype: expected {self._dtype_words()}, received {x.dtype}"
                f"{_range_words(x)}{self._dtype_hint(x)}")
        if integer_spec:
            x = x.astype(np.int32)
        else:
            x = x.astype(np.float32)
            if not np.all(np.isfinite(x)):
                bad = int(np.size(x) - np.isfinite(x).sum())
                raise TokenizerInputError(
                    f"{name}: input values: expected finite numbers, received {bad} NaN/Inf "
                    f"value(s)")
        self._check_values(name, x)
        return x

    def _dtype_words(self) -> str:
        if self.normalization == "class_ids":
            return f"integer class ids (e.g. uint8) in [0, {self.num_classes})"
        if np.issubdtype(np.dtype(self.dtype), np.integer):
            lo, hi = self.value_range
            return f"an integer dtype (e.g. {self.dtype}) with values in [{lo:g}, {hi:g}]"
        return f"a floating dtype (e.g. {self.dtype})"

    def _dtype_hint(self, x: np.ndarray) -> str:
        if self.normalization == "class_ids":
            return ("; these look like normalised or one-hot values, not class ids: pass the "
                    "label map itself, e.g. labels.astype(np.uint8)")
        if self.normalization == "rgb_uint8" and x.size and np.nanmax(x) <= 1.0:
            return "; for 0-1 floats use (x * 255).round().astype(np.uint8)"
        return ""

    def _check_values(self, name: str, x: np.ndarray) -> None:
        if self.normalization == "class_ids":
            lo, hi = int(x.min()), int(x.max())
            if lo < 0 or hi >= self.num_classes:
                raise TokenizerInputError(
                    f"{name}: input class ids: expected values in [0, {self.num_classes}), "
                    f"received values in [{lo}, {hi}]")
            return
        if self.normalization == "pose_pixels":
            self._check_poses(name, x)
            return
        lo, hi = self.value_range
        tol = 1e-4 * max(1.0, abs(hi - lo))
        xmin, xmax = float(x.min()), float(x.max())
        if xmin < lo - tol or xmax > hi + tol:
            raise TokenizerInputError(
                f"{name}: input values: expected values in [{lo:g}, {hi:g}], received values in "
                f"[{xmin:g}, {xmax:g}]{self._range_hint(xmin, xmax)}")
        if self.normalization == "unit_vectors":
            norms = np.linalg.norm(x, axis=-1)
            worst = float(np.max(np.abs(norms - 1.0)))
            if worst > 0.05:
                raise TokenizerInputError(
                    f"{name}: input values: expected unit vectors along the last axis "
                    f"(|n| = 1), received norms in [{float(norms.min()):.3g}, "
                    f"{float(norms.max()):.3g}]; values mapped to [0, 1] must be mapped back "
                    f"with 2 * x - 1")

    def _range_hint(self, xmin: float, xmax: float) -> str:
        if self.normalization == "linear_range" and self.modality == "depth" and xmax > 100:
            return "; depth is expected in metres (millimetres? divide by 1000)"
        return ""

    def _check_poses(self, name: str, x: np.ndarray) -> None:
        lo, hi = self.value_range
        coords, visible = x[..., :2], x[..., 2]
        if not np.all((visible == 0) | (visible == 1)):
            vals = np.unique(visible[(visible != 0) & (visible != 1)])[:5]
            raise TokenizerInputError(
                f"{name}: input visible flags (last field of each joint): expected 0 or 1, "
                f"received values such as {[float(v) for v in vals]}")
        cmin, cmax = float(coords.min()), float(coords.max())
        if cmin < lo - 1e-3 or cmax > hi + 1e-3:
            raise TokenizerInputError(
                f"{name}: input joint coordinates: expected pixels in [{lo:g}, {hi:g}], "
                f"received values in [{cmin:g}, {cmax:g}]")

    # ---------------------------------------------------------------------------- transforms
    def normalize(self, x: jnp.ndarray) -> jnp.ndarray:
        """Raw (validated) batch -> model input. Works on numpy and inside jit."""
        n = self.normalization
        if n == "rgb_uint8":
            return x.astype(jnp.float32) / 127.5 - 1.0
        if n == "linear_range":
            lo, hi = self.value_range
            out = 2.0 * (x.astype(jnp.float32) - lo) / (hi - lo) - 1.0
            return out[..., None] if len(self.shape) == 2 else out
        if n == "unit_vectors":
            return x.astype(jnp.float32)
        if n == "class_ids":
            return x.astype(jnp.int32)
        if n == "standardize":
            mean = jnp.asarray(self.norm_params["mean"], jnp.float32)
            std = jnp.asarray(self.norm_params["std"], jnp.float32)
            return (x.astype(jnp.float32) - mean) / std
        if n == "pose_pixels":
            scale = jnp.asarray([2.0 / self.resolution, 2.0 / self.resolution, 1.0])
            shift = jnp.asarray([-1.0, -1.0, 0.0])
            return x.astype(jnp.float32) * scale + shift
        raise ValueError(f"unknown normalization {n!r}")

    def denormalize(self, y: jnp.ndarray) -> jnp.ndarray:
        """Model output -> raw-like values in the spec's dtype and range (inside jit)."""
        n = self.normalization
        if n == "rgb_uint8":
            return jnp.clip(jnp.round((y + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
        if n == "linear_range":
            lo, hi = self.value_range
            out = jnp.clip((y + 1.0) * 0.5 * (hi - lo) + lo, lo, hi)
            return out[..., 0] if len(self.shape) == 2 else out
        if n == "unit_vectors":
            return y / jnp.maximum(jnp.linalg.norm(y, axis=-1, keepdims=True), 1e-6)
        if n == "class_ids":
            return jnp.argmax(y, axis=-1).astype(jnp.uint8)
        if n == "standardize":
            mean = jnp.asarray(self.norm_params["mean"], jnp.float32)
            std = jnp.asarray(self.norm_params["std"], jnp.float32)
            out = y * std + mean
            if self.value_range is not None:
                out = jnp.clip(out, *self.value_range)
            return out
        raise ValueError(f"denormalize: unsupported normalization {n!r}")


def _dims(shape: tuple[int, ...]) -> str:
    return ", ".join(str(d) for d in shape)


def _range_words(x: np.ndarray) -> str:
    if x.size == 0 or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        return ""
    xf = x.astype(np.float64)
    return f" (values in [{np.nanmin(xf):g}, {np.nanmax(xf):g}])"

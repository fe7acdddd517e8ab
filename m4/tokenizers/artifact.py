"""A trained tokenizer on disk, and the objects `m4.tokenizers.load` returns.

Artifact directory:
    spec.json            PreprocessSpec (what encode accepts, normalisation, vocabulary size,
                         token shape, content hash)
    config.json          the full training config (model shape, quantizer, data)
    weights.safetensors  model state (parameters and codebook statistics), flat "a/b/c" keys
    tokenizer.model      (captions only) the SentencePiece model instead of weights

content_hash = sha256(weights or SentencePiece bytes, canonical spec JSON, config JSON); `load`
recomputes it and refuses an artifact whose files were changed or damaged.

Every tokenizer has `encode(x) -> int32 [B, *token_shape]` and `decode(tokens) -> x` on batches.
Image and pose tokenizers run jitted: batches are cut into chunks of at most `chunk` examples and
the last chunk is padded to a power of two, so any batch size reuses a handful of compilations.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx, traverse_util
from safetensors.numpy import load_file, save_file

from m4.tokenizers import text as text_lib
from m4.tokenizers.spec import PreprocessSpec, TokenizerInputError
from m4.tokenizers.vector_vq import PoseVQ, figure_present
from m4.tokenizers.vqvae import ImageVQ

SPEC_FILE = "spec.json"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


class ArtifactError(ValueError):
    pass


# ------------------------------------------------------------------------------------ models
def build_model(config, spec: PreprocessSpec, rngs: nnx.Rngs) -> nnx.Module:
    """The network of an image or pose tokenizer, from its config and spec."""
    if spec.kind == "image":
        channels = 1 if len(spec.shape) == 2 else spec.shape[-1]
        return ImageVQ(config.model, config.quantizer, channels=channels,
                       num_classes=spec.num_classes or 0, rngs=rngs)
    if spec.kind == "poses":
        return PoseVQ(config.model, config.quantizer, num_joints=spec.shape[1], rngs=rngs)
    raise ArtifactError(f"build_model: no network for tokenizer kind {spec.kind!r}")


def flat_state(model: nnx.Module) -> dict[str, np.ndarray]:
    pure = nnx.to_pure_dict(nnx.state(model))
    return {"/".join(map(str, k)): np.asarray(v)
            for k, v in traverse_util.flatten_dict(pure).items()}


def load_flat_state(model: nnx.Module, flat: dict[str, np.ndarray], where: str) -> None:
    state = nnx.state(model)
    pure = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    missing = [k for k in pure if "/".join(map(str, k)) not in flat]
    extra = sorted(set(flat) - {"/".join(map(str, k)) for k in pure})
    if missing or extra:
        raise ArtifactError(f"{where}: weights do not match the config's network: missing "
                            f"{['/'.join(map(str, k)) for k in missing][:5]}, unexpected "
                            f"{extra[:5]}")
    new = {}
    for key, value in pure.items():
        loaded = flat["/".join(map(str, key))]
        if loaded.shape != value.shape:
            raise ArtifactError(f"{where}: weight {'/'.join(map(str, key))}: expected shape "
                                f"{list(value.shape)}, found {list(loaded.shape)}")
        new[key] = jnp.asarray(loaded, value.dtype)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(new))
    nnx.update(model, state)


# -------------------------------------------------------------------------------- hashing
def content_hash(payload: bytes, spec: PreprocessSpec, config_json: str) -> str:
    h = hashlib.sha256()
    for part in (payload, spec.canonical_json().encode(), config_json.encode()):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _config_json(config) -> str:
    return json.dumps(json.loads(config.to_json()), sort_keys=True)


def _write(path: pathlib.Path, spec: PreprocessSpec, config, payload_name: str,
           payload: bytes) -> PreprocessSpec:
    import dataclasses

    path.mkdir(parents=True, exist_ok=True)
    config_json = _config_json(config)
    spec = dataclasses.replace(spec, content_hash=content_hash(payload, spec, config_json))
    (path / payload_name).write_bytes(payload)
    (path / CONFIG_FILE).write_text(config_json + "\n")
    # The spec goes last: an artifact without spec.json is visibly incomplete.
    (path / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=2, sort_keys=True) + "\n")
    return spec


def save_model_artifact(path: str | pathlib.Path, config, spec: PreprocessSpec,
                        model: nnx.Module) -> PreprocessSpec:
    """Writes an image/pose tokenizer artifact; returns the spec with its content hash."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        file = pathlib.Path(tmp) / WEIGHTS_FILE
        save_file(flat_state(model), str(file))
        payload = file.read_bytes()
    return _write(pathlib.Path(path), spec, config, WEIGHTS_FILE, payload)


def save_text_artifact(path: str | pathlib.Path, config, spec: PreprocessSpec,
                       model_proto: bytes) -> PreprocessSpec:
    return _write(pathlib.Path(path), spec, config, text_lib.MODEL_FILE, model_proto)


# ---------------------------------------------------------------------------------- loading
def load(path: str | pathlib.Path):
    """Loads a tokenizer artifact (or a training workdir that holds one in `tokenizer/`), or a
    HuggingFace WordPiece tokenizer .json (the reference's caption tokenizer, wordpiece.py)."""
    path = pathlib.Path(path)
    if path.suffix == ".json" and path.is_file():
        from m4.tokenizers.wordpiece import load_wordpiece  # needs the optional `tokenizers`

        return load_wordpiece(path)
    if not (path / SPEC_FILE).exists() and (path / "tokenizer" / SPEC_FILE).exists():
        path = path / "tokenizer"
    if not (path / SPEC_FILE).exists():
        raise ArtifactError(f"{path}: not a tokenizer artifact (no {SPEC_FILE}); train one with "
                            f"`m4 tokenizer train --config tokenizers/<modality>.py --workdir DIR`")
    spec = PreprocessSpec.from_json(json.loads((path / SPEC_FILE).read_text()))
    config_json = (path / CONFIG_FILE).read_text().strip()
    config = ml_collections.ConfigDict(json.loads(config_json))
    payload_name = text_lib.MODEL_FILE if spec.kind == "text" else WEIGHTS_FILE
    payload = (path / payload_name).read_bytes()
    actual = content_hash(payload, spec, config_json)
    if actual != spec.content_hash:
        raise ArtifactError(f"{path}: content hash mismatch (expected {spec.content_hash[:12]}, "
                            f"computed {actual[:12]}): the artifact was modified or damaged")
    if spec.kind == "text":
        return text_lib.TextTokenizer(payload, spec, config, path)
    # Built abstractly (shapes only): random initialisation would cost seconds per tokenizer
    # on a CPU, only to be overwritten by the weights.
    model = nnx.eval_shape(lambda: build_model(config, spec, nnx.Rngs(0)))
    load_flat_state(model, load_file(str(path / WEIGHTS_FILE)), str(path))
    cls = ImageTokenizer if spec.kind == "image" else PoseTokenizer
    return cls(model, spec, config, path)


# ----------------------------------------------------------------------------- runtime API
def _chunked(fn: Callable, x: np.ndarray, chunk: int) -> list:
    """Applies a jitted `fn` to `x` in chunks; pads the last to a power of two (<= chunk)."""
    outs = []
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk]
        n = len(part)
        size = min(chunk, 1 << (n - 1).bit_length())
        if size > n:  # repeat the last example: padding always is valid input
            part = np.concatenate([part, np.repeat(part[-1:], size - n, axis=0)])
        outs.append(jax.tree.map(lambda a: np.asarray(a)[:n], fn(part)))
    return outs


class _ModelTokenizer:
    def __init__(self, model: nnx.Module, spec: PreprocessSpec, config, path=None,
                 chunk: int = 64):
        self.spec = spec
        self.config = config
        self.path = path
        self.modality = spec.modality
        self.vocab_size = spec.vocab_size
        self.token_shape = tuple(spec.token_shape)
        self.chunk = chunk
        self.model = model
        self._graphdef, self._state = nnx.split(model)

    def _merged(self, state):
        return nnx.merge(self._graphdef, state)

    def encode(self, x) -> np.ndarray:
        x = self.spec.validate(x)
        return np.concatenate(_chunked(lambda a: self._encode(self._state, a), x, self.chunk))

    def decode(self, tokens) -> np.ndarray:
        tokens = self._check_tokens(tokens)
        return np.concatenate(_chunked(lambda t: self._decode(self._state, t), tokens,
                                       self.chunk))

    def _check_tokens(self, tokens) -> np.ndarray:
        tokens = np.asarray(tokens)
        expected = f"[B, {', '.join(map(str, self.token_shape))}]"
        if not np.issubdtype(tokens.dtype, np.integer):
            raise TokenizerInputError(f"{self.modality} tokenizer: decode input dtype: expected "
                                      f"integer token ids, received {tokens.dtype}")
        if tokens.ndim != len(self.token_shape) + 1 or tuple(tokens.shape[1:]) != self.token_shape:
            raise TokenizerInputError(f"{self.modality} tokenizer: decode input shape: expected "
                                      f"{expected}, received {list(tokens.shape)}")
        if tokens.shape[0] == 0:
            raise TokenizerInputError(f"{self.modality} tokenizer: decode input: expected B >= 1")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.vocab_size:
            raise TokenizerInputError(
                f"{self.modality} tokenizer: decode input ids: expected values in "
                f"[0, {self.vocab_size}), received values in [{lo}, {hi}]")
        return tokens.astype(np.int32)


class ImageTokenizer(_ModelTokenizer):
    """rgb / depth / normals / semseg / features: raw [B, *spec.shape] <-> int32 [B, h, w]."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        spec = self.spec

        @jax.jit
        def encode(state, x):
            return self._merged(state).encode(spec.normalize(x))

        @jax.jit
        def decode(state, tokens):
            return spec.denormalize(self._merged(state).decode(tokens))

        self._encode, self._decode = encode, decode


class PoseTokenizer(_ModelTokenizer):
    """poses [B, F, J, 3] (x, y, visible) <-> int32 [B, F * tokens_per_figure]; id 0 = absent."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        spec = self.spec
        res = float(spec.resolution)

        @jax.jit
        def encode(state, x):
            return self._merged(state).encode(spec.normalize(x), figure_present(x))

        @jax.jit
        def decode(state, tokens):
            out, present = self._merged(state).decode(tokens)
            xy = jnp.clip((out[..., :2] + 1.0) * (res / 2.0), 0.0, res)
            visible = (out[..., 2:] > 0).astype(jnp.float32)
            poses = jnp.concatenate([xy, visible], axis=-1)
            return jnp.where(present[..., None, None], poses, 0.0)

        self._encode, self._decode = encode, decode

"""Synthetic checkpoints in the reference layout (random weights), for tests and benchmarks.

`write_reference_checkpoint` streams a safetensors file tensor by tensor (header first, then each
tensor generated and written on the fly), so writing a `large` or `xl` checkpoint needs memory
for one tensor only. The metadata holds the reference config as strings, like the released files.
"""

from __future__ import annotations

import json
import pathlib
import struct

import numpy as np

from m4.convert.ml4m_config import reference_config_dict, reference_state_shapes
from m4.model.adapters import sincos_table
from m4.model.configs import FourMConfig


def _value(key: str, shape: tuple, config: FourMConfig, rng: np.random.Generator,
           shared_cache: dict) -> np.ndarray:
    if key.endswith(".pos_emb"):
        name = key.split(".", 1)[1].rsplit(".", 1)[0]
        spec = config.spec(name)
        if spec.positions == "sincos":
            return sincos_table(spec, config.dim)[None].astype(np.float32)
    if key.endswith(".mod_emb") and config.share_modality_embeddings:
        name = key.split(".", 1)[1].rsplit(".", 1)[0]
        if name not in shared_cache:
            shared_cache[name] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
        return shared_cache[name]
    is_norm = any(n in key for n in ("norm1.", "norm2.", "query_norm.", "context_norm.",
                                     "encoder_norm.", "decoder_norm."))
    if is_norm and key.endswith(".bias") and not config.norm_bias:
        return np.zeros(shape, np.float32)                      # the zero bias buffer
    if is_norm and key.endswith(".weight"):
        return (1.0 + 0.02 * rng.standard_normal(shape)).astype(np.float32)
    return (0.02 * rng.standard_normal(shape)).astype(np.float32)


def write_reference_checkpoint(path, config: FourMConfig, *, seed: int = 0,
                               norm_bias_buffers: bool = True, tied: bool | None = None,
                               image_size: int = 224, patch_size: int = 16,
                               with_metadata: bool = True, progress: bool = False) -> dict:
    """Writes a reference-layout safetensors file for `config` (built from reference modality
    specs); returns the reference config dict (also written as metadata)."""
    shapes = reference_state_shapes(config, norm_bias_buffers=norm_bias_buffers, tied=tied)
    ref_config = reference_config_dict(config, image_size, patch_size)
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = int(np.prod(shape)) * 4
        header[key] = {"dtype": "F32", "shape": list(shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    if with_metadata:
        header["__metadata__"] = {k: str(v) for k, v in ref_config.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(seed)
    shared: dict = {}
    keys = list(shapes)
    if progress:
        from tqdm import tqdm
        keys = tqdm(keys, desc="write checkpoint", unit="tensor")
    with open(pathlib.Path(path), "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for key in keys:
            value = _value(key, shapes[key], config, rng, shared)
            f.write(np.ascontiguousarray(value, np.float32).tobytes())
    return ref_config

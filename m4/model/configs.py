"""Model config and the size presets of the reference (tiny .. xl).

`FourMConfig` is a frozen dataclass (hashable, so it can be a static attribute of the module and
an argument of jitted functions) and round-trips through JSON (`to_dict` / `from_dict`), which is
how a checkpoint records the model it belongs to.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from m4.modalities import ModalitySpec, Vocabulary, validate_specs


class ConfigError(ValueError):
    pass


# name -> (dim, encoder depth, decoder depth, heads). mlp_ratio 4 and head dim 64 everywhere.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (384, 6, 6, 6),
    "small": (512, 8, 8, 8),
    "base": (768, 12, 12, 12),
    "large": (1024, 24, 24, 16),
    "xl": (2048, 24, 24, 32),
}

# The two block variants of the reference: the released models are all "swiglu_nobias".
VARIANTS: dict[str, dict[str, Any]] = {
    "swiglu_nobias": dict(mlp="swiglu", qkv_bias=False, proj_bias=False, mlp_bias=False,
                          norm_bias=False),
    "gelu": dict(mlp="gelu", qkv_bias=True, proj_bias=True, mlp_bias=True, norm_bias=True),
}

DTYPES = ("float32", "bfloat16")
REMAT = ("none", "full", "dots")
LOGITS = ("chunked", "full")


@dataclasses.dataclass(frozen=True)
class FourMConfig:
    modalities: tuple[ModalitySpec, ...]
    dim: int = 384
    encoder_depth: int = 6
    decoder_depth: int = 6
    num_heads: int = 6
    mlp_ratio: float = 4.0
    mlp: str = "swiglu"                 # "swiglu" (gated SiLU) | "gelu" (exact GELU)
    qkv_bias: bool = False
    proj_bias: bool = False
    mlp_bias: bool = False
    norm_bias: bool = False
    norm_eps: float = 1e-6
    share_modality_embeddings: bool = True   # one mod_emb per modality for encoder and decoder
    tie_logits: bool = False            # output projection = decoder token embedding
    dtype: str = "float32"              # compute dtype of the matmuls; params stay float32
    scan_layers: bool = True            # lax.scan over the blocks (False: unrolled)
    remat: str = "none"                 # rematerialise each block: none | full | dots
    logits: str = "chunked"             # loss over each row's own vocabulary: chunked | full
    logits_chunk: int = 128             # rows per chunk of the chunked loss
    # Std of the encoder's token-embedding init. The reference's 0.02 makes an input token's
    # identity ~2% of its (sincos position + modality) embedding at the start; long runs grow it,
    # but a short run (the demo's) learns to read its inputs much sooner from a larger start.
    input_token_init_std: float = 0.02

    def __post_init__(self):
        object.__setattr__(self, "modalities", validate_specs(self.modalities))

        def fail(field, expected, got):
            raise ConfigError(f"FourMConfig.{field}: expected {expected}, got {got!r}")

        for field in ("dim", "encoder_depth", "decoder_depth", "num_heads", "logits_chunk"):
            if int(getattr(self, field)) < 1:
                fail(field, "a positive integer", getattr(self, field))
        if self.dim % self.num_heads:
            fail("num_heads", f"a divisor of dim={self.dim}", self.num_heads)
        if self.mlp not in ("swiglu", "gelu"):
            fail("mlp", "'swiglu' or 'gelu'", self.mlp)
        if self.dtype not in DTYPES:
            fail("dtype", f"one of {DTYPES}", self.dtype)
        if self.remat not in REMAT:
            fail("remat", f"one of {REMAT}", self.remat)
        if self.logits not in LOGITS:
            fail("logits", f"one of {LOGITS}", self.logits)
        for s in self.modalities:
            if s.positions == "sincos" and s.kind in ("image", "pixels") and self.dim % 4:
                fail("dim", f"a multiple of 4 (2D sin-cos positions of {s.name!r})", self.dim)
            if s.positions == "sincos" and self.dim % 2:
                fail("dim", f"a multiple of 2 (sin-cos positions of {s.name!r})", self.dim)

    # -- derived -------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.dim * self.mlp_ratio)
        # The reference's gated MLP keeps the parameter count of the plain one: 2/3 of the width.
        return int(2 * hidden / 3) if self.mlp == "swiglu" else hidden

    @property
    def vocab(self) -> Vocabulary:
        return Vocabulary(self.modalities)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.modalities)

    def index(self, name: str) -> int:
        for i, s in enumerate(self.modalities):
            if s.name == name:
                return i
        raise KeyError(f"unknown modality {name!r} (known: {list(self.names)})")

    def spec(self, name_or_index) -> ModalitySpec:
        if isinstance(name_or_index, int):
            return self.modalities[name_or_index]
        return self.modalities[self.index(name_or_index)]

    def replace(self, **changes) -> "FourMConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["modalities"] = [s.to_dict() for s in self.modalities]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FourMConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"FourMConfig: unknown fields {unknown}")
        d = dict(d)
        d["modalities"] = tuple(ModalitySpec.from_dict(m) for m in d["modalities"])
        return cls(**d)


def preset(size: str, modalities: Sequence[ModalitySpec], variant: str = "swiglu_nobias",
           **overrides) -> FourMConfig:
    """The reference preset `fm_<size>_*_<variant>` over `modalities`; `overrides` win."""
    if size not in SIZES:
        raise ConfigError(f"preset: size expected one of {list(SIZES)}, got {size!r}")
    if variant not in VARIANTS:
        raise ConfigError(f"preset: variant expected one of {list(VARIANTS)}, got {variant!r}")
    dim, enc, dec, heads = SIZES[size]
    fields = dict(dim=dim, encoder_depth=enc, decoder_depth=dec, num_heads=heads, mlp_ratio=4.0,
                  **VARIANTS[variant])
    fields.update(overrides)
    return FourMConfig(modalities=tuple(modalities), **fields)

"""Modality specs and the global vocabulary: the single description of every modality.

Adapters, masking, tokenizers, the sampler and the converter read a `ModalitySpec`; nothing else
hard-codes a modality. A model config holds an ordered tuple of specs; a modality's *index* is its
position in that tuple (the `enc_mod` / `dec_mod` values of a batch, see BATCH_CONTRACT.md).

Kinds:
- "image":      a grid of discrete tokens (h, w), flattened row-major. Decoder: learned mask token,
                bidirectional attention within the modality. 2D sin-cos positions (or learned).
- "sequence":   discrete tokens in order (text, serialised detections, ...), span-masked. Decoder:
                teacher forcing, causal within the sequence. 1D positions.
- "vectors":    a set of discrete tokens without a grid (global-embedding tokens, poses). Decoder
                like "image". Learned positions by default (the reference's global tokens).
- "pixels":     continuous patches of an image grid (e.g. RGB pixels), input only; a linear patch
                projection without bias. 2D sin-cos positions.
- "embeddings": continuous vectors in a sequence (e.g. precomputed T5 text embeddings), input
                only; a linear projection with bias. 1D positions among visible vectors.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np

KINDS = ("image", "sequence", "vectors", "pixels", "embeddings")
TOKEN_KINDS = ("image", "sequence", "vectors")
CONTINUOUS_KINDS = ("pixels", "embeddings")
POSITION_TYPES = ("sincos", "learned")


class ModalitySpecError(ValueError):
    """A modality spec (or a list of them) is inconsistent."""


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
    """One modality. Frozen and hashable, so it can live inside a static model config."""

    name: str
    kind: str
    vocab_size: int = 0               # local vocabulary (0 for continuous kinds)
    length: int = 0                   # positions L: h*w for grids, max length for sequences
    grid: tuple[int, int] | None = None   # (h, w) for "image" / "pixels"
    patch_dim: int = 0                # continuous kinds: features per slot (patch*patch*channels)
    patch_size: int = 0               # "pixels": side of a square patch (channels = patch_dim/p^2)
    positions: str = "sincos"         # "sincos" | "learned"
    pos_table: int | None = None      # rows of the position table (default: length). The
                                      # reference builds 512 rows for every sequence modality.
    input: bool = True                # may appear in the encoder
    target: bool = True               # may be predicted by the decoder
    tokenizer: str | None = None      # name/path of the tokenizer artifact, informative
    source: str | None = None         # the raw modality it is computed from when that is not its
                                      # own name: "rgb" for RGB pixel patches "rgb_pixels" (the
                                      # reference's rgb@224 beside tok_rgb@224)

    def __post_init__(self):
        def fail(field, expected, got):
            raise ModalitySpecError(
                f"modality {self.name!r}: field {field!r} expected {expected}, got {got!r}")

        if not isinstance(self.name, str) or not self.name:
            fail("name", "a non-empty string", self.name)
        if self.kind not in KINDS:
            fail("kind", f"one of {KINDS}", self.kind)
        if self.positions not in POSITION_TYPES:
            fail("positions", f"one of {POSITION_TYPES}", self.positions)
        if self.grid is not None:
            grid = tuple(int(g) for g in self.grid)
            if len(grid) != 2 or min(grid) < 1:
                fail("grid", "(h, w) with h, w >= 1", self.grid)
            object.__setattr__(self, "grid", grid)
        if self.kind in ("image", "pixels"):
            if self.grid is None:
                fail("grid", f"(h, w) for kind {self.kind!r}", None)
            if self.length == 0:
                object.__setattr__(self, "length", self.grid[0] * self.grid[1])
            elif self.length != self.grid[0] * self.grid[1]:
                fail("length", f"h*w = {self.grid[0] * self.grid[1]} for grid {self.grid}",
                     self.length)
        if self.length < 1:
            fail("length", "a positive number of positions", self.length)
        if self.kind in TOKEN_KINDS:
            if self.vocab_size < 1:
                fail("vocab_size", f"a positive size for token kind {self.kind!r}", self.vocab_size)
            if self.patch_dim:
                fail("patch_dim", f"0 for token kind {self.kind!r}", self.patch_dim)
        else:
            if self.vocab_size:
                fail("vocab_size", f"0 for continuous kind {self.kind!r}", self.vocab_size)
            if self.patch_dim < 1:
                fail("patch_dim", f"a positive size for continuous kind {self.kind!r}",
                     self.patch_dim)
            if self.target:
                fail("target", f"False (kind {self.kind!r} is input only)", self.target)
        if self.kind == "pixels" and self.patch_size:
            if self.patch_dim % (self.patch_size ** 2):
                fail("patch_dim", f"a multiple of patch_size^2 = {self.patch_size ** 2}",
                     self.patch_dim)
        if self.pos_table is not None and self.pos_table < self.length:
            # Sequences index the table by position among visible/target tokens, up to `length`.
            fail("pos_table", f">= length ({self.length})", self.pos_table)
        if not (self.input or self.target):
            fail("input/target", "at least one of them True", (self.input, self.target))
        if self.source is not None and (not isinstance(self.source, str) or not self.source):
            fail("source", "None or a non-empty raw modality name", self.source)

    # -- derived properties -------------------------------------------------------------------
    @property
    def is_token(self) -> bool:
        return self.kind in TOKEN_KINDS

    @property
    def is_continuous(self) -> bool:
        return self.kind in CONTINUOUS_KINDS

    @property
    def raw(self) -> str:
        """The raw modality its values come from (a scene's key, a generation input's name)."""
        return self.source or self.name

    @property
    def causal(self) -> bool:
        """Decoder attention inside this modality is causal (sequences) or bidirectional."""
        return self.kind == "sequence"

    @property
    def num_positions(self) -> int:
        """Rows of this modality's position table."""
        return self.pos_table if self.pos_table is not None else self.length

    @property
    def channels(self) -> int:
        if self.kind != "pixels" or not self.patch_size:
            raise ModalitySpecError(f"modality {self.name!r}: channels needs kind 'pixels' and "
                                    f"a patch_size")
        return self.patch_dim // self.patch_size ** 2

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["grid"] is not None:
            d["grid"] = list(d["grid"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModalitySpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModalitySpecError(f"modality spec {d.get('name')!r}: unknown fields {unknown}")
        d = dict(d)
        if d.get("grid") is not None:
            d["grid"] = tuple(d["grid"])
        return cls(**d)


def validate_specs(specs: Sequence[ModalitySpec]) -> tuple[ModalitySpec, ...]:
    """Checks a model's list of modalities (unique names, at least one input and one target)."""
    specs = tuple(specs)
    if not specs:
        raise ModalitySpecError("modalities: expected at least one ModalitySpec, got none")
    for s in specs:
        if not isinstance(s, ModalitySpec):
            raise ModalitySpecError(f"modalities: expected ModalitySpec entries, got {type(s)}")
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ModalitySpecError(f"modalities: duplicate names {dupes}")
    if not any(s.input for s in specs):
        raise ModalitySpecError(f"modalities: none is an input ({names})")
    if not any(s.target for s in specs):
        raise ModalitySpecError(f"modalities: none is a target ({names})")
    return specs


def index_of(specs: Sequence[ModalitySpec], name: str) -> int:
    for i, s in enumerate(specs):
        if s.name == name:
            return i
    raise KeyError(f"unknown modality {name!r} (known: {[s.name for s in specs]})")


class Vocabulary:
    """One global id space: modality m's local id i is global id offset(m) + i.

    Only token kinds take a range; continuous kinds have size 0 (their offset is where the next
    range starts, so ranges stay contiguous and ordered like the specs).
    """

    def __init__(self, specs: Iterable[ModalitySpec]):
        self.specs = tuple(specs)
        offsets, sizes, start = [], [], 0
        for s in self.specs:
            offsets.append(start)
            size = s.vocab_size if s.is_token else 0
            sizes.append(size)
            start += size
        self.offsets = np.asarray(offsets, np.int32)    # [M]
        self.sizes = np.asarray(sizes, np.int32)        # [M]
        self.size = int(start)
        self._index = {s.name: i for i, s in enumerate(self.specs)}

    def _idx(self, name_or_index) -> int:
        if isinstance(name_or_index, (int, np.integer)):
            if not 0 <= int(name_or_index) < len(self.specs):
                raise KeyError(f"modality index {name_or_index} out of range "
                               f"[0, {len(self.specs)})")
            return int(name_or_index)
        if name_or_index not in self._index:
            raise KeyError(f"unknown modality {name_or_index!r} (known: {list(self._index)})")
        return self._index[name_or_index]

    def offset(self, name_or_index) -> int:
        return int(self.offsets[self._idx(name_or_index)])

    def range(self, name_or_index) -> tuple[int, int]:
        """[start, stop) of the modality's global ids."""
        i = self._idx(name_or_index)
        return int(self.offsets[i]), int(self.offsets[i] + self.sizes[i])

    def to_global(self, name_or_index, local_ids: np.ndarray) -> np.ndarray:
        i = self._idx(name_or_index)
        local_ids = np.asarray(local_ids)
        if local_ids.size and (local_ids.min() < 0 or local_ids.max() >= self.sizes[i]):
            raise ValueError(f"modality {self.specs[i].name!r}: local ids must lie in "
                             f"[0, {self.sizes[i]}), got [{local_ids.min()}, {local_ids.max()}]")
        return local_ids + self.offsets[i]

    def to_local(self, global_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(modality index, local id) of global ids."""
        global_ids = np.asarray(global_ids)
        if global_ids.size and (global_ids.min() < 0 or global_ids.max() >= self.size):
            raise ValueError(f"global ids must lie in [0, {self.size})")
        token_mods = np.flatnonzero(self.sizes > 0)
        pos = np.searchsorted(self.offsets[token_mods], global_ids, side="right") - 1
        mod = token_mods[pos]
        return mod.astype(np.int32), (global_ids - self.offsets[mod]).astype(np.int32)

    def __repr__(self) -> str:
        parts = [f"{s.name}:[{o},{o + n})" for s, o, n in zip(self.specs, self.offsets, self.sizes)
                 if n]
        return f"Vocabulary(size={self.size}, {', '.join(parts)})"

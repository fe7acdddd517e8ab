"""What the sampler knows about each modality, on the host, and how it becomes encoder slots.

A generation state maps modality names to `ModalityState`: the token of every position and
whether it is known (given as input or already generated). A modality that is not known at all is
simply absent from the encoder; a target's unknown positions are what the decoding loops fill.

Sequences hold their *visible input* tokens (e.g. the prompt `a red sphere [S_1]`, or a whole
caption with its [EOS]) as a known prefix; position j of the encoder is the j-th visible token, as
in training. Continuous modalities (pixels, embeddings) carry `values` instead of tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from m4.data.span_masking import SentinelSpec
from m4.modalities import ModalitySpec

SEQUENCE_LIKE = ("sequence", "embeddings")   # positions count visible tokens, dropped -> [S_1]
# Sequence slot counts are rounded up to this, so prompts of similar length share a compile.
SEQUENCE_BUCKET = 8


class GenerationInputError(ValueError):
    """Inputs or a state the sampler cannot use."""


@dataclasses.dataclass
class ModalityState:
    tokens: np.ndarray                    # [B, L] int32 local ids (0 for continuous kinds)
    known: np.ndarray                     # [B, L] bool
    values: np.ndarray | None = None      # [B, L, P] float32, continuous kinds only

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    def copy(self) -> "ModalityState":
        return ModalityState(self.tokens.copy(), self.known.copy(),
                             None if self.values is None else self.values.copy())


State = dict[str, ModalityState]


# --------------------------------------------------------------------------------- builders
def known_tokens(spec: ModalitySpec, tokens) -> ModalityState:
    """A fully known token modality from ids [B, L] (or [B, h, w] for grids)."""
    tokens = np.asarray(tokens)
    where = f"input {spec.name!r}"
    if not np.issubdtype(tokens.dtype, np.integer):
        raise GenerationInputError(f"{where}: expected integer token ids, got dtype {tokens.dtype}")
    if spec.grid is not None and tokens.ndim == 3 and tuple(tokens.shape[1:]) == spec.grid:
        tokens = tokens.reshape(tokens.shape[0], -1)
    if tokens.ndim != 2 or tokens.shape[1] != spec.length:
        raise GenerationInputError(f"{where}: expected token ids of shape [B, {spec.length}]"
                                   f"{' or [B, %d, %d]' % spec.grid if spec.grid else ''}, got "
                                   f"{list(tokens.shape)}")
    _check_ids(spec, tokens, where)
    return ModalityState(tokens.astype(np.int32), np.ones(tokens.shape, bool))


def unknown(spec: ModalitySpec, batch_size: int) -> ModalityState:
    """An image-like target with nothing known yet."""
    shape = (batch_size, spec.length)
    return ModalityState(np.zeros(shape, np.int32), np.zeros(shape, bool))


def sequences(spec: ModalitySpec, rows: Sequence[Sequence[int]], sentinels: SentinelSpec | None,
              *, max_length: int | None = None) -> ModalityState:
    """Sequence inputs: each row's visible ids (a prompt with sentinels, or a whole text ending in
    [EOS]) as a known prefix. An empty row means 'absent' as an input and '[S_1]' as a target."""
    length = max_length or spec.length
    b = len(rows)
    tokens = np.zeros((b, length), np.int32)
    known = np.zeros((b, length), bool)
    for i, row in enumerate(rows):
        row = np.asarray(row, np.int64).reshape(-1)
        if row.shape[0] > length:
            raise GenerationInputError(
                f"input {spec.name!r}[{i}]: {row.shape[0]} tokens do not fit the modality's "
                f"{length} positions")
        _check_ids(spec, row, f"input {spec.name!r}[{i}]")
        if sentinels is not None and row.shape[0] and row[0] == sentinels.pad_id:
            raise GenerationInputError(f"input {spec.name!r}[{i}]: starts with the pad id "
                                       f"{sentinels.pad_id}; pass the ids without padding")
        tokens[i, :row.shape[0]] = row
        known[i, :row.shape[0]] = True
    return ModalityState(tokens, known)


def empty_sequence_target(spec: ModalitySpec, batch_size: int,
                          sentinels: SentinelSpec) -> ModalityState:
    """A sequence to generate from scratch: its input is the single sentinel [S_1] (reference
    `init_empty_target_modality`)."""
    return sequences(spec, [[sentinels.sentinel(1)]] * batch_size, sentinels)


def continuous(spec: ModalitySpec, values) -> ModalityState:
    """Pixels [B, L, patch_dim] or embeddings [B, n <= L, patch_dim] (float)."""
    values = np.asarray(values)
    where = f"input {spec.name!r}"
    if not np.issubdtype(values.dtype, np.floating):
        raise GenerationInputError(f"{where}: expected float values, got dtype {values.dtype}")
    rows_ok = (values.shape[1] == spec.length if spec.kind == "pixels"
               else values.shape[1] <= spec.length) if values.ndim == 3 else False
    if not rows_ok or values.shape[2] != spec.patch_dim:
        rows = spec.length if spec.kind == "pixels" else f"<= {spec.length}"
        raise GenerationInputError(f"{where}: expected values of shape [B, {rows}, "
                                   f"{spec.patch_dim}], got {list(values.shape)}")
    b, n, p = values.shape
    full = np.zeros((b, spec.length, p), np.float32)
    full[:, :n] = values
    known = np.zeros((b, spec.length), bool)
    known[:, :n] = True
    return ModalityState(np.zeros((b, spec.length), np.int32), known, full)


def _check_ids(spec: ModalitySpec, ids: np.ndarray, where: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= spec.vocab_size):
        bad = int(ids.min() if ids.min() < 0 else ids.max())
        raise GenerationInputError(f"{where}: token id {bad} outside the vocabulary "
                                   f"[0, {spec.vocab_size})")


def batch_size_of(state: Mapping[str, ModalityState]) -> int:
    sizes = {name: m.batch_size for name, m in state.items()}
    if not sizes:
        raise GenerationInputError("generation state: expected at least one modality")
    if len(set(sizes.values())) != 1:
        raise GenerationInputError(f"generation state: modalities have different batch sizes "
                                   f"{sizes}")
    return next(iter(sizes.values()))


# ------------------------------------------------------------------------------ encoder slots
def capacity(spec: ModalitySpec, known: np.ndarray) -> int:
    """Encoder slots a modality needs: its largest known count over the batch (sequences rounded
    up to SEQUENCE_BUCKET so that prompts of similar length reuse a compilation)."""
    count = int(known.sum(axis=1).max()) if known.size else 0
    if count and spec.kind in SEQUENCE_LIKE:
        count = min(spec.length, -(-count // SEQUENCE_BUCKET) * SEQUENCE_BUCKET)
    return count


def pack_encoder(state: Mapping[str, ModalityState], specs: Sequence[ModalitySpec],
                 names: Sequence[str], pixel_dim: int) -> dict[str, np.ndarray]:
    """Encoder slots of the known tokens of `names` (in that order), known positions first.

    Returns enc_ids, enc_mod, enc_pos, enc_valid ([B, N]), enc_first ([B, N] bool: the first slot
    of a sequence-like modality the example has; guidance turns it into [S_1] when the modality is
    dropped) and, when pixel_dim > 0, enc_pixels [B, N, pixel_dim]. At least one slot (invalid
    padding) so that an unconditional encoder is never empty.
    """
    index = {s.name: i for i, s in enumerate(specs)}
    parts = []
    b = batch_size_of(state)
    for name in names:
        spec, ms = specs[index[name]], state[name]
        cap = capacity(spec, ms.known)
        if cap == 0:
            continue
        order = np.argsort(~ms.known, axis=1, kind="stable")[:, :cap]          # [B, cap]
        valid = np.take_along_axis(ms.known, order, 1)
        part = {
            "enc_ids": np.where(valid, np.take_along_axis(ms.tokens, order, 1), 0),
            "enc_mod": np.full((b, cap), index[name], np.int32),
            "enc_pos": (np.broadcast_to(np.arange(cap), (b, cap)) if spec.kind in SEQUENCE_LIKE
                        else order),
            "enc_valid": valid,
            "enc_first": np.zeros((b, cap), bool),
        }
        if spec.kind in SEQUENCE_LIKE:
            part["enc_first"][:, 0] = valid[:, 0]
        if pixel_dim:
            pixels = np.zeros((b, cap, pixel_dim), np.float32)
            if ms.values is not None:
                width = ms.values.shape[2]
                pixels[..., :width] = np.take_along_axis(ms.values, order[..., None], 1)
            part["enc_pixels"] = np.where(valid[..., None], pixels, 0.0)
        parts.append(part)
    if not parts:
        parts.append({"enc_ids": np.zeros((b, 1), np.int32), "enc_mod": np.zeros((b, 1), np.int32),
                      "enc_pos": np.zeros((b, 1), np.int32), "enc_valid": np.zeros((b, 1), bool),
                      "enc_first": np.zeros((b, 1), bool)})
        if pixel_dim:
            parts[0]["enc_pixels"] = np.zeros((b, 1, pixel_dim), np.float32)
    out = {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]}
    for k in ("enc_ids", "enc_mod", "enc_pos"):
        out[k] = out[k].astype(np.int32)
    return out

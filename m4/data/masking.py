"""Multimodal masking: one token sample -> the fixed-shape masked batch of BATCH_CONTRACT.md.

`Masker` is the 4M pre-training masking (reference `UnifiedMasking`, REFERENCE_4M.md §3):
  1. choose a mixture component (weighted);
  2. split the input budget over the modalities: floor(Dir(alpha_in) * N_in), then the leftover
     tokens one at a time by the argmax of further Dirichlet draws (so alpha ~ 0 stays empty; alpha
     is clamped to 1e-9); clamp to each modality's length (tokens lost to clamping are not
     redistributed);
  3. the same for targets with alpha_tgt, where an image-like modality's cap is `L - input budget`,
     so inputs and targets are disjoint within a modality;
  4. image-like modalities: one random permutation, the first `in` positions are inputs, the next
     `tgt` targets; sequences: T5 span masking (`span_masking.py`).
`FixedMasker` is the reference `TransferMasking` (given input and target modalities, fully visible
and fully predicted), and `all_inputs_visible` builds the start of generation. (Masks the
reference drew are packed by `m4.convert.ml4m_batch`.)

Shapes are static: N_in encoder and N_tgt decoder slots per example (the largest totals); slots
beyond the used count are padding with `*_valid` False and zeros elsewhere. Slots follow the spec
order, positions ascending. Everything is host-side numpy with an explicit `np.random.Generator`
(`Masker.__call__(sample, rng)` has the signature of a grain `random_map` function).

A sample is `{modality name: array}`: image/vectors int [L] (or the [h, w] grid), pixels float
[L, patch_dim] (or [h, w, patch_dim]; uint8 as stored in token shards is normalised by
`m4.data.pixels.normalize`), sequence int [n] text ids without padding (the masker
appends EOS and truncates, `span_masking.prepare_sequence`), embeddings float [n, patch_dim]
(truncated to the spec's length, as the reference). A modality absent from the sample (or None)
gets no tokens: it is left out of that sample's Dirichlet draws, so its share goes to the present
modalities. A budget share drawn for a direction a modality cannot take (spec.input/target False,
continuous targets) is lost like clamped tokens, as the reference does for T5-caption targets.
The keys in `METADATA_KEYS` (what the token pipeline adds) are ignored; any other unknown key is
an error. Continuous inputs (pixels, embeddings) travel in `enc_pixels` [N_in, P], P the largest
patch_dim; an embeddings sentinel slot is a zero vector.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from m4.data import pixels, span_masking
from m4.data.span_masking import KEEP_SCHEMES, SentinelSpec
from m4.modalities import KINDS, ModalitySpec

GRID_KINDS = ("image", "vectors", "pixels")  # masked as a set of positions (no sentinels)
CONTINUOUS_KINDS = ("pixels", "embeddings")  # input only, values in enc_pixels
ALPHA_FLOOR = 1e-9  # the reference clamps alphas to this, so alpha = 0 still draws
METADATA_KEYS = frozenset({"id", "crop"})

Example = dict[str, np.ndarray]


class MaskingError(ValueError):
    pass


# ----------------------------------------------------------------------------------------------
# Mixtures


@dataclasses.dataclass(frozen=True, eq=False)
class Mixture:
    """A weighted mixture of K Dirichlet components over M named modalities."""

    modalities: tuple[str, ...]
    input_alphas: np.ndarray  # [K, M] float64 >= 0
    target_alphas: np.ndarray  # [K, M] float64 >= 0
    keep: tuple[tuple[str, ...], ...]  # [K][M] span-masking keep scheme (sequences only)
    weights: np.ndarray  # [K] float64, sums to 1
    name: str = ""

    def __post_init__(self):
        k, m, where = len(self.weights), len(self.modalities), f"mixture {self.name!r}"
        if len(set(self.modalities)) != m:
            raise MaskingError(f"{where}: duplicate modality names {self.modalities}")
        for field in ("input_alphas", "target_alphas"):
            alphas = getattr(self, field)
            if alphas.shape != (k, m):
                raise MaskingError(f"{where}: {field} has shape {alphas.shape}, expected "
                                   f"(components, modalities) = {(k, m)}")
            if not np.all(np.isfinite(alphas)) or np.any(alphas < 0):
                raise MaskingError(f"{where}: {field} must be finite and >= 0")
        if len(self.keep) != k or any(len(row) != m for row in self.keep):
            raise MaskingError(f"{where}: keep must be [components][modalities]")
        bad = sorted({s for row in self.keep for s in row} - set(KEEP_SCHEMES))
        if bad:
            raise MaskingError(f"{where}: keep scheme(s) {bad}, expected one of {KEEP_SCHEMES}")
        if k == 0 or not np.all(np.isfinite(self.weights)) or np.any(self.weights < 0) \
                or not np.isclose(self.weights.sum(), 1.0):
            raise MaskingError(f"{where}: weights {self.weights} must be >= 0 and sum to 1 "
                               "(from_config normalises them)")

    @property
    def num_components(self) -> int:
        return len(self.weights)

    @classmethod
    def from_config(cls, config: Mapping) -> "Mixture":
        """From a mixture config of `experiments/mixtures.py` (a ConfigDict or a plain dict).

        `config.modalities[name]` holds `input_alphas`, `target_alphas` (one per component) and an
        optional `keep` (default "random"); `config.weights` (None = uniform) weighs components.
        """
        name = str(config.get("name", ""))
        where = f"mixture {name!r}"
        entries = config.get("modalities")
        if not entries:
            raise MaskingError(f"{where}: config has no 'modalities'")
        names = tuple(entries.keys())
        rows_in, rows_tgt, keeps = [], [], []
        for mod in names:
            entry = entries[mod]
            for field in ("input_alphas", "target_alphas"):
                if field not in entry:
                    raise MaskingError(f"{where}: modality {mod!r} has no {field}")
            rows_in.append(np.asarray(entry["input_alphas"], np.float64))
            rows_tgt.append(np.asarray(entry["target_alphas"], np.float64))
            keeps.append(entry.get("keep", None))
        sizes = {len(r) for r in rows_in + rows_tgt}
        if len(sizes) != 1:
            raise MaskingError(f"{where}: alpha lists have different lengths {sorted(sizes)}")
        k = sizes.pop()
        keep = []
        for mod, row in zip(names, keeps):
            row = ("random",) * k if row is None else tuple(row)
            if len(row) != k:
                raise MaskingError(f"{where}: {mod!r} keep has {len(row)} entries, expected {k}")
            keep.append(row)
        weights = config.get("weights", None)
        weights = np.ones(k) if weights is None else np.asarray(weights, np.float64)
        if weights.shape != (k,) or np.any(weights < 0) or weights.sum() <= 0:
            raise MaskingError(f"{where}: weights {weights.tolist()} must be {k} values >= 0 "
                               "with a positive sum")
        return cls(modalities=names, input_alphas=np.stack(rows_in, 1),
                   target_alphas=np.stack(rows_tgt, 1), keep=tuple(zip(*keep)),
                   weights=weights / weights.sum(), name=name)

    def drop(self, names: Iterable[str]) -> "Mixture":
        """The same mixture without some modalities (e.g. ones a model does not have)."""
        names = set(names)
        unknown = sorted(names - set(self.modalities))
        if unknown:
            raise MaskingError(f"mixture {self.name!r}: cannot drop {unknown}: not in "
                               f"{self.modalities}")
        kept = [i for i, mod in enumerate(self.modalities) if mod not in names]
        return Mixture(modalities=tuple(self.modalities[i] for i in kept),
                       input_alphas=self.input_alphas[:, kept],
                       target_alphas=self.target_alphas[:, kept],
                       keep=tuple(tuple(row[i] for i in kept) for row in self.keep),
                       weights=self.weights, name=self.name)


@dataclasses.dataclass(frozen=True, eq=False)
class Budgets:
    """Token budgets of one sample, per modality in spec order."""

    component: int
    input: np.ndarray  # [M] int64
    target: np.ndarray  # [M] int64 (sequences: at most this many target tokens)


def dirichlet_budget(rng: np.random.Generator, alphas: np.ndarray, total: int,
                     active: np.ndarray) -> np.ndarray:
    """Split `total` tokens over the `active` entries: floor(Dir(alpha) * total), then the
    leftover one token at a time to the argmax of further Dirichlet draws (the reference rule:
    a modality with alpha ~ 0 never wins). int64 [M]; inactive entries get 0."""
    budget = np.zeros(alphas.shape[0], np.int64)
    index = np.flatnonzero(active)
    if total <= 0 or index.size == 0:
        return budget
    alpha = np.maximum(alphas[index], ALPHA_FLOOR)
    share = np.floor(rng.dirichlet(alpha) * total).astype(np.int64)
    leftover = total - int(share.sum())
    if leftover > 0:
        winners = rng.dirichlet(alpha, size=leftover).argmax(axis=-1)
        share += np.bincount(winners, minlength=index.size)
    budget[index] = share
    return budget


# ----------------------------------------------------------------------------------------------
# Shared: spec checks, sample checks, packing


def _count(value, field: str) -> tuple[int, int]:
    """A token count: an int >= 0, or an inclusive range (lo, hi)."""
    pair = (value, value) if np.ndim(value) == 0 else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                             for v in pair) or not 0 <= pair[0] <= pair[1]:
        raise MaskingError(f"{field}: expected an int >= 0 or a range (lo, hi) with "
                           f"0 <= lo <= hi, got {value!r}")
    return int(pair[0]), int(pair[1])


class _Packing:
    """What every masker shares: the specs, sample validation and empty examples."""

    def __init__(self, specs: Sequence[ModalitySpec], sentinels: SentinelSpec | None,
                 need_sentinels: bool = True):
        self.specs = tuple(specs)
        if not self.specs:
            raise MaskingError("specs: expected at least one modality spec")
        self.index: dict[str, int] = {}
        for i, spec in enumerate(self.specs):
            where = f"spec {spec.name!r}"
            if spec.name in self.index:
                raise MaskingError(f"specs: duplicate modality name {spec.name!r}")
            self.index[spec.name] = i
            if spec.kind not in KINDS:
                raise MaskingError(f"{where}: kind expected one of {KINDS}, got {spec.kind!r}")
            if spec.length <= 0:
                raise MaskingError(f"{where}: length expected > 0, got {spec.length}")
            if spec.kind in CONTINUOUS_KINDS and spec.patch_dim <= 0:
                raise MaskingError(f"{where}: {spec.kind} need patch_dim > 0, got {spec.patch_dim}")
            if spec.kind == "sequence" and need_sentinels:
                if sentinels is None:
                    raise MaskingError(f"{where} is a sequence: pass sentinels=SentinelSpec(...)")
                if sentinels.end_id > spec.vocab_size:
                    raise MaskingError(
                        f"{where}: vocab_size {spec.vocab_size} does not hold the special ids of "
                        f"{sentinels} (need > {sentinels.end_id - 1})")
                sentinels.check_length(spec.length, where)
        self.sentinels = sentinels
        self.lengths = np.asarray([s.length for s in self.specs], np.int64)  # [M]
        self.is_grid = np.asarray([s.kind in GRID_KINDS for s in self.specs])  # [M]
        self.can_input = np.asarray([bool(s.input) for s in self.specs])  # [M]
        # Continuous kinds have no tokens to predict.
        self.can_target = np.asarray([bool(s.target) and s.kind not in CONTINUOUS_KINDS
                                      for s in self.specs])  # [M]
        self.pixel_dim = max((s.patch_dim for s in self.specs if s.kind in CONTINUOUS_KINDS),
                             default=0)

    def prepare(self, sample: Mapping[str, Any]) -> dict[int, np.ndarray]:
        """Validate a sample; returns {modality index: array} (sequences with EOS, truncated)."""
        if not isinstance(sample, Mapping):
            raise MaskingError(f"sample: expected a mapping {{modality: array}}, got "
                               f"{type(sample).__name__}")
        prepared = {}
        for key, value in sample.items():
            if key in METADATA_KEYS or value is None:
                continue
            m = self.index.get(key)
            if m is None:
                raise MaskingError(f"sample: unknown modality {key!r} "
                                   f"(known: {', '.join(self.index)})")
            prepared[m] = self._check(self.specs[m], np.asarray(value))
        return prepared

    def _check(self, spec: ModalitySpec, value: np.ndarray) -> np.ndarray:
        where = f"sample[{spec.name!r}]"

        def check_shape(shapes):
            if value.shape not in shapes:
                raise MaskingError(f"{where}: expected shape {' or '.join(map(str, shapes))}, "
                                   f"got {value.shape}")

        if spec.kind == "pixels" and value.dtype == np.uint8:
            # Stored pixel patches (m4 pretokenize --pixel-inputs): scaled as generation does.
            value = pixels.normalize(value, pixels.channels_of(spec), where=where)
        if spec.kind in CONTINUOUS_KINDS:
            if not np.issubdtype(value.dtype, np.floating):
                raise MaskingError(f"{where}: expected float {spec.kind} (or uint8 pixels), got "
                                   f"dtype {value.dtype}")
            if spec.kind == "embeddings":
                if value.ndim != 2 or value.shape[1] != spec.patch_dim:
                    raise MaskingError(f"{where}: expected shape (n, {spec.patch_dim}), "
                                       f"got {value.shape}")
                return value[:spec.length].astype(np.float32, copy=False)
            grid = [(*spec.grid, spec.patch_dim)] if spec.grid is not None else []
            check_shape([(spec.length, spec.patch_dim)] + grid)
            return value.reshape(spec.length, spec.patch_dim).astype(np.float32, copy=False)
        if not np.issubdtype(value.dtype, np.integer):
            raise MaskingError(f"{where}: expected integer token ids, got dtype {value.dtype}")
        if spec.kind == "sequence":
            if value.ndim != 1:
                raise MaskingError(f"{where}: expected a 1-D sequence of token ids, "
                                   f"got shape {value.shape}")
        else:
            check_shape([(spec.length,)] + ([tuple(spec.grid)] if spec.grid is not None else []))
            value = value.reshape(spec.length)
        if value.size:
            lo, hi = int(value.min()), int(value.max())
            if lo < 0 or hi >= spec.vocab_size:
                raise MaskingError(f"{where}: token id {lo if lo < 0 else hi} outside the "
                                   f"vocabulary [0, {spec.vocab_size})")
        value = value.astype(np.int64, copy=False)
        if spec.kind == "sequence":
            special = self.sentinels.is_special(value)
            if special.any():
                s = self.sentinels
                raise MaskingError(
                    f"{where}: text holds special id {int(value[special][0])} at position "
                    f"{int(np.flatnonzero(special)[0])} (pad {s.pad_id}, eos {s.eos_id}, "
                    f"sentinels from {s.first_sentinel_id}); pass the text without padding or "
                    "EOS, the masker appends EOS")
            value = span_masking.prepare_sequence(value, spec.length, self.sentinels)
        return value

    def empty_example(self, input_slots: int, target_slots: int,
                      batch: tuple[int, ...] = ()) -> Example:
        """Zeroed slots: [*batch, N_in] / [*batch, N_tgt] (and enc_pixels [*batch, N_in, P])."""
        enc, dec = (*batch, input_slots), (*batch, target_slots)
        out = {
            "enc_ids": np.zeros(enc, np.int32),  # [N_in]
            "enc_mod": np.zeros(enc, np.int32),
            "enc_pos": np.zeros(enc, np.int32),
            "enc_valid": np.zeros(enc, bool),
            "dec_mod": np.zeros(dec, np.int32),  # [N_tgt]
            "dec_pos": np.zeros(dec, np.int32),
            "dec_ids_in": np.zeros(dec, np.int32),
            "dec_targets": np.zeros(dec, np.int32),
            "dec_valid": np.zeros(dec, bool),
            "dec_attn_valid": np.zeros(dec, bool),
            "dec_seq_index": np.zeros(dec, np.int32),
        }
        if self.pixel_dim:
            out["enc_pixels"] = np.zeros((*enc, self.pixel_dim), np.float32)  # [N_in, P]
        return out

    def _batched(self, fill, samples: Sequence[Mapping[str, Any]], input_slots: int,
                 target_slots: int) -> Example:
        """Fill each example straight into its row of the batch arrays (no per-example copies,
        which matter with large `enc_pixels`)."""
        if not samples:
            raise MaskingError("mask_batch: expected at least one sample")
        batch = self.empty_example(input_slots, target_slots, (len(samples),))
        for b, sample in enumerate(samples):
            fill(sample, {key: value[b] for key, value in batch.items()})
        return batch


class _Writer:
    """Fills one example's slots left to right; overflowing the static slot count is an error."""

    def __init__(self, out: Example, specs: Sequence[ModalitySpec]):
        self.out, self.specs = out, specs
        self.n_in = self.n_tgt = 0

    def encoder(self, m: int, ids: np.ndarray, pos: np.ndarray,
                vectors: np.ndarray | None = None) -> None:
        n, start, slots = ids.shape[0], self.n_in, self.out["enc_ids"].shape[0]
        if start + n > slots:
            raise MaskingError(f"{self.specs[m].name!r}: {start + n} encoder tokens do not fit "
                               f"{slots} input slots")
        s = slice(start, start + n)
        self.out["enc_ids"][s], self.out["enc_mod"][s], self.out["enc_pos"][s] = ids, m, pos
        self.out["enc_valid"][s] = True
        if vectors is not None:
            self.out["enc_pixels"][s, :vectors.shape[1]] = vectors
        self.n_in += n

    def decoder(self, m: int, pos: np.ndarray, ids_in: np.ndarray, targets: np.ndarray,
                seq_index: np.ndarray, loss_valid: bool = True) -> None:
        n, start, slots = pos.shape[0], self.n_tgt, self.out["dec_mod"].shape[0]
        if start + n > slots:
            raise MaskingError(f"{self.specs[m].name!r}: {start + n} decoder tokens do not fit "
                               f"{slots} target slots")
        s = slice(start, start + n)
        self.out["dec_mod"][s], self.out["dec_pos"][s] = m, pos
        self.out["dec_ids_in"][s], self.out["dec_targets"][s] = ids_in, targets
        self.out["dec_seq_index"][s] = seq_index
        self.out["dec_valid"][s] = loss_valid
        self.out["dec_attn_valid"][s] = True
        self.n_tgt += n

    def grid_targets(self, m: int, tokens: np.ndarray | None, pos: np.ndarray) -> None:
        """Image-like targets: the decoder input is the mask token (id unused: 0). Without
        `tokens` (nothing to predict yet) the slots attend but carry no label."""
        zeros = np.zeros(pos.shape[0], np.int32)
        targets = zeros if tokens is None else tokens[pos]
        self.decoder(m, pos, zeros, targets, zeros, loss_valid=tokens is not None)

    def sequence_targets(self, m: int, target: np.ndarray, length: int) -> None:
        self.decoder(m, *teacher_forcing_rows(target, length))


def teacher_forcing_rows(target: np.ndarray, length: int) -> tuple[np.ndarray, ...]:
    """Decoder rows of one sequence target (k tokens -> k-1 rows): (dec_pos, dec_ids_in,
    dec_targets, dec_seq_index). Row t reads target[t] and predicts target[t + 1]; its position
    counts target tokens, and rows at or past the modality's max `length` use position 0 (the
    reference: `target_pos_id >= max_length -> 0`)."""
    j = np.arange(max(target.shape[0] - 1, 0))  # [k-1]
    return np.where(j < length, j, 0), target[:-1], target[1:], j


def collate(examples: Sequence[Mapping[str, np.ndarray]]) -> Example:
    """Stack per-example masked dicts into a batch: every array gets a leading [B] axis."""
    if not examples:
        raise MaskingError("collate: expected at least one example")
    first = examples[0]
    for i, ex in enumerate(examples):
        if set(ex) != set(first):
            raise MaskingError(f"collate: example {i} has keys {sorted(ex)}, example 0 has "
                               f"{sorted(first)}")
        for key in first:
            if ex[key].shape != first[key].shape:
                raise MaskingError(f"collate: {key!r} of example {i} has shape {ex[key].shape}, "
                                   f"example 0 has {first[key].shape}")
    return {key: np.stack([ex[key] for ex in examples]) for key in first}


# ----------------------------------------------------------------------------------------------
# Random-subset pre-training masking


class Masker(_Packing):
    """The 4M random-subset masking over `specs` (order = modality index) with a `Mixture`.

    `input_tokens` / `target_tokens`: N_in / N_tgt, an int or an inclusive range (lo, hi) drawn
    per sample (the reference's `randint`); the slot counts are the largest value (static shapes).
    Spec modalities the mixture does not name are never masked in.
    """

    def __init__(self, specs: Sequence[ModalitySpec], mixture: Mixture, *,
                 input_tokens: int | tuple[int, int], target_tokens: int | tuple[int, int],
                 sentinels: SentinelSpec | None = None):
        super().__init__(specs, sentinels)
        self.mixture = mixture
        self.input_range = _count(input_tokens, "input_tokens")
        self.target_range = _count(target_tokens, "target_tokens")
        unknown = [name for name in mixture.modalities if name not in self.index]
        if unknown:
            raise MaskingError(
                f"mixture {mixture.name!r} names modalities the specs do not have: {unknown} "
                f"(specs: {list(self.index)}); use mixture.drop({unknown}) to leave them out")
        k, m = mixture.num_components, len(self.specs)
        self.input_alphas = np.zeros((k, m))  # [K, M] in spec order
        self.target_alphas = np.zeros((k, m))  # [K, M]
        self.keep = [["random"] * m for _ in range(k)]  # [K][M]
        self.in_mixture = np.zeros(m, bool)  # [M]
        for j, name in enumerate(mixture.modalities):
            i = self.index[name]
            self.in_mixture[i] = True
            self.input_alphas[:, i] = mixture.input_alphas[:, j]
            self.target_alphas[:, i] = mixture.target_alphas[:, j]
            for c in range(k):
                self.keep[c][i] = mixture.keep[c][j]
        self.cum_weights = np.cumsum(mixture.weights)  # [K]
        # The decoder modalities the reference 'mod' loss averages over: every target modality
        # of the masked dict, with or without targets in a batch (the model's `dec_present`).
        self.dec_present = self.in_mixture & self.can_target  # [M] bool

    @classmethod
    def from_config(cls, specs: Sequence[ModalitySpec], config: Mapping, *,
                    sentinels: SentinelSpec | None = None, input_tokens=None,
                    target_tokens=None) -> "Masker":
        """From a mixture config; its `input_tokens`/`target_tokens` unless given here."""
        input_tokens = config.get("input_tokens") if input_tokens is None else input_tokens
        target_tokens = config.get("target_tokens") if target_tokens is None else target_tokens
        if input_tokens is None or target_tokens is None:
            raise MaskingError("Masker.from_config: the config sets no input_tokens/target_tokens; "
                               "pass them")
        return cls(specs, Mixture.from_config(config), input_tokens=input_tokens,
                   target_tokens=target_tokens, sentinels=sentinels)

    @property
    def input_slots(self) -> int:
        return self.input_range[1]

    @property
    def target_slots(self) -> int:
        return self.target_range[1]

    def sample_budgets(self, rng: np.random.Generator,
                       present: np.ndarray | None = None) -> Budgets:
        """Component and per-modality budgets of one sample (`present`: [M] bool, default all)."""
        present = np.ones(len(self.specs), bool) if present is None else np.asarray(present, bool)
        active = present & self.in_mixture
        # searchsorted on the cumulative weights is a categorical draw; min() guards rounding.
        k = min(int(np.searchsorted(self.cum_weights, rng.random(), side="right")),
                self.mixture.num_components - 1)
        n_in = self._draw_total(rng, self.input_range)
        n_tgt = self._draw_total(rng, self.target_range)
        # A modality that cannot be an input (target) still takes its share of the draw, which is
        # then lost to a cap of 0, as in the reference.
        inputs = dirichlet_budget(rng, self.input_alphas[k], n_in, active)
        inputs = np.minimum(inputs, self.lengths * self.can_input)
        # Image-like targets come from the positions the inputs left; sequences are not reduced.
        target_cap = np.where(self.is_grid, self.lengths - inputs, self.lengths) * self.can_target
        targets = dirichlet_budget(rng, self.target_alphas[k], n_tgt, active)
        return Budgets(component=k, input=inputs, target=np.minimum(targets, target_cap))

    @staticmethod
    def _draw_total(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
        lo, hi = bounds
        return lo if lo == hi else int(rng.integers(lo, hi + 1))

    def mask(self, sample: Mapping[str, Any], rng: np.random.Generator) -> tuple[Example, Budgets]:
        """One masked example and the budgets it was drawn with."""
        out = self.empty_example(self.input_slots, self.target_slots)
        return out, self._fill(sample, rng, out)

    def _fill(self, sample: Mapping[str, Any], rng: np.random.Generator, out: Example) -> Budgets:
        prepared = self.prepare(sample)
        present = np.zeros(len(self.specs), bool)
        present[list(prepared)] = True
        budgets = self.sample_budgets(rng, present)
        writer = _Writer(out, self.specs)
        for m in sorted(prepared):
            spec, value = self.specs[m], prepared[m]
            n_in, n_tgt = int(budgets.input[m]), int(budgets.target[m])
            if n_in == 0 and n_tgt == 0:
                continue
            keep = self.keep[budgets.component][m]
            if spec.kind == "sequence":
                inputs, target = span_masking.mask_sequence(value, n_in, n_tgt, keep,
                                                            self.sentinels, rng)
                writer.encoder(m, inputs, np.arange(inputs.shape[0]))  # visible-token positions
                writer.sequence_targets(m, target, spec.length)
            elif spec.kind == "embeddings":
                source = span_masking.mask_embeddings(value.shape[0], n_in, keep, rng)  # [n_in]
                vectors = np.where((source >= 0)[:, None], value[np.maximum(source, 0)], 0.0)
                n = source.shape[0]
                writer.encoder(m, np.zeros(n, np.int32), np.arange(n), vectors)
            else:
                order = rng.permutation(spec.length)
                in_pos, tgt_pos = np.sort(order[:n_in]), np.sort(order[n_in:n_in + n_tgt])
                if spec.kind == "pixels":
                    writer.encoder(m, np.zeros(n_in, np.int32), in_pos, value[in_pos])
                else:
                    writer.encoder(m, value[in_pos], in_pos)
                    writer.grid_targets(m, value, tgt_pos)
        return budgets

    def __call__(self, sample: Mapping[str, Any], rng: np.random.Generator) -> Example:
        return self.mask(sample, rng)[0]

    def mask_batch(self, samples: Sequence[Mapping[str, Any]], rng: np.random.Generator) -> Example:
        """Equals `collate([self(s, rng) for s in samples])`, without the copies."""
        return self._batched(lambda sample, out: self._fill(sample, rng, out), samples,
                             self.input_slots, self.target_slots)


# ----------------------------------------------------------------------------------------------
# Fixed (transfer / evaluation / generation) masking


class FixedMasker(_Packing):
    """Given input and target modalities: inputs fully visible, targets fully predicted.

    The reference `TransferMasking`, for fine-tuning and evaluation. A sequence input is the whole
    text with EOS; a sequence target is `[S_1] text [S_2]`. A modality absent from the sample adds
    no input; an absent *target* becomes query slots to be generated: every position of an
    image-like target (or the single `[S_1]` start row of a sequence) with `dec_attn_valid` True
    and `dec_valid` False (no label). Deterministic: no random draws.

    The default slot counts hold every named modality at full length (a sequence target: length
    + 1 decoder rows), so the shapes do not depend on the sample.
    """

    def __init__(self, specs: Sequence[ModalitySpec], input_modalities: Sequence[str],
                 target_modalities: Sequence[str], *, sentinels: SentinelSpec | None = None,
                 input_slots: int | None = None, target_slots: int | None = None):
        super().__init__(specs, sentinels)
        self.inputs = self._indices(input_modalities, "input", self.can_input)
        self.targets = self._indices(target_modalities, "target", self.can_target)
        both = sorted(set(self.inputs) & set(self.targets))
        if both:
            raise MaskingError(f"FixedMasker: {[self.specs[i].name for i in both]} are both "
                               "input and target")
        need_in = int(sum(self.lengths[m] for m in self.inputs))
        need_tgt = int(sum(self.lengths[m] + (not self.is_grid[m]) for m in self.targets))
        # Fewer slots than the worst case are allowed (e.g. short texts); overflow is caught per
        # sample with a clear error.
        self.input_slots = need_in if input_slots is None else _count(input_slots, "input_slots")[0]
        self.target_slots = (need_tgt if target_slots is None
                             else _count(target_slots, "target_slots")[0])

    def _indices(self, names: Sequence[str], side: str, allowed: np.ndarray) -> list[int]:
        field = f"{side}_modalities"
        if isinstance(names, str):
            raise MaskingError(f"{field}: expected a list of modality names, got {names!r}")
        out = []
        for name in names:
            if name not in self.index:
                raise MaskingError(f"{field}: unknown modality {name!r} "
                                   f"(known: {', '.join(self.index)})")
            if not allowed[self.index[name]]:
                raise MaskingError(f"{field}: modality {name!r} cannot be a {side} "
                                   f"(spec.{side} is False, or it is continuous)")
            out.append(self.index[name])
        if len(set(out)) != len(out):
            raise MaskingError(f"{field}: duplicate names in {list(names)}")
        return out

    def __call__(self, sample: Mapping[str, Any],
                 rng: np.random.Generator | None = None) -> Example:
        """`rng` is accepted (the grain `random_map` signature) and unused."""
        out = self.empty_example(self.input_slots, self.target_slots)
        self._fill(sample, out)
        return out

    def _fill(self, sample: Mapping[str, Any], out: Example) -> None:
        prepared = self.prepare(sample)
        writer = _Writer(out, self.specs)
        for m in self.inputs:
            value = prepared.get(m)
            if value is None:
                continue
            n = value.shape[0]
            if self.specs[m].kind in CONTINUOUS_KINDS:
                writer.encoder(m, np.zeros(n, np.int32), np.arange(n), value)
            else:
                writer.encoder(m, value, np.arange(n))
        for m in self.targets:
            spec, value = self.specs[m], prepared.get(m)
            if spec.kind != "sequence":
                writer.grid_targets(m, value, np.arange(spec.length))
            elif value is None:
                zero = np.zeros(1, np.int32)
                start = np.asarray([self.sentinels.sentinel(1)])
                writer.decoder(m, zero, start, zero, zero, loss_valid=False)
            else:
                target = span_masking.span_mask(value, 0.0, self.sentinels, None)[1]
                writer.sequence_targets(m, target, spec.length)

    def mask_batch(self, samples: Sequence[Mapping[str, Any]]) -> Example:
        return self._batched(self._fill, samples, self.input_slots, self.target_slots)


def all_inputs_visible(specs: Sequence[ModalitySpec], sample: Mapping[str, Any],
                       target_modalities: Sequence[str] = (), *,
                       sentinels: SentinelSpec | None = None, input_slots: int | None = None,
                       target_slots: int | None = None) -> Example:
    """Generation start: every modality present in `sample` (and allowed as input) is a full
    input; `target_modalities` become targets (query slots if absent from the sample, see
    FixedMasker).

    The default `input_slots` hold every input-capable modality at full length, so examples with
    different present modalities collate into one static shape.
    """
    names = [s.name for s in specs]
    unknown = [k for k in sample if k not in names and k not in METADATA_KEYS]
    if unknown:
        raise MaskingError(f"sample: unknown modality {unknown[0]!r} (known: {', '.join(names)})")
    targets = list(target_modalities)
    candidates = [s for s in specs if s.input and s.name not in targets]
    inputs = [s.name for s in candidates if sample.get(s.name) is not None]
    if input_slots is None:
        input_slots = int(sum(s.length for s in candidates))
    return FixedMasker(specs, inputs, targets, sentinels=sentinels, input_slots=input_slots,
                       target_slots=target_slots)(sample)


"""T5-style span masking of token sequences with sentinels, as the 4M reference does it.

A sequence (text token ids with `[EOS]` appended) is split into a visible input and a target:
every token is kept with probability p; each run of dropped tokens becomes one sentinel `[S_i]`
(i = 1, 2, ...) in the input, and the target lists the dropped runs, each opened by its sentinel and
closed by one more: `[S_1] span_1 [S_2] span_2 ... [S_{n+1}]`. `merge_span_masking` inverts it.

The special ids are parameters (`SentinelSpec`), never hard-coded: the reference WordPiece
vocabulary uses PAD=0, EOS=3, [S_i]=4+i; m4's own SentencePiece tokenizer defines its own.
All randomness comes from an explicit `np.random.Generator`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

KEEP_SCHEMES = ("random", "all", "binary")
# The reference lowers p by this factor until the masked input fits its budget.
KEEP_PROB_DECAY = 0.9


class SpanMaskingError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class SentinelSpec:
    """Special ids of a text vocabulary that span masking needs.

    Sentinel `[S_k]` (k = 1 .. num_sentinels) has id `first_sentinel_id + k - 1`; masking starts at
    `[S_1]` (the reference vocabulary also has an unused `[S_0]` just below it).
    """

    pad_id: int
    eos_id: int
    first_sentinel_id: int
    num_sentinels: int

    def __post_init__(self):
        for field in ("pad_id", "eos_id", "first_sentinel_id", "num_sentinels"):
            value = getattr(self, field)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise SpanMaskingError(f"SentinelSpec.{field}: expected an int >= 0, got {value!r}")
        if self.num_sentinels < 2:
            raise SpanMaskingError(
                f"SentinelSpec.num_sentinels: expected >= 2 ([S_1] and a closing one), "
                f"got {self.num_sentinels}")
        last = self.first_sentinel_id + self.num_sentinels
        for field in ("pad_id", "eos_id"):
            if self.first_sentinel_id <= getattr(self, field) < last:
                raise SpanMaskingError(
                    f"SentinelSpec.{field}={getattr(self, field)} lies inside the sentinel ids "
                    f"[{self.first_sentinel_id}, {last})")
        if self.pad_id == self.eos_id:
            raise SpanMaskingError(f"SentinelSpec: pad_id and eos_id are both {self.pad_id}")

    @classmethod
    def reference(cls) -> "SentinelSpec":
        """The ml-4m WordPiece vocabulary: [PAD]=0, [EOS]=3, [S_0..S_199]=4..203."""
        return cls(pad_id=0, eos_id=3, first_sentinel_id=5, num_sentinels=199)

    @property
    def end_id(self) -> int:
        """One past the largest sentinel id (every special id must be below a vocabulary size)."""
        return max(self.pad_id, self.eos_id, self.first_sentinel_id + self.num_sentinels - 1) + 1

    def sentinel(self, k):
        """Id of `[S_k]`, k >= 1 (an int, or an array of them)."""
        return self.first_sentinel_id + k - 1

    def is_sentinel(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= self.first_sentinel_id) & (ids < self.first_sentinel_id + self.num_sentinels)

    def is_special(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids == self.pad_id) | (ids == self.eos_id) | self.is_sentinel(ids)

    def check_length(self, max_length: int, where: str) -> None:
        # n tokens give at most ceil(n/2) dropped runs, plus the closing sentinel.
        needed = math.ceil(max_length / 2) + 1
        if needed > self.num_sentinels:
            raise SpanMaskingError(
                f"{where}: sequences of up to {max_length} tokens need {needed} sentinels, "
                f"SentinelSpec has num_sentinels={self.num_sentinels}")


def prepare_sequence(ids: np.ndarray, max_length: int, sentinels: SentinelSpec) -> np.ndarray:
    """Append `[EOS]` and truncate to `max_length`, exactly as the reference.

    This is the only truncation: a text of `max_length` tokens or more loses its tail *and* its
    `[EOS]` (the reference behaviour; the model then never sees the end of that text).
    """
    out = np.empty(ids.shape[0] + 1, np.int64)  # [n + 1]
    out[:-1] = ids
    out[-1] = sentinels.eos_id
    return out[:max_length]


def sample_keep_prob(scheme: str, rng: np.random.Generator) -> float:
    """Probability of keeping each token visible: random ~ U(0,1), all = 1, binary in {0, 1}."""
    if scheme == "random":
        return float(rng.random())
    if scheme == "all":
        return 1.0
    if scheme == "binary":
        return float(rng.integers(2))
    raise SpanMaskingError(f"keep scheme: expected one of {KEEP_SCHEMES}, got {scheme!r}")


def _draw_keep(n: int, keep_prob: float,
               rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """Which of n tokens stay visible ([n] bool), and where each dropped run starts ([n] bool)."""
    if keep_prob >= 1.0:
        keep = np.ones(n, bool)
    elif keep_prob <= 0.0:
        keep = np.zeros(n, bool)
    else:
        keep = rng.random(n) < keep_prob  # [n]
    run_start = ~keep
    run_start[1:] &= keep[:-1]
    return keep, run_start


def span_mask(ids: np.ndarray, keep_prob: float, sentinels: SentinelSpec,
              rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """One draw of span masking: returns (input ids, target ids), int64.

    Each token is kept iff u < keep_prob, u ~ U[0, 1) (so p = 0 drops all, p = 1 keeps all, and
    neither draws from `rng`, which may then be None).
    """
    return _split(ids, *_draw_keep(ids.shape[0], keep_prob, rng), sentinels)


def _split(ids: np.ndarray, keep: np.ndarray, run_start: np.ndarray,
           sentinels: SentinelSpec) -> tuple[np.ndarray, np.ndarray]:
    """(input ids, target ids) of one keep pattern."""
    n = ids.shape[0]
    drop = ~keep
    run = np.cumsum(run_start)  # [n] 1-based index of the run a dropped token belongs to
    num_runs = int(run[-1]) if n else 0
    sentinel_of = sentinels.first_sentinel_id + run - 1  # [n] id of [S_run]

    # Input: kept tokens, and one sentinel in place of each dropped run, in order.
    input_ids = np.where(keep, ids, sentinel_of)[keep | run_start]

    # Target: [S_1] span_1 [S_2] span_2 ... [S_{R+1}]. A dropped token at i lands after the
    # dropped tokens before it and after the `run[i]` sentinels opened so far.
    dropped_before = np.cumsum(drop) - drop  # [n]
    target = np.empty(int(drop.sum()) + num_runs + 1, np.int64)
    target[(dropped_before + run)[drop]] = ids[drop]
    target[(dropped_before + run - 1)[run_start]] = sentinel_of[run_start]
    target[-1] = sentinels.first_sentinel_id + num_runs
    return input_ids.astype(np.int64, copy=False), target


def truncate_target(target: np.ndarray, budget: int, sentinels: SentinelSpec,
                    rng: np.random.Generator) -> np.ndarray:
    """The reference rule for a target longer than its budget.

    Pick a random sentinel (never the closing one, unless it is the only one) and keep `budget`
    tokens from it; if fewer than `budget` tokens follow it, start instead at the earliest sentinel
    whose suffix fits (so the budget is not wasted). A budget of 0 gives an empty target.
    """
    if target.shape[0] <= budget:
        return target
    starts = np.flatnonzero(sentinels.is_sentinel(target))
    chosen = int(starts[rng.integers(max(1, starts.shape[0] - 1))])
    if target.shape[0] - chosen >= budget:
        return target[chosen:chosen + budget]
    fitting = starts[target.shape[0] - starts <= budget]
    return target[int(fitting[0]):]


def mask_sequence(ids: np.ndarray, input_budget: int, target_budget: int, keep_scheme: str,
                  sentinels: SentinelSpec,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Span-mask a prepared sequence (`prepare_sequence`) into input and target (reference §3.3).

    The input has at most `input_budget` tokens: p is multiplied by 0.9 and the draw repeated until
    it fits; with `input_budget == 0` the input is empty and the whole sequence is the target. The
    target is cut to `target_budget` tokens by `truncate_target`.
    """
    if input_budget == 0:
        input_ids, target = np.zeros(0, np.int64), span_mask(ids, 0.0, sentinels, None)[1]
    else:
        keep, run_start = _fitting_keep(ids.shape[0], input_budget, keep_scheme, rng)
        input_ids, target = _split(ids, keep, run_start, sentinels)
    return input_ids, truncate_target(target, target_budget, sentinels, rng)


def _fitting_keep(n: int, input_budget: int, keep_scheme: str,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A keep pattern whose masked input fits `input_budget` >= 1: draw p by the scheme, then
    lower it by 0.9 and redraw until it fits (terminates: p -> 0 leaves a single sentinel)."""
    keep_prob = sample_keep_prob(keep_scheme, rng)
    keep, run_start = _draw_keep(n, keep_prob, rng)
    # The input holds one token per kept token and per dropped run: count before building it.
    while int(keep.sum() + run_start.sum()) > input_budget:
        keep_prob *= KEEP_PROB_DECAY
        keep, run_start = _draw_keep(n, keep_prob, rng)
    return keep, run_start


def mask_embeddings(n: int, input_budget: int, keep_scheme: str,
                    rng: np.random.Generator) -> np.ndarray:
    """Span masking of n continuous vectors (the reference's T5-caption input; input only).

    Returns the masked input as source indices, int64 [n_in]: i >= 0 is vector i, -1 a sentinel
    slot (the reference feeds a zero vector there). Same keep-probability rule and 0.9 shrinking as
    `mask_sequence`; no target (the reference never predicts embeddings).
    """
    if input_budget == 0 or n == 0:
        return np.zeros(0, np.int64)
    keep, run_start = _fitting_keep(n, input_budget, keep_scheme, rng)
    return np.where(keep, np.arange(n), -1)[keep | run_start]


def merge_span_masking(input_ids: np.ndarray, target_ids: np.ndarray,
                       sentinels: SentinelSpec) -> np.ndarray:
    """Put the target spans back into the input's sentinels: inverts `span_mask`.

    An empty input stands for `[S_1]` (the reference's "input budget 0": all of it is target).
    Raises if an input sentinel has no span in the target (e.g. the target was truncated).
    """
    input_ids, target_ids = np.asarray(input_ids), np.asarray(target_ids)
    if input_ids.shape[0] == 0 and target_ids.shape[0]:
        input_ids = np.asarray([sentinels.sentinel(1)])
    marks = np.flatnonzero(sentinels.is_sentinel(target_ids))
    if target_ids.shape[0] and (not marks.size or marks[0] != 0):
        raise SpanMaskingError("merge_span_masking: target does not start with a sentinel")
    bounds = marks.tolist() + [target_ids.shape[0]]
    spans = {int(target_ids[a]): target_ids[a + 1:b].tolist()
             for a, b in zip(bounds[:-1], bounds[1:])}
    merged: list[int] = []
    for token, is_sentinel in zip(input_ids.tolist(), sentinels.is_sentinel(input_ids).tolist()):
        if not is_sentinel:
            merged.append(token)
        elif token in spans:
            merged.extend(spans[token])
        else:
            k = token - sentinels.first_sentinel_id + 1
            raise SpanMaskingError(f"merge_span_masking: no span for [S_{k}] in the target")
    return np.asarray(merged, np.int64)

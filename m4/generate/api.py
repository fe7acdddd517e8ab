"""The notebook-style generation API: raw data in, decoded modalities out.

    gen = Generator(model, tokenizers={"rgb": tok_rgb, "depth": tok_depth, "caption": tok_text})
    out = gen.generate({"rgb": image, "caption": "a red sphere [S_1]"}, ["depth", "semseg"])
    out["outputs"]["depth"]      # [H, W] metres, through the depth tokenizer
    out["outputs"]["caption"]    # the completed text
    out["tokens"]["depth"]       # [8, 8] int32, the raw tokens

Inputs per modality (one example; `generate_batch` takes a list of them):
- image-like: what its tokenizer encodes (e.g. uint8 [H, W, 3]); or token ids of the grid's shape
  ([h, w] or [L]); `Tokens(ids)` forces the ids reading when shapes would be ambiguous.
- sequences: a str (needs the text tokenizer; `[S_k]` marks text to generate: `"a red sphere
  [S_1]"` is completed, a text without sentinel is a full input) or the visible ids.
- pixels: uint8 [H, W, C] (normalised by `m4.data.pixels.normalize`, as in training) or float
  (already normalised), as an image [H, W, C] (patchified here) or patches [L, patch_dim];
  embeddings: float [n, dim]. Raw data of a modality the model also reads as pixel patches goes
  to the patches: `{"rgb": image}` feeds `rgb_pixels` (`Generator.input_modality`).
Targets: names (defaults per modality, `schedules.default_target`), `TargetSpec`s, or a complete
schedule (a list of `schedules.Step`, e.g. from `schedules.build_schedule`).

Without a tokenizer for a modality everything still works on tokens (e.g. a converted reference
model): its outputs are the tokens.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import numpy as np

from m4.data import pixels
from m4.data.span_masking import SentinelSpec
from m4.generate import schedules
from m4.generate.sampler import Sampler, example_keys
from m4.generate.schedules import Step, TargetSpec
from m4.generate.state import (
    GenerationInputError, ModalityState, State, continuous, empty_sequence_target,
    known_tokens, sequences, unknown,
)
from m4.model.adapters import patchify
from m4.model.fourm import FourM

_SENTINEL_TEXT = re.compile(r"\s*(\[S_\d+\])")


def _token_shapes(spec) -> list[tuple[int, ...]]:
    """Shapes token ids of an image-like input may take: [L], or the grid [h, w]."""
    return [(spec.length,)] + ([tuple(spec.grid)] if spec.grid else [])


@dataclasses.dataclass(frozen=True)
class Tokens:
    """Marks an input as token ids (never raw data for the tokenizer)."""

    ids: Any


def sentinels_from_tokenizer(tokenizer) -> SentinelSpec:
    """The SentinelSpec of an m4 text tokenizer ([S_0] is unused; masking starts at [S_1])."""
    ids = tokenizer.special_ids
    return SentinelSpec(pad_id=int(ids["pad"]), eos_id=int(ids["eos"]),
                        first_sentinel_id=int(ids["sentinel_start"]) + 1,
                        num_sentinels=int(ids["num_sentinels"]) - 1)


class Generator:
    """Generation with a FourM model and (optionally) the tokenizers of its modalities.

    sentinels: the text special ids for sequences; by default from a text tokenizer among
    `tokenizers` (one with `special_ids`), else None (sequence targets then need it).
    loop: "fori" (one compilation per target shape), "unrolled" (faster calls, longer first
    compilation) or "auto"; see `m4.generate.sampler`.
    """

    def __init__(self, model: FourM, tokenizers: Mapping[str, Any] | None = None,
                 sentinels: SentinelSpec | None = None, *, loop: str = "fori"):
        self.model = model
        self.specs = model.config.modalities
        self.by_name = {s.name: s for s in self.specs}
        # Raw modality -> the pixel-patch input computed from it (e.g. "rgb" -> "rgb_pixels").
        self.pixel_inputs = {s.source: s.name for s in self.specs
                             if s.input and s.kind == "pixels" and s.source}
        self.tokenizers = dict(tokenizers or {})
        unknown_names = sorted(set(self.tokenizers) - set(self.by_name))
        if unknown_names:
            raise GenerationInputError(f"tokenizers: {unknown_names} are not modalities of the "
                                       f"model (known: {list(self.by_name)})")
        if sentinels is None:
            texts = [t for t in self.tokenizers.values() if hasattr(t, "special_ids")]
            sentinels = sentinels_from_tokenizer(texts[0]) if texts else None
        self.sentinels = sentinels
        self.sampler = Sampler(model, sentinels, loop=loop)

    # --------------------------------------------------------------------------- inputs
    def encode_inputs(self, examples: Sequence[Mapping[str, Any]]) -> State:
        """Raw examples -> generation state (every input fully known)."""
        if not examples:
            raise GenerationInputError("inputs: expected at least one example (use {} for an "
                                       "unconditional one)")
        names = list(examples[0])
        for i, ex in enumerate(examples):
            if set(ex) != set(names):
                raise GenerationInputError(f"inputs[{i}]: modalities {sorted(ex)} differ from "
                                           f"inputs[0]'s {sorted(names)}; a batch shares them")
        state: State = {}
        for name in names:
            values = [ex[name] for ex in examples]
            fed = {self.input_modality(name, v) for v in values}
            if len(fed) != 1:
                raise GenerationInputError(f"input {name!r}: the batch mixes token ids and raw "
                                           f"data (they feed {sorted(fed)}); pass one kind")
            model_name = fed.pop()
            if model_name in state:
                raise GenerationInputError(f"input {name!r}: feeds {model_name!r}, which another "
                                           f"input already gives")
            state[model_name] = self._encode_modality(self.by_name[model_name], values)
        return state

    def input_modality(self, name: str, value: Any = None) -> str:
        """The model modality an input `name` (with `value`) feeds: the modality of that name, or
        for raw data of a modality the model reads as pixel patches, the patches: with rgb
        tokens and `rgb_pixels` (source "rgb"), `{"rgb": image}` feeds `rgb_pixels` (the
        reference's RGB -> X), `{"rgb": Tokens(ids)}` or token ids feed the rgb tokens."""
        spec = self.by_name.get(name)
        patches = self.pixel_inputs.get(name)
        if patches and not (spec is not None and spec.input and self._token_value(spec, value)):
            return patches
        if spec is None:
            raise GenerationInputError(f"input {name!r}: unknown modality (known: "
                                       f"{list(self.by_name)})")
        if not spec.input:
            raise GenerationInputError(f"input {name!r}: the model takes no such input "
                                       f"(spec.input is False)")
        return name

    @staticmethod
    def _token_value(spec, value) -> bool:
        """Whether an image-like input value holds token ids rather than raw data."""
        if isinstance(value, Tokens):
            return True
        if value is None or not spec.is_token:
            return False
        value = np.asarray(value)
        return value.shape in _token_shapes(spec) and np.issubdtype(value.dtype, np.integer)

    def _encode_modality(self, spec, values: list) -> ModalityState:
        if spec.kind == "sequence":
            return sequences(spec, [self._sequence_ids(spec, v) for v in values], self.sentinels)
        if spec.is_continuous:
            return continuous(spec, np.stack([self._continuous(spec, v) for v in values]))
        rows: list = [self._grid_tokens(spec, value) for value in values]
        raw = [i for i, row in enumerate(rows) if row is None]
        if raw:   # every raw example through the tokenizer in one batch
            tokens = np.asarray(self.tokenizers[spec.name].encode(
                np.stack([np.asarray(values[i]) for i in raw])))
            for i, t in zip(raw, tokens):
                rows[i] = t.reshape(-1)
        return known_tokens(spec, np.stack(rows))

    def _grid_tokens(self, spec, value) -> np.ndarray | None:
        """Token ids of an image-like input, or None when it is raw data for the tokenizer."""
        if isinstance(value, Tokens):
            return np.asarray(value.ids).reshape(-1)
        value = np.asarray(value)
        tok = self.tokenizers.get(spec.name)
        raw_shape = tuple(tok.spec.shape) if tok is not None and hasattr(tok, "spec") else None
        if raw_shape is not None and value.shape == raw_shape:
            return None
        if self._token_value(spec, value):
            return value.reshape(-1)
        expected = [f"token ids {list(s)}" for s in _token_shapes(spec)]
        if raw_shape is not None:
            expected.insert(0, f"raw data {list(raw_shape)} for its tokenizer")
        elif tok is None:
            expected.append("(no tokenizer given for raw data)")
        raise GenerationInputError(f"input {spec.name!r}: expected {' or '.join(expected)}, got "
                                   f"{value.dtype} {list(value.shape)}")

    def _sequence_ids(self, spec, value) -> np.ndarray:
        if isinstance(value, Tokens):
            return np.asarray(value.ids, np.int64).reshape(-1)
        if isinstance(value, str):
            return self.text_ids(spec.name, value)
        value = np.asarray(value)
        if value.ndim == 1 and (value.size == 0 or np.issubdtype(value.dtype, np.integer)):
            return value.astype(np.int64)
        raise GenerationInputError(f"input {spec.name!r}: expected a str or 1-D token ids, got "
                                   f"{value.dtype} {list(value.shape)}")

    def text_ids(self, name: str, text: str) -> np.ndarray:
        """Visible ids of a text input: a prompt with `[S_k]` markers as is (the marked spans are
        generated), a plain text with [EOS] appended (a complete input, as in training)."""
        tok = self.tokenizers.get(name)
        if tok is None or self.sentinels is None:
            raise GenerationInputError(f"input {name!r}: a text needs the text tokenizer "
                                       f"(tokenizers={{{name!r}: ...}}); or pass token ids")
        # A sentinel stands for dropped *pieces*, which carry their own leading space: drop the
        # space before a marker so 'a red sphere [S_1]' reads like a masked training caption.
        text = _SENTINEL_TEXT.sub(r"\1", text)
        if hasattr(tok, "piece_ids"):
            ids = np.asarray(tok.piece_ids(text), np.int64)
        else:
            row = np.asarray(tok.encode([text]))[0]
            ids = row[~self.sentinels.is_special(row) | self.sentinels.is_sentinel(row)]
        if not self.sentinels.is_sentinel(ids).any():
            ids = np.append(ids, self.sentinels.eos_id)
        length = self.by_name[name].length
        if ids.shape[0] > length:
            raise GenerationInputError(f"input {name!r}: {ids.shape[0]} tokens, the model takes "
                                       f"at most {length}")
        return ids

    def _continuous(self, spec, value) -> np.ndarray:
        value = np.asarray(value)
        if spec.kind == "pixels" and spec.patch_size and value.shape == (
                spec.grid[0] * spec.patch_size, spec.grid[1] * spec.patch_size, spec.channels):
            value = np.asarray(patchify(value[None], spec.patch_size))[0]   # an image
        elif spec.kind == "pixels" and value.shape == (*spec.grid, spec.patch_dim):
            value = value.reshape(spec.length, spec.patch_dim)
        if spec.kind == "pixels" and value.dtype == np.uint8:
            value = pixels.normalize(value, pixels.channels_of(spec), where=f"input {spec.name!r}")
        if not np.issubdtype(value.dtype, np.floating):
            raise GenerationInputError(f"input {spec.name!r}: expected uint8 pixels or float "
                                       f"values normalised as the model was trained, got dtype "
                                       f"{value.dtype}")
        return value.astype(np.float32)

    # -------------------------------------------------------------------------- schedule
    def schedule(self, inputs: Sequence[str], targets: Sequence[str | TargetSpec], *,
                 grow_conditioning: bool = False, **overrides) -> list[Step]:
        """The flat schedule of `targets`; `overrides` (e.g. cfg_scale=2.0, top_p=0.8) apply to
        every target given by name."""
        specs = [TargetSpec(t, **overrides) if isinstance(t, str) else t for t in targets]
        return schedules.build_schedule(list(inputs), specs, self.specs,
                                        grow_conditioning=grow_conditioning)

    # -------------------------------------------------------------------------- generate
    def generate(self, inputs: Mapping[str, Any], targets, *, seed: int = 0,
                 grow_conditioning: bool = False, progress: bool = False) -> dict:
        """One example: {"outputs": {target: decoded}, "tokens": {modality: ids}, "schedule",
        "complete": {sequence target: bool}}."""
        out = self.generate_batch([inputs], targets, seed=seed,
                                  grow_conditioning=grow_conditioning, progress=progress)
        return {
            "outputs": {k: v[0] for k, v in out["outputs"].items()},
            "tokens": {k: v[0] for k, v in out["tokens"].items()},
            "complete": {k: bool(v[0]) for k, v in out["complete"].items()},
            "schedule": out["schedule"],
        }

    def generate_batch(self, inputs: Sequence[Mapping[str, Any]], targets, *, seed: int = 0,
                       grow_conditioning: bool = False, progress: bool = False) -> dict:
        """A batch sharing its input modalities and schedule (`[{}] * n` for n unconditional
        samples). Example i draws from fold_in(key(seed), i): the same seed and index give the
        same result in any batch. Returns outputs/tokens over the batch, the schedule, the
        sequence targets' "complete" flags and the final generation state."""
        state = self.encode_inputs(inputs)
        schedule = self._as_schedule(list(state), targets, grow_conditioning)
        self._prepare_targets(state, schedule, len(inputs))
        keys = example_keys(seed, len(inputs))
        state, info = self.sampler.generate(state, schedule, keys, progress=progress)
        names = list(dict.fromkeys(step.target for step in schedule))
        outputs = {name: self.decode(name, state, info) for name in names}
        tokens = {name: self._tokens_of(name, state[name]) for name in state
                  if self.by_name[name].is_token}
        complete = {name: np.asarray(seq["complete"])
                    for name, seq in info["sequences"].items()}
        return {"outputs": outputs, "tokens": tokens, "complete": complete,
                "schedule": schedule, "state": state}

    def _as_schedule(self, inputs: list[str], targets, grow: bool) -> list[Step]:
        if isinstance(targets, (str, TargetSpec)):
            targets = [targets]
        targets = list(targets)
        if targets and all(isinstance(t, Step) for t in targets):
            return targets
        if any(isinstance(t, Step) for t in targets):
            raise schedules.ScheduleError("targets: expected names/TargetSpecs or a complete "
                                          "schedule of Steps, not a mix")
        conditions = [n for n in inputs
                      if n not in {t if isinstance(t, str) else t.name for t in targets}]
        return self.schedule(conditions, targets, grow_conditioning=grow)

    def _prepare_targets(self, state: State, schedule: list[Step], b: int) -> None:
        """Empty targets for what is not an input (so an unconditional start has a batch)."""
        for name in dict.fromkeys(step.target for step in schedule):
            spec = self.by_name.get(name)
            if spec is None:
                continue   # the sampler reports unknown targets
            if name in state and spec.kind != "sequence" and state[name].known.all():
                raise GenerationInputError(f"target {name!r} is also a complete input; leave it "
                                           f"out of the inputs or out of the targets")
            if name in state:
                continue
            if spec.kind != "sequence":
                state[name] = unknown(spec, b)
            elif self.sentinels is None:
                raise GenerationInputError(f"target {name!r}: sequence generation needs the "
                                           f"text sentinels (a text tokenizer or sentinels=...)")
            else:
                state[name] = empty_sequence_target(spec, b, self.sentinels)

    # --------------------------------------------------------------------------- outputs
    def _tokens_of(self, name: str, m: ModalityState) -> np.ndarray | list[np.ndarray]:
        """Grids [B, h, w] (or [B, L]); sequences: a list of each example's visible ids."""
        spec = self.by_name[name]
        if spec.kind == "sequence":
            return [row[k] for row, k in zip(m.tokens, m.known)]
        tokens = m.tokens
        return tokens.reshape((-1, *spec.grid)) if spec.grid else tokens

    def decode(self, name: str, state: State, info: dict | None = None):
        """Decoded values of a generated modality over the batch (tokens without tokenizer)."""
        spec = self.by_name[name]
        tok = self.tokenizers.get(name)
        if spec.kind == "sequence":
            seq = (info or {}).get("sequences", {}).get(name)
            rows = seq["merged"] if seq else [r[k] for r, k in zip(state[name].tokens,
                                                                    state[name].known)]
            if tok is None:
                return [np.asarray(r) for r in rows]
            width = max(1, max(len(r) for r in rows))
            ids = np.full((len(rows), width), self.sentinels.pad_id, np.int64)
            for i, r in enumerate(rows):
                ids[i, :len(r)] = r
            return tok.decode(ids)
        tokens = self._tokens_of(name, state[name])
        if tok is None:
            return tokens
        token_shape = tuple(getattr(tok, "token_shape", tokens.shape[1:]))
        return np.asarray(tok.decode(tokens.reshape((-1, *token_shape))))


__all__ = ["Generator", "Tokens", "sentinels_from_tokenizer"]

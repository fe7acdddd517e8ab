"""The compiled decoding loops and chained generation over a schedule.

`Sampler(model).generate(state, schedule, keys)` runs a flat schedule (`schedules.Step`s): each
run of consecutive steps on one target is ONE jitted call, and the chain goes target by target,
each conditioned on the inputs and on everything generated before it (the reference re-runs the
encoder at every step, without KV cache; so do we).

Image-like targets (MaskGIT / ROAR). Every step packs the known tokens of the conditioning
modalities and of the target into the encoder, and the target's still-unknown positions into the
decoder; the logits of those positions are sampled and
- MaskGIT commits the `k` samples of highest probability (per example: a rank from a stable sort,
  so no dynamic shapes and exactly k even with ties);
- ROAR draws one random order per example at the start and commits the next `k` positions of it.
Two loop forms, the same result (a test checks it):
- `fori` (default): one `lax.fori_loop` body holding every target position in both encoder and
  decoder, validity masks doing the rest: one compilation whatever the step count, but each step
  pays for the full target length (~1.5x the FLOPs of an 8-step cosine schedule).
- `unrolled`: the token counts of a schedule are static, so each step is traced with exactly the
  slots it needs (encoder: the known tokens; decoder: the unknown ones), like the reference's
  compacted batches: the fastest calls (~1.8x faster than fori on the 8-step benchmark), but the
  compiler sees one model per step (an 8-step schedule compiles ~3x longer). For repeated calls
  with one schedule (benchmarks, serving).
- `auto`: unrolled up to UNROLL_MAX_STEPS steps, fori beyond.

Why the encoder runs at every step: the tokens committed so far are encoder inputs, and the
encoder's attention is bidirectional, so every slot's encoding (the condition's included) changes
when they are added; reusing an earlier step's encoder output would be a different sampler.
How the loops call the model (`split_for_inference`, `rows_per_call`): layers unrolled, each
layer's weights passed as their own array (no per-step copy out of the stacked weights), and a
large batch split into groups of rows (`lax.map`) whose attention stays in cache.

Sequence targets (caption, serialised detections...): autoregressive inside `lax.while_loop`: the
encoder runs once, then the decoder runs one row per token with a key/value cache
(`m4.model.incremental`: row r reads token r and predicts token r + 1; the context's
cross-attention keys are computed once), and the loop stops when every example has produced its
closing sentinel
(the one after the last sentinel of its input) or at `max_tokens`. The generated spans are then
spliced into the input's sentinels (`merge_span_masking`) and the completed text becomes an input.

Guidance: the passes (unconditional, then one per condition group) are stacked on the batch axis
of one model call and combined as l_u + sum_i w_i (l_i - l_u). The unconditional pass hides the
condition modalities: image-like ones lose all their slots, sequence-like ones keep a single [S_1]
(reference `empty_seq_modality`).

Every knob that is a number (temperatures, guidance weights, top_p, which modalities a pass hides)
is traced; what fixes shapes (steps and tokens per step, top_k, number of passes, slot counts) is
static. The same shapes and settings never trace twice (`Sampler.traces` counts traces).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from m4.data.span_masking import SentinelSpec, merge_span_masking
from m4.generate import sampling
from m4.generate.schedules import ScheduleError, Step
from m4.generate.state import (
    GenerationInputError, ModalityState, State, batch_size_of, empty_sequence_target,
    pack_encoder, unknown,
)
from m4.model import incremental
from m4.model.fourm import FourM

UNROLL_MAX_STEPS = 8
LOOPS = ("auto", "unrolled", "fori")
# fold_in index of the draw that fixes a ROAR order (steps use 0, 1, 2, ...).
ORDER_DRAW = 1 << 30


@dataclasses.dataclass(frozen=True)
class ImagePlan:
    """Static description of one image-like run (hashable: a jit static argument)."""

    target: int
    scheme: str                    # "maskgit" | "roar"
    counts: tuple[int, ...]        # tokens committed per step
    start_known: int               # target positions known before the run (every example)
    passes: int                    # 1, or 1 + condition groups under guidance
    top_k: int
    top_p: bool
    unrolled: bool


@dataclasses.dataclass(frozen=True)
class SequencePlan:
    target: int
    rows: int                      # most tokens generated after the start sentinel
    passes: int
    top_k: int
    top_p: bool
    pad_id: int


@dataclasses.dataclass
class Run:
    """Consecutive schedule steps on one target with the same scheme and filters."""

    target: str
    scheme: str
    steps: list[Step]


def group_runs(schedule: Sequence[Step]) -> list[Run]:
    runs: list[Run] = []
    for step in schedule:
        if not isinstance(step, Step):
            raise ScheduleError(f"schedule: expected schedules.Step entries, got "
                                f"{type(step).__name__}")
        key = (step.target, step.scheme, step.top_k, step.top_p,
               tuple(g for g, _ in step.guidance))
        last = runs[-1] if runs else None
        if (last is not None and step.scheme != "autoregressive"
                and (last.target, last.scheme, last.steps[0].top_k, last.steps[0].top_p,
                     tuple(g for g, _ in last.steps[0].guidance)) == key):
            last.steps.append(step)
        else:
            runs.append(Run(step.target, step.scheme, [step]))
    return runs


class Sampler:
    """Generation with a FourM model. `sentinels` are needed for sequence targets and for
    guidance against sequence conditions."""

    def __init__(self, model: FourM, sentinels: SentinelSpec | None = None, *,
                 loop: str = "fori"):
        if loop not in LOOPS:
            raise ValueError(f"Sampler: loop expected one of {LOOPS}, got {loop!r}")
        self.model_config = model.config
        self.specs = model.config.modalities
        self.sentinels = sentinels
        self.loop = loop
        self.graphdef, self.treedef, self.params = split_for_inference(concrete(model))
        self.pixel_dim = max((s.patch_dim for s in self.specs if s.input and s.is_continuous),
                             default=0)
        self.traces: collections.Counter = collections.Counter()
        self._image = jax.jit(self._image_run, static_argnames=("plan",))
        self._sequence = jax.jit(self._sequence_run, static_argnames=("plan",))

    # ----------------------------------------------------------------------------- public
    def index(self, name: str) -> int:
        return self.model_config.index(name)

    def generate(self, state: State, schedule: Sequence[Step], keys: jax.Array, *,
                 progress: bool = False) -> tuple[State, dict]:
        """Runs `schedule` on a copy of `state`; `keys` are typed PRNG keys, one per example [B].

        Returns (new state, info): info["sequences"][name] = {"generated", "merged", "complete"}
        for every sequence target (lists over the batch, ids as numpy arrays), and
        info["decode_order"][name] [B, L] int32 for image-like targets: the step that committed
        each position (counted over the target's steps), -1 where it was known before."""
        state = {name: m.copy() for name, m in state.items()}
        b = batch_size_of(state)
        keys = jnp.asarray(keys)
        if keys.shape != (b,) or not jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
            raise GenerationInputError(f"generate: keys expected typed PRNG keys of shape [{b}] "
                                       f"(jax.random.key), got {keys.dtype} {list(keys.shape)}")
        info: dict = {"sequences": {}, "decode_order": {}, "target_steps": {}}
        runs = group_runs(schedule)
        for j, run in enumerate(tqdm(runs, desc="generate", disable=not progress)):
            run_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, j)
            spec = self.specs[self._target_index(run.target)]
            if run.scheme == "autoregressive":
                if spec.kind != "sequence":
                    raise ScheduleError(f"target {run.target!r}: 'autoregressive' needs a "
                                        f"sequence modality, got kind {spec.kind!r}")
                info["sequences"][run.target] = self._run_sequence(state, run.steps[0],
                                                                   run_keys)
            elif run.scheme in ("maskgit", "roar"):
                if spec.kind not in ("image", "vectors"):
                    raise ScheduleError(f"target {run.target!r}: scheme {run.scheme!r} needs an "
                                        f"image-like modality, got kind {spec.kind!r}")
                self._run_image(state, run, run_keys, info)
            else:
                raise ScheduleError(f"target {run.target!r}: unknown scheme {run.scheme!r}")
        info.pop("target_steps")
        return state, info

    # ------------------------------------------------------------------------ host drivers
    def _target_index(self, name: str) -> int:
        try:
            m = self.index(name)
        except KeyError:
            raise ScheduleError(f"target {name!r}: unknown modality (known: "
                                f"{list(self.model_config.names)})") from None
        if not (self.specs[m].target and self.specs[m].is_token):
            raise ScheduleError(f"target {name!r}: not a token target of this model")
        return m

    def _conditions(self, state: State, exclude: str | None) -> list[str]:
        """Encoder modalities: inputs of the model with something known, in spec order."""
        return [s.name for s in self.specs
                if s.input and s.name != exclude and s.name in state and state[s.name].known.any()]

    def _guidance(self, steps: Sequence[Step], target: str, present: list[str]):
        """(passes, visible [P, M] bool, coefficients [S, P] float32) of a run."""
        m = len(self.specs)
        guided = any(step.guided for step in steps)
        if not guided:
            return 1, np.ones((1, m), bool), np.ones((len(steps), 1), np.float32)
        groups = [g for g, _ in steps[0].guidance]
        for group in groups:
            for name in group:
                if name == target:
                    raise ScheduleError(f"target {target!r}: guidance cannot drop the target "
                                        f"itself (condition group {list(group)})")
                self.index(name)   # unknown names fail here, clearly
        dropped = {name for group in groups for name in group}
        if self.sentinels is None and any(
                self.specs[self.index(n)].kind == "sequence" for n in dropped if n in present):
            raise GenerationInputError("guidance against a sequence condition needs sentinels "
                                       "(Sampler(..., sentinels=SentinelSpec(...)))")
        base = np.array([s.name not in dropped for s in self.specs])
        visible = [base] + [base | np.array([s.name in g for s in self.specs]) for g in groups]
        coefs = [sampling.guidance_coefficients([w for _, w in step.guidance]) for step in steps]
        return len(visible), np.stack(visible), np.asarray(coefs, np.float32)

    def _run_image(self, state: State, run: Run, keys: jax.Array, info: dict) -> None:
        name, steps = run.target, run.steps
        m = self.index(name)
        spec = self.specs[m]
        b = batch_size_of(state)
        target = state.get(name) or unknown(spec, b)
        unknown_counts = (~target.known).sum(axis=1)
        distinct = sorted(set(unknown_counts.tolist()))
        if len(distinct) != 1:
            raise GenerationInputError(
                f"target {name!r}: every example must have the same number of unknown positions "
                f"(the schedule is shared by the batch), got {distinct}")
        counts = tuple(int(s.num_tokens) for s in steps)
        if min(counts) < 0 or sum(counts) > int(unknown_counts[0]):
            raise ScheduleError(f"target {name!r}: the schedule decodes {sum(counts)} tokens, but "
                                f"{int(unknown_counts[0])} positions are unknown")
        if not spec.input and (len(steps) > 1 or unknown_counts[0] < spec.length):
            # Later steps read the decoded tokens back through the encoder.
            raise ScheduleError(f"target {name!r} is not an input of this model, so it can only "
                                f"be decoded from nothing in a single step (steps=1), got "
                                f"{len(steps)} steps")
        present = self._conditions(state, exclude=name)
        passes, visible, coefs = self._guidance(steps, name, present)
        enc = pack_encoder(state, self.specs, present, self.pixel_dim)
        unrolled = self.loop == "unrolled" or (self.loop == "auto"
                                               and len(steps) <= UNROLL_MAX_STEPS)
        plan = ImagePlan(target=m, scheme=run.scheme, counts=counts,
                         start_known=spec.length - int(unknown_counts[0]), passes=passes,
                         top_k=int(steps[0].top_k), top_p=steps[0].top_p > 0,
                         unrolled=unrolled)
        temps = np.asarray([s.temperature for s in steps], np.float32)
        tokens, known, step_of = self._image(self.params, enc, target.tokens, target.known, keys,
                                             temps, coefs, visible, self._s1(),
                                             np.float32(steps[0].top_p), plan=plan)
        state[name] = ModalityState(np.asarray(tokens), np.asarray(known))
        # Decode order over every run of this target: the step (counted over its runs) that
        # committed each position, -1 for positions known before.
        order = info["decode_order"].setdefault(name, np.full(target.known.shape, -1, np.int32))
        offset = info["target_steps"].get(name, 0)
        step_of = np.asarray(step_of)
        order[step_of >= 0] = step_of[step_of >= 0] + offset
        info["target_steps"][name] = offset + len(steps)

    def _run_sequence(self, state: State, step: Step, keys: jax.Array) -> dict:
        name = step.target
        m = self.index(name)
        spec = self.specs[m]
        s = self.sentinels
        if s is None:
            raise GenerationInputError(f"target {name!r}: sequence generation needs the text "
                                       f"sentinels (Sampler(..., sentinels=SentinelSpec(...)))")
        b = batch_size_of(state)
        if name not in state or not state[name].known.any():
            state[name] = empty_sequence_target(spec, b, s)
        target = state[name]
        prompts = [target.tokens[i, target.known[i]] for i in range(b)]
        starts, ends = [], []
        for i, prompt in enumerate(prompts):
            marks = prompt[s.is_sentinel(prompt)]
            if marks.size == 0:
                raise GenerationInputError(
                    f"target {name!r}[{i}]: the input is complete (no sentinel); put [S_1] where "
                    f"text should be generated (e.g. 'a red sphere [S_1]'), or leave it out")
            last = int(marks.max()) - s.first_sentinel_id + 1
            if last + 1 > s.num_sentinels:
                raise GenerationInputError(f"target {name!r}[{i}]: the closing sentinel "
                                           f"[S_{last + 1}] is outside the vocabulary's sentinels")
            starts.append(int(marks.min()))
            ends.append(s.sentinel(last + 1))
        present = self._conditions(state, exclude=None)
        passes, visible, coefs = self._guidance([step], name, present)
        enc = pack_encoder(state, self.specs, present, self.pixel_dim)
        rows = int(step.max_tokens) if step.max_tokens else spec.length + 1
        plan = SequencePlan(target=m, rows=rows, passes=passes, top_k=int(step.top_k),
                            top_p=step.top_p > 0, pad_id=s.pad_id)
        out, done = self._sequence(self.params, enc, keys, np.float32(step.temperature),
                                   coefs[0], visible, self._s1(), np.float32(step.top_p),
                                   np.asarray(starts, np.int32), np.asarray(ends, np.int32),
                                   plan=plan)
        out, done = np.asarray(out), np.asarray(done)
        generated, merged, complete = [], [], []
        for i in range(b):
            row = out[i]
            stop = int(np.flatnonzero(row == ends[i])[0]) + 1 if done[i] else row.shape[0]
            gen = row[:stop]
            full, ok = merge_generated(prompts[i], gen, s)
            generated.append(gen)
            merged.append(full)
            complete.append(bool(done[i]) and ok)
        # The completed text becomes an input of the next targets (at most the model's length).
        rows_in = [x[:spec.length] for x in merged]
        tokens = np.zeros((b, spec.length), np.int32)
        known = np.zeros((b, spec.length), bool)
        for i, x in enumerate(rows_in):
            tokens[i, :x.shape[0]], known[i, :x.shape[0]] = x, True
        state[name] = ModalityState(tokens, known)
        return {"generated": generated, "merged": merged, "complete": np.asarray(complete)}

    def _s1(self) -> np.int32:
        return np.int32(self.sentinels.sentinel(1) if self.sentinels else 0)

    # ----------------------------------------------------------------------- jitted loops
    def _model(self, params) -> FourM:
        # Per-layer weights stacked again: the unrolled layers slice them straight back out, and
        # XLA folds slice(stack(w_0 .. w_n), i) into w_i, so no weight is copied.
        leaves = [jnp.stack(x) if isinstance(x, tuple) else x for x in params]
        return nnx.merge(self.graphdef, jax.tree.unflatten(self.treedef, leaves))

    def _logits(self, params, batch: dict, target: int, passes: int, b: int) -> jax.Array:
        """Target logits [P, B, n, V] of one step's batch, the model run over groups of rows."""
        rows = passes * b
        group = rows_per_call(rows, batch["enc_ids"].shape[1])

        def forward(batch):
            model = self._model(params)          # inside the loop body: the slices fold here
            enc_out, enc_emb = model.encode(batch)
            return model.decode(batch, enc_out, enc_emb)                     # [g, n, D]

        if group == rows:
            h = forward(batch)
        else:
            groups = jax.tree.map(lambda x: x.reshape((rows // group, group) + x.shape[1:]),
                                  batch)
            h = jax.lax.map(forward, groups)
            h = h.reshape((rows,) + h.shape[2:])
        # Outside the map: the target's rows of the output table are sliced (copied) once.
        logits = self._model(params).logits_for_modality(h, target)           # [P*B, n, V]
        return logits.reshape((passes, b) + logits.shape[1:])

    def _image_run(self, params, enc, tokens, known, keys, temps, coefs, visible, s1, top_p, *,
                   plan: ImagePlan):
        self.traces["image"] += 1        # runs at trace time only: counts compilations
        b, length = tokens.shape
        cond = _apply_passes(enc, visible, s1)                       # [P*B, Nc]
        top_p = top_p if plan.top_p else None
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
        if plan.scheme == "roar":
            # Known positions first, then one random order per example.
            draw = sampling.example_uniforms(keys, ORDER_DRAW, length)
            order = jnp.argsort(jnp.where(known, -1.0, draw), axis=1).astype(jnp.int32)

        def step(i, done, count, tokens, known, step_of, static: bool):
            """One decoding step: `done` target positions known, `count` to commit."""
            if static:
                if plan.scheme == "maskgit":
                    ranked = jnp.argsort(~known, axis=1, stable=True).astype(jnp.int32)
                    enc_pos, dec_pos = ranked[:, :done], ranked[:, done:]
                else:
                    enc_pos, dec_pos = order[:, :done], order[:, done:done + count]
                candidate = ~jnp.take_along_axis(known, dec_pos, 1)
            else:
                enc_pos = positions
                if plan.scheme == "maskgit":
                    dec_pos, candidate = positions, ~known
                else:
                    width = max(plan.counts)
                    # Padded with an out-of-range position: its writes are dropped below.
                    padded = jnp.concatenate(
                        [order, jnp.full((b, width), length, jnp.int32)], axis=1)
                    dec_pos = jax.lax.dynamic_slice_in_dim(padded, done, width, axis=1)
                    candidate = jnp.arange(width) < count
                    candidate = jnp.broadcast_to(candidate, dec_pos.shape)
            batch = _target_batch(cond, tokens, known, enc_pos, dec_pos, candidate, plan.target,
                                  plan.passes, self.pixel_dim)
            logits = self._logits(params, batch, plan.target, plan.passes, b)  # [P, B, n, V]
            logits = (logits[0] if plan.passes == 1
                      else sampling.combine_guidance(logits, coefs[i]))
            uniform = sampling.example_uniforms(keys, i, length)             # [B, L]
            uniform = jnp.take_along_axis(uniform, jnp.minimum(dec_pos, length - 1), 1)
            ids, confidence = sampling.sample(logits, temps[i], uniform, plan.top_k, top_p)
            commit = (sampling.top_confidence(confidence, candidate, count)
                      if plan.scheme == "maskgit" else candidate)
            rows = jnp.arange(b)[:, None]
            old = jnp.take_along_axis(tokens, jnp.minimum(dec_pos, length - 1), 1)
            tokens = tokens.at[rows, dec_pos].set(jnp.where(commit, ids, old), mode="drop")
            known = known.at[rows, dec_pos].max(commit, mode="drop")
            old_step = jnp.take_along_axis(step_of, jnp.minimum(dec_pos, length - 1), 1)
            step_of = step_of.at[rows, dec_pos].set(jnp.where(commit, i, old_step), mode="drop")
            return tokens, known, step_of

        carry = (tokens, known, jnp.full(tokens.shape, -1, jnp.int32))
        if plan.unrolled:
            done = plan.start_known
            for i, count in enumerate(plan.counts):
                carry = step(i, done, count, *carry, static=True)
                done += count
        else:
            starts = jnp.asarray(np.cumsum((plan.start_known,) + plan.counts[:-1]), jnp.int32)
            counts = jnp.asarray(plan.counts, jnp.int32)
            carry = jax.lax.fori_loop(
                0, len(plan.counts),
                lambda i, carry: step(i, starts[i], counts[i], *carry, static=False), carry)
        return carry

    def _sequence_run(self, params, enc, keys, temperature, coefs, visible, s1, top_p, starts,
                      ends, *, plan: SequencePlan):
        self.traces["sequence"] += 1
        model = self._model(params)
        spec = self.specs[plan.target]
        b, p, rows = starts.shape[0], plan.passes, plan.rows
        top_p = top_p if plan.top_p else None
        cond = _apply_passes(enc, visible, s1)
        enc_out, enc_emb = model.encode(cond)
        cache = incremental.start(model, enc_out, enc_emb, cond["enc_valid"], rows)
        out = jnp.zeros((b, rows + 1), jnp.int32).at[:, 0].set(starts)

        def body(carry):
            i, out, done, cache = carry
            model = self._model(params)          # inside the loop body: the slices fold here
            # Teacher-forcing layout (masking.teacher_forcing_rows): row i reads token i and
            # predicts token i + 1; rows past the modality's length use position 0, as the
            # reference.
            ids_in = jnp.tile(jax.lax.dynamic_index_in_dim(out, i, 1, keepdims=False), p)
            position = jnp.where(i < spec.length, i, 0)
            h, cache = incremental.step(model, cache, ids_in, i, plan.target, position)
            logits = model.logits_for_modality(h, plan.target).reshape(p, b, -1)
            logits = logits[0] if p == 1 else sampling.combine_guidance(logits, coefs)
            uniform = sampling.example_uniforms(keys, i, 1)[:, 0]
            ids, _ = sampling.sample(logits, temperature, uniform, plan.top_k, top_p)
            ids = jnp.where(done, plan.pad_id, ids)
            out = out.at[:, i + 1].set(ids)
            return i + 1, out, done | (ids == ends), cache

        def running(carry):
            i, _, done, _ = carry
            return (i < rows) & ~jnp.all(done)

        _, out, done, _ = jax.lax.while_loop(
            running, body, (jnp.int32(0), out, jnp.zeros((b,), bool), cache))
        return out, done


def concrete(model: FourM) -> FourM:
    """The model with every variable holding an array.

    `model_io.load_model` restores the parameters only, so the fixed (non-trainable) variables,
    the sin-cos position tables, stay abstract shapes; they are rebuilt here from the config
    (under jit, the parameter initialisers are dead code and never run)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if not any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(rest)):
        return model
    config = model.config
    fresh = jax.jit(lambda: nnx.split(FourM(config, rngs=nnx.Rngs(0)), nnx.Param, ...)[2])()
    return nnx.merge(graphdef, params, fresh)


# Encoder slots per model call in the image loops. A call over a whole large batch streams its
# attention scores [rows, H, N, N] and activations through memory instead of cache; splitting it
# (lax.map over groups of rows) costs more, smaller ops. On the tiny model (rgb -> depth, 8 steps,
# batch 8, 2 CPU threads) groups of 2 examples (196 + up to 196 slots each) took 10-15% less CPU
# time than one call over all 8, and less than single examples or groups of 4.
CALL_SLOTS = 800

# The model's attributes that hold its stacked blocks (a leading 'layers' axis).
LAYER_STACKS = ("encoder", "decoder")


def split_for_inference(model: FourM):
    """(graphdef, treedef, leaves) of `model` as the decoding loops use it.

    Every decoding step calls the model: with scanned layers each call slices every layer's
    weights out of the stacked arrays (a copy of all the weights per step, ~10% of a step of the
    tiny model). So the inference graph unrolls its layers (`scan_layers=False`; no remat either,
    nothing is differentiated) and receives the stacked weights as one array per layer (a tuple in
    place of the stacked leaf), stacked again under jit where the slices fold away."""
    config = model.config.replace(scan_layers=False, remat="none")
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: FourM(config, rngs=nnx.Rngs(0))))
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(nnx.state(model))
    leaves = []
    for path, x in with_paths:
        stacked = getattr(path[0], "key", None) in LAYER_STACKS
        leaves.append(tuple(x[i] for i in range(x.shape[0])) if stacked else x)
    return graphdef, treedef, leaves


def rows_per_call(rows: int, encoder_slots: int) -> int:
    """How many batch rows one model call takes: the largest divisor of `rows` whose encoder
    slots stay within CALL_SLOTS (at least 1)."""
    fits = [g for g in range(1, rows + 1) if rows % g == 0 and g * encoder_slots <= CALL_SLOTS]
    return max(fits, default=1)


# --------------------------------------------------------------------------- batch building
ENC_KEYS = ("enc_ids", "enc_mod", "enc_pos", "enc_valid")


def _apply_passes(enc: dict, visible: jax.Array, s1: jax.Array) -> dict:
    """Encoder slots [B, N] -> [P*B, N], pass p hiding the modalities with visible[p, m] False:
    their slots become invalid, except a sequence's first slot, which becomes [S_1]."""
    shown = visible[:, enc["enc_mod"]]                                   # [P, B, N]
    first = enc["enc_first"][None]
    keep = shown | ~first

    def flat(x):
        return x.reshape((-1,) + x.shape[2:])

    out = {
        "enc_ids": flat(jnp.where(keep, enc["enc_ids"][None], s1)),
        "enc_mod": flat(jnp.broadcast_to(enc["enc_mod"][None], shown.shape)),
        "enc_pos": flat(jnp.broadcast_to(enc["enc_pos"][None], shown.shape)),
        "enc_valid": flat(jnp.where(shown, enc["enc_valid"][None], first)),
    }
    if "enc_pixels" in enc:
        out["enc_pixels"] = flat(jnp.where(keep[..., None], enc["enc_pixels"][None], 0.0))
    return out


def _target_batch(cond: dict, tokens, known, enc_pos, dec_pos, candidate, target: int,
                  passes: int, pixel_dim: int) -> dict:
    """The model batch of one image-like step: conditioning slots (already per pass) plus the
    target's known slots in the encoder; the target's query slots in the decoder."""
    b, length = tokens.shape
    safe = jnp.minimum(enc_pos, length - 1)
    n_enc, n_dec = enc_pos.shape[1], dec_pos.shape[1]

    def tile(x):
        return jnp.concatenate([x] * passes, axis=0) if passes > 1 else x

    enc_t = {
        "enc_ids": jnp.take_along_axis(tokens, safe, 1),
        "enc_mod": jnp.full((b, n_enc), target, jnp.int32),
        "enc_pos": enc_pos,
        "enc_valid": jnp.take_along_axis(known, safe, 1),
    }
    batch = {k: jnp.concatenate([cond[k], tile(enc_t[k])], axis=1) for k in ENC_KEYS}
    if pixel_dim:
        batch["enc_pixels"] = jnp.concatenate(
            [cond["enc_pixels"], jnp.zeros((passes * b, n_enc, pixel_dim), jnp.float32)], axis=1)
    zeros = jnp.zeros((passes * b, n_dec), jnp.int32)
    batch.update({
        "dec_mod": zeros + target,
        "dec_pos": tile(jnp.minimum(dec_pos, length - 1)),
        "dec_ids_in": zeros,
        "dec_targets": zeros,
        # Only still-unknown positions are queries (the reference's decoder holds nothing else).
        "dec_valid": tile(candidate),
        "dec_attn_valid": tile(candidate),
        "dec_seq_index": zeros,
    })
    return batch


# ------------------------------------------------------------------------------ sequences
def merge_generated(prompt: np.ndarray, generated: np.ndarray,
                    sentinels: SentinelSpec) -> tuple[np.ndarray, bool]:
    """Splice generated spans into the prompt's sentinels. A sentinel the generation never
    reached (it stopped at max_tokens) gets an empty span; returns (ids, every span present)."""
    prompt, generated = np.asarray(prompt), np.asarray(generated)
    wanted = [int(t) for t in prompt[sentinels.is_sentinel(prompt)]]
    have = {int(t) for t in generated[sentinels.is_sentinel(generated)]}
    missing = [t for t in wanted if t not in have]
    if missing:
        generated = np.concatenate([generated, np.asarray(missing, generated.dtype)])
    return merge_span_masking(prompt, generated, sentinels), not missing


def example_keys(seed: int, batch_size: int, first_index: int = 0) -> jax.Array:
    """One key per example: fold_in(key(seed), index), so an example's draws depend on the seed
    and its index only, never on the other examples of the batch."""
    base = jax.random.key(int(seed))
    idx = jnp.arange(first_index, first_index + batch_size)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base, idx)


__all__ = ["ImagePlan", "LOOPS", "Run", "Sampler", "SequencePlan", "example_keys", "group_runs",
           "merge_generated"]

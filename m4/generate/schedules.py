"""Generation schedules: how many tokens each step decodes, at which temperature and guidance.

The numbers follow the reference sampler (apple/ml-4m `fourm/utils/generation.py`,
REFERENCE_4M.md section 5.2-5.3) so that a schedule written for the reference decodes the same
token counts here:

- token schedules: `cosine` (differences of 0.5 (1 + cos(pi i / n)) times the token count, rounded
  half to even, the last step takes the remainder: 8 steps x 784 tokens = [30, 85, 127, 150, 150,
  127, 85, 30]) and `linear` (equal shares, largest first, trailing empty steps dropped);
- temperature schedules: `constant`, `linear` (decays in proportion to the tokens still to decode)
  and `onex:{min_t}:{power}` (a 1/x^power curve from the start temperature down to min_t);
- guidance scale schedules: `constant`, and `linear` (m4's addition; the reference leaves its
  `cosine` unimplemented): the scale ramps from 1 (no guidance) to the given scale in proportion
  to the tokens decoded, as MUSE-style samplers ramp guidance.

A chained generation is a flat list of `Step`s (the reference's list of dicts), built from one
compact `TargetSpec` per target by `build_schedule`; `default_target` holds the per-kind defaults.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from m4.modalities import ModalitySpec

SCHEMES = ("maskgit", "roar", "autoregressive")
TOKEN_SCHEDULES = ("cosine", "linear")
CFG_SCHEDULES = ("constant", "linear")
# Below this absolute temperature the reference samples by argmax.
GREEDY_TEMPERATURE = 1e-10


class ScheduleError(ValueError):
    """A schedule (or a target spec) that cannot be built or run."""


# ------------------------------------------------------------------------------ token schedules
def cosine_schedule(num_steps: int, total_tokens: int) -> np.ndarray:
    """Tokens per step, small at both ends. int64 [num_steps]."""
    _check_counts(num_steps, total_tokens)
    if num_steps > total_tokens:
        # The reference would plan steps that decode nothing: say so instead.
        raise ScheduleError(f"decoding steps: {num_steps} cosine steps for {total_tokens} tokens; "
                            f"expected at most one step per token")
    level = 0.5 * (1.0 + np.cos(np.pi * np.arange(num_steps) / num_steps))     # [n] from 1 down
    # Python's round (half to even) on each difference, as the reference.
    counts = [round(total_tokens * d) for d in (level[:-1] - level[1:])]
    counts.append(total_tokens - sum(counts))
    if min(counts) < 0:
        # With few tokens the rounded differences overshoot and the reference's last step goes
        # negative; rounding the cumulative count instead keeps every step >= 0 and the total
        # exact (and equals the reference's whenever the reference's is valid, e.g. 784 / 8).
        edges = 0.5 * (1.0 - np.cos(np.pi * np.arange(num_steps + 1) / num_steps))   # 0 -> 1
        counts = np.diff(np.rint(total_tokens * edges).astype(np.int64)).tolist()
    return np.asarray(counts, np.int64)


def linear_schedule(num_steps: int, total_tokens: int) -> np.ndarray:
    """Equal shares, largest first; steps that would decode nothing are dropped (more steps than
    tokens gives one token per step). int64 [<= num_steps]."""
    _check_counts(num_steps, total_tokens)
    counts = np.diff(np.linspace(0, total_tokens, num_steps + 1, dtype=np.int64))
    counts = np.sort(counts)[::-1]
    return counts[counts > 0].astype(np.int64)


def token_schedule(name: str, num_steps: int, total_tokens: int) -> np.ndarray:
    if name == "cosine":
        return cosine_schedule(num_steps, total_tokens)
    if name == "linear":
        return linear_schedule(num_steps, total_tokens)
    raise ScheduleError(f"token schedule: expected one of {TOKEN_SCHEDULES}, got {name!r}")


def _check_counts(num_steps: int, total_tokens: int) -> None:
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ScheduleError(f"decoding steps: expected an int >= 1, got {num_steps!r}")
    if not isinstance(total_tokens, (int, np.integer)) or total_tokens < 1:
        raise ScheduleError(f"tokens to decode: expected an int >= 1, got {total_tokens!r}")


# ------------------------------------------------------------------------ temperature schedules
def temperature_schedule(name: str, temperature: float, tokens: np.ndarray) -> np.ndarray:
    """Temperature of each step of a token schedule. float64 [len(tokens)]."""
    tokens = np.asarray(tokens, np.float64)
    n, total = tokens.shape[0], float(tokens.sum())
    if name == "constant":
        return np.full(n, float(temperature))
    if name == "linear":
        # Step i runs at t * (tokens still masked before step i) / total.
        remaining = temperature * (total - np.cumsum(tokens)) / total
        return np.concatenate([[float(temperature)], remaining[:-1]]).clip(min=1e-9)
    if name.startswith("onex"):
        parts = name.split(":")
        try:
            min_t, power = float(parts[1]), float(parts[2])
            if len(parts) != 3:
                raise ValueError
        except (IndexError, ValueError):
            raise ScheduleError(f"temperature schedule: expected 'onex:{{min_t}}:{{power}}' "
                                f"(e.g. onex:0.5:0.5), got {name!r}") from None
        # The reference evaluates the curve on one point per *token* but then pairs it with the
        # steps (zip), so step i uses the curve's i-th point: reproduced as is.
        x = np.linspace(1, 100, num=int(total))
        y = 1.0 / x ** power
        y = y - y.min()
        y = y / y.max() if y.max() > 0 else y
        done = np.cumsum(tokens) / total
        curve = (1.0 - done) * y[:n]
        return (min_t + (temperature - min_t) * curve).clip(min=1e-9)
    raise ScheduleError(f"temperature schedule: expected 'constant', 'linear' or "
                        f"'onex:{{min_t}}:{{power}}', got {name!r}")


def guidance_schedule(name: str, scale: float, tokens: np.ndarray) -> np.ndarray:
    """Guidance scale of each step. float64 [len(tokens)]."""
    tokens = np.asarray(tokens, np.float64)
    if name == "constant":
        return np.full(tokens.shape[0], float(scale))
    if name == "linear":
        done = np.cumsum(tokens) / tokens.sum()          # fraction decoded after each step
        return 1.0 + (float(scale) - 1.0) * done
    raise ScheduleError(f"guidance schedule: expected one of {CFG_SCHEDULES}, got {name!r}")


# ------------------------------------------------------------------------------ specs and steps
@dataclasses.dataclass(frozen=True)
class TargetSpec:
    """How to generate one target modality; None fields take `default_target`'s values.

    cfg_scale: one scale (classifier-free guidance against the conditions all removed at once),
    or one weight per condition group (multi-condition guidance: each conditioning modality is its
    own group, in order, then each grown target, see `build_schedule`).
    """

    name: str
    scheme: str | None = None
    steps: int | None = None
    token_schedule: str | None = None
    temperature: float | None = None
    temperature_schedule: str | None = None
    cfg_scale: float | tuple[float, ...] | None = None
    cfg_schedule: str | None = None
    top_k: int | None = None
    top_p: float | None = None
    num_tokens: int | None = None       # image-like: tokens to decode (default: all positions)
    max_tokens: int | None = None       # autoregressive: most tokens generated (default L + 1)


@dataclasses.dataclass(frozen=True)
class Step:
    """One entry of a flat schedule (the reference's {target_domain, scheme, num_tokens, ...}).

    guidance: ((condition modality names, weight), ...). Empty, or one group of weight 1, means
    no guidance. logits = l_u + sum_i w_i (l_i - l_u), where l_u sees none of the condition
    groups and l_i sees group i (plus every input outside the groups).
    """

    target: str
    scheme: str
    num_tokens: int | None              # None for autoregressive steps
    temperature: float
    guidance: tuple[tuple[tuple[str, ...], float], ...] = ()
    top_k: int = 0
    top_p: float = 0.0
    max_tokens: int | None = None

    @property
    def guided(self) -> bool:
        return bool(self.guidance) and not (len(self.guidance) == 1
                                            and self.guidance[0][1] == 1.0)


def default_target(spec: ModalitySpec, name: str | None = None) -> TargetSpec:
    """Per-kind defaults, chosen for the demo's small models (documented in the README of the
    sampler, `m4/generate/__init__.py`):

    - image / vectors: MaskGIT, 8 steps (at most one per token), cosine token schedule,
      temperature 1 decaying linearly (confident tokens first, sharp at the end), no guidance.
    - sequence: autoregressive at temperature 0.3 (the reference's caption setting), no guidance.
    """
    if spec.kind == "sequence":
        return TargetSpec(name or spec.name, scheme="autoregressive", steps=None,
                          token_schedule="linear", temperature=0.3,
                          temperature_schedule="constant", cfg_scale=1.0,
                          cfg_schedule="constant", top_k=0, top_p=0.0)
    if spec.kind in ("image", "vectors"):
        return TargetSpec(name or spec.name, scheme="maskgit", steps=min(8, spec.length),
                          token_schedule="cosine", temperature=1.0, temperature_schedule="linear",
                          cfg_scale=1.0, cfg_schedule="constant", top_k=0, top_p=0.0)
    raise ScheduleError(f"target {spec.name!r}: kind {spec.kind!r} cannot be generated "
                        f"(continuous modalities are inputs only)")


def resolve_target(target: TargetSpec | str, spec: ModalitySpec) -> TargetSpec:
    """`target` with every None field replaced by the defaults of its modality."""
    target = TargetSpec(target) if isinstance(target, str) else target
    defaults = default_target(spec, target.name)
    filled = {f.name: getattr(target, f.name) if getattr(target, f.name) is not None
              else getattr(defaults, f.name) for f in dataclasses.fields(TargetSpec)}
    if target.scheme not in (None, "autoregressive") and spec.kind == "sequence":
        raise ScheduleError(f"target {spec.name!r}: scheme {target.scheme!r} is for image-like "
                            f"modalities; sequences are generated 'autoregressive'")
    if target.scheme == "autoregressive" and spec.kind != "sequence":
        raise ScheduleError(f"target {spec.name!r}: scheme 'autoregressive' needs a sequence "
                            f"modality, {spec.name!r} is {spec.kind!r} (use maskgit or roar)")
    return TargetSpec(**filled)


def build_schedule(conditions: Sequence[str], targets: Sequence[TargetSpec | str],
                   specs: Sequence[ModalitySpec], *, grow_conditioning: bool = False) -> list[Step]:
    """The flat list of steps of a chained generation (reference
    `build_chained_generation_schedules`). `conditions` are the modalities guidance removes in
    its unconditional pass; with `grow_conditioning`, each finished target joins them."""
    by_name = {s.name: s for s in specs}
    conditions = list(conditions)
    steps: list[Step] = []
    for target in targets:
        name = target if isinstance(target, str) else target.name
        if name not in by_name:
            raise ScheduleError(f"target {name!r}: unknown modality (known: {list(by_name)})")
        spec = by_name[name]
        if not spec.target:
            raise ScheduleError(f"target {name!r}: the model cannot predict this modality "
                                f"(spec.target is False)")
        t = resolve_target(target, spec)
        _check_target(t)
        groups = _guidance_groups(t, conditions)
        if t.scheme == "autoregressive":
            guidance = tuple((g, float(w)) for g, w in groups)
            steps.append(Step(name, t.scheme, None, float(t.temperature), guidance,
                              int(t.top_k), float(t.top_p), t.max_tokens))
        else:
            total = spec.length if t.num_tokens is None else int(t.num_tokens)
            if not 1 <= total <= spec.length:
                raise ScheduleError(f"target {name!r}: num_tokens expected in [1, "
                                    f"{spec.length}], got {t.num_tokens}")
            if t.scheme == "roar":
                counts = linear_schedule(int(t.steps), total)
            else:
                counts = token_schedule(t.token_schedule, int(t.steps), total)
            temps = temperature_schedule(t.temperature_schedule, float(t.temperature), counts)
            weights = [guidance_schedule(t.cfg_schedule, w, counts) for _, w in groups]
            for i, (count, temp) in enumerate(zip(counts, temps)):
                guidance = tuple((g, float(w[i])) for (g, _), w in zip(groups, weights))
                steps.append(Step(name, t.scheme, int(count), float(temp), guidance,
                                  int(t.top_k), float(t.top_p)))
        if grow_conditioning:
            conditions.append(name)
    return steps


def _guidance_groups(t: TargetSpec, conditions: list[str]):
    if isinstance(t.cfg_scale, (tuple, list)):
        if len(t.cfg_scale) != len(conditions):
            raise ScheduleError(
                f"target {t.name!r}: cfg_scale lists {len(t.cfg_scale)} weights, expected one per "
                f"condition ({len(conditions)}: {conditions})")
        return [((c,), float(w)) for c, w in zip(conditions, t.cfg_scale)]
    if not conditions:
        return []
    return [(tuple(conditions), float(t.cfg_scale))]


def _check_target(t: TargetSpec) -> None:
    where = f"target {t.name!r}"
    if t.scheme not in SCHEMES:
        raise ScheduleError(f"{where}: scheme expected one of {SCHEMES}, got {t.scheme!r}")
    if t.scheme != "autoregressive":
        if t.token_schedule not in TOKEN_SCHEDULES:
            raise ScheduleError(f"{where}: token_schedule expected one of {TOKEN_SCHEDULES}, "
                                f"got {t.token_schedule!r}")
        if t.cfg_schedule not in CFG_SCHEDULES:
            raise ScheduleError(f"{where}: cfg_schedule expected one of {CFG_SCHEDULES}, got "
                                f"{t.cfg_schedule!r}")
    if not (isinstance(t.top_k, (int, np.integer)) and t.top_k >= 0):
        raise ScheduleError(f"{where}: top_k expected an int >= 0, got {t.top_k!r}")
    if not 0.0 <= float(t.top_p) <= 1.0:
        raise ScheduleError(f"{where}: top_p expected a value in [0, 1], got {t.top_p!r}")
    if not math.isfinite(float(t.temperature)) or float(t.temperature) < 0:
        raise ScheduleError(f"{where}: temperature expected a finite value >= 0, got "
                            f"{t.temperature!r}")
    if t.max_tokens is not None and int(t.max_tokens) < 1:
        raise ScheduleError(f"{where}: max_tokens expected an int >= 1, got {t.max_tokens!r}")


# --------------------------------------------------------------------------------- text form
_FIELDS = {
    "scheme": str, "steps": int, "tokens": str, "temp": float, "temp_schedule": str,
    "cfg": str, "cfg_schedule": str, "top_k": int, "top_p": float, "num_tokens": int,
    "max_tokens": int,
}
_FIELD_NAMES = {"tokens": "token_schedule", "temp": "temperature",
                "temp_schedule": "temperature_schedule", "cfg": "cfg_scale"}


def parse_target(text: str) -> TargetSpec:
    """`name[,key=value...]`, e.g. `depth,scheme=maskgit,steps=8,tokens=cosine,temp=1.0,
    temp_schedule=onex:0.5:0.5,cfg=2.0,cfg_schedule=linear,top_k=0,top_p=0.8`. cfg may list one
    weight per condition separated by '/': `cfg=3.0/1.5`."""
    name, *items = [part.strip() for part in text.split(",")]
    if not name or "=" in name:
        raise ScheduleError(f"target {text!r}: expected 'name[,key=value...]'")
    fields = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in _FIELDS:
            raise ScheduleError(f"target {text!r}: item {item!r}: expected key=value with key "
                                f"one of {sorted(_FIELDS)}")
        try:
            if key == "cfg":
                weights = [float(v) for v in value.split("/")]
                parsed = weights[0] if len(weights) == 1 else tuple(weights)
            else:
                parsed = _FIELDS[key](value)
        except ValueError:
            raise ScheduleError(f"target {text!r}: {key}={value!r} is not a valid "
                                f"{_FIELDS[key].__name__}") from None
        fields[_FIELD_NAMES.get(key, key)] = parsed
    return TargetSpec(name, **fields)

"""Generation with 4M models: compiled MaskGIT / ROAR / autoregressive decoding, chained.

    from m4.generate import Generator
    gen = Generator(model, tokenizers)                      # model: m4.train.model_io.load_model
    out = gen.generate({"rgb": image}, ["caption", "depth", "semseg"], seed=0)
    out["outputs"]["depth"], out["outputs"]["caption"], out["tokens"]["semseg"]

Layers (each usable alone):
- schedules.py: token / temperature / guidance schedules as the reference defines them,
  `TargetSpec` (compact per-target settings), `build_schedule` -> flat list of `Step`s.
- sampler.py: `Sampler(model, sentinels).generate(state, schedule, keys)` on token states; each
  target's decoding loop is one jitted call (see its docstring for the loop forms).
- api.py: `Generator`: raw inputs through the tokenizers, decoded outputs back.
- cli.py: `m4 generate`; render.py: tiles and the PNG grid.

Defaults per target kind (`schedules.default_target`, chosen for the demo's small models; every
field can be overridden per target):
- image / vectors: MaskGIT, 8 steps (at most one per token), cosine token schedule, temperature
  1.0 decaying linearly, no guidance, no top-k / top-p.
- sequence (caption): autoregressive, temperature 0.3, no guidance, up to length + 1 tokens,
  stopping at the closing sentinel.
For the reference's RGB->X notebook setting use e.g. TargetSpec(name, scheme="roar", steps=1,
temperature=0.01, cfg_scale=2.0, top_p=0.8); for caption->image chains cfg 2-3 with
grow_conditioning=True.
"""

from m4.generate.api import Generator, Tokens, sentinels_from_tokenizer
from m4.generate.sampler import Sampler, example_keys
from m4.generate.schedules import (
    ScheduleError, Step, TargetSpec, build_schedule, cosine_schedule, default_target,
    linear_schedule, parse_target, temperature_schedule,
)
from m4.generate.state import GenerationInputError, ModalityState

__all__ = [
    "GenerationInputError", "Generator", "ModalityState", "Sampler", "ScheduleError", "Step",
    "TargetSpec", "Tokens", "build_schedule", "cosine_schedule", "default_target",
    "example_keys", "linear_schedule", "parse_target", "sentinels_from_tokenizer",
    "temperature_schedule",
]

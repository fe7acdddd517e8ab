"""The demo's numbers: how much of each stage fits in the 30-minute budget on 2 CPU cores.

Two recipes: `full` (README's main job, 64x64 scenes) and `tiny` (the test suite's end-to-end
run, seconds). Each stage reads its settings from here, so one place says where the time goes.
"""

from __future__ import annotations

import dataclasses
import pathlib

import m4

REPO = pathlib.Path(m4.__file__).resolve().parents[1]
TOKENIZER_CONFIGS = REPO / "tokenizers"
EXPERIMENTS = REPO / "experiments"

# Every modality of the built-in scenes, in the order the model lists them.
MODALITIES = ("rgb", "depth", "normals", "semseg", "features", "caption", "poses")


@dataclasses.dataclass(frozen=True)
class Recipe:
    resolution: int
    tokenizer_arg: str | None            # the `tokenizers/<name>.py:<arg>` variant
    # Config overrides per tokenizer ("*": every tokenizer that has the field). The demo's
    # tokenizers are smaller than the shipped configs (narrower networks, 256 codes, a few hundred
    # steps): they train in about a minute each and are easier targets for a small 4M.
    tokenizer_overrides: dict[str, dict[str, object]]
    # A wall-time cap per tokenizer (minutes) on top of its step count, so a busy machine still
    # finishes the demo on time (the schedule follows whichever ends first).
    tokenizer_max_minutes: float
    train_scenes: int                    # scenes rendered and tokenized for the 4M
    model_config: str                    # `experiments/demo.py[:arg]`
    generation_scenes: int               # held-out scenes shown in generations.png
    eval_scenes: int                     # held-out scenes of the evaluation matrix
    eval_batch: int
    # Image modalities the 4M also reads as pixel patches (`<name>_pixels`, as the reference reads
    # rgb@224): measured on the demo, rgb -> semseg / caption from tokens alone stalled (see
    # experiments/demo.py).
    pixel_inputs: tuple[str, ...] = ("rgb",)
    # Modalities of the matrix (None: all). Each cell compiles its own decoding loop, so the
    # test-size run keeps four (16 cells instead of 49) to stay quick.
    eval_modalities: tuple[str, ...] | None = None


# A tokenizer whose encoder codes each 8x8 patch alone (one stage, 1x1 convolutions; see
# m4.tokenizers.vqvae.kernel_sizes) and whose 3x3 decoder draws smooth edges across patches.
LOCAL_ENCODER = {"model.widths": (128,), "model.space_to_depth": 8, "model.kernel_size": 1,
                 "model.decoder_kernel_size": 3, "model.mid_blocks": 2}

FULL = Recipe(
    resolution=64,
    tokenizer_arg=None,
    tokenizer_overrides={
        "*": {"quantizer.codebook_size": 256, "data.train_size": 8000, "model.widths": (32, 64),
              "train.num_steps": 400, "train.lr": 2e-3, "train.eval_every": 400,
              "train.checkpoint_every": 200},
        # rgb and semseg: LOCAL_ENCODER (below). With the shipped 3x3 encoder the codes depend
        # on the neighbourhood and the 4M never learned them beyond a per-position prior
        # (held-out rgb token accuracy 0.10 from the whole image; a 1-NN on the raw patch gets
        # 0.27 of these codes and 0.77 of the local ones; the 4M now 0.46, see the demo
        # mixture). Reconstruction 24.9 dB PSNR (24.5 with the shipped network), in ~1 min.
        "rgb": {**LOCAL_ENCODER, "train.num_steps": 600},
        "features": {"model.widths": (64,)},
        # Semseg: reconstruction mIoU 0.830 either way, but the local codes are far easier
        # targets (code perplexity 12.6 against 177; the 4M's training token accuracy 0.33 ->
        # 0.77): rgb -> semseg mIoU 0.620 -> 0.635, all others -> semseg 0.650 -> 0.672.
        "semseg": LOCAL_ENCODER,
        "poses": {"train.num_steps": 1500, "train.eval_every": 1500},
    },
    tokenizer_max_minutes=4.0,
    train_scenes=8000,
    model_config="demo.py",
    generation_scenes=4,
    eval_scenes=256,
    eval_batch=64,
)

TINY = Recipe(
    resolution=32,
    tokenizer_arg="tiny",
    tokenizer_overrides={},
    tokenizer_max_minutes=0.0,
    train_scenes=48,
    model_config="demo.py:test",
    generation_scenes=2,
    eval_scenes=4,
    eval_batch=4,
    eval_modalities=("rgb", "depth", "semseg", "caption"),
)

RECIPES = {"full": FULL, "tiny": TINY}

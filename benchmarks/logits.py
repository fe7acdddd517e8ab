"""Loss over each row's own vocabulary: "chunked" vs the full-vocabulary product ("full").

The 4M-tiny benchmark shapes: batch 8, 128 input + 128 target slots, modalities rgb (16384),
depth (8192), semseg (4096), caption (30000). Times the gradient step of the whole model and of
the loss head alone (decoder output -> loss), medians over interleaved repeats, and prints JSON.

    python benchmarks/logits.py [--repeats 5] [--dtype float32] [--chunks 64,128,256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m4.modalities import ModalitySpec
from m4.model import FourM, preset, random_batch
from m4.model import logits as logits_lib

SPECS = (
    ModalitySpec("rgb", "image", vocab_size=16384, grid=(14, 14)),
    ModalitySpec("depth", "image", vocab_size=8192, grid=(14, 14)),
    ModalitySpec("semseg", "image", vocab_size=4096, grid=(14, 14)),
    ModalitySpec("caption", "sequence", vocab_size=30000, length=256, pos_table=512),
)


def model_step(config, batch):
    model = FourM(config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, batch):
        return jax.value_and_grad(lambda s: nnx.merge(graphdef, s).loss(batch)[0])(state)

    return lambda: jax.block_until_ready(step(state, batch))


def head_step(config, batch, h, table):
    vocab = config.vocab
    offsets, sizes = tuple(map(int, vocab.offsets)), tuple(map(int, vocab.sizes))
    flat = lambda k: batch[k].reshape(-1)
    args = (flat("dec_targets"), flat("dec_mod"), flat("dec_valid"))

    def loss(h, table):
        if config.logits == "full":
            nll, _ = logits_lib.full_cross_entropy(h, *args, table, offsets, sizes, jnp.float32)
        else:
            nll, _ = logits_lib.chunked_cross_entropy(h, *args, table, offsets, sizes,
                                                      tuple(range(len(SPECS))),
                                                      config.logits_chunk, jnp.float32)
        return nll.sum()

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return lambda: jax.block_until_ready(step(h, table))


def timed(fn, repeats):
    fn()                                     # compile
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--chunks", default="64,128,256")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    base = preset("tiny", SPECS, dtype=args.dtype)
    batch = {k: jnp.asarray(v) for k, v in random_batch(base, args.batch, 128, 128).items()}
    variants = {"full": base.replace(logits="full")}
    for c in args.chunks.split(","):
        variants[f"chunked_{c}"] = base.replace(logits="chunked", logits_chunk=int(c))
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.standard_normal((args.batch * 128, base.dim)), jnp.float32)
    table = jnp.asarray(0.02 * rng.standard_normal((base.vocab.size, base.dim)), jnp.float32)
    steps = {}
    for name, cfg in variants.items():
        steps[f"model/{name}"] = model_step(cfg, batch)
        steps[f"head/{name}"] = head_step(cfg, batch, h, table)
    times = {k: [] for k in steps}
    for _ in range(args.rounds):                 # interleaved, so load changes hit all alike
        for k, fn in steps.items():
            times[k] += timed(fn, args.repeats)
    result = {k: round(statistics.median(v), 4) for k, v in times.items()}
    result["config"] = dict(batch=args.batch, slots="128/128", dtype=args.dtype,
                            vocab={s.name: s.vocab_size for s in SPECS},
                            devices=str(jax.devices()[0]))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Train-step speed and memory of the 4M model on CPU, printed as JSON.

    python benchmarks/train_step.py                       # batch 8 and 32, fp32 and bf16 compute
    python benchmarks/train_step.py --batch 8 --dtype float32 --steps 10

The setup of issue 4: `tiny` (dim 384, 6+6 blocks), modalities rgb / depth / semseg tokens
(vocab 16384 / 8192 / 4096, 14x14 grids) + caption (vocab 30000, up to 256 tokens), budgets
128 input / 128 target tokens, the all2all Dirichlet(1) masking, AdamW. Every configuration runs
in its own subprocess through the `m4` entry point's runtime settings (allocator, XLA flags), so
peak RSS is that configuration's alone. Reported per configuration: compile time, median step
time (wall and CPU), tokens/s, peak RSS, the step's matmul FLOPs counted by hand (`model_flops`:
XLA's cost analysis counts a scanned/looped body once), and the achieved FLOP/s as a fraction of
this machine's matmul peak, measured in the same run (fp32 and bf16-operand dots).
Layers are unrolled by default (scan_layers=False, as the demo); `--model scan_layers=true` etc.
override FourMConfig fields.
Reference figures for the same work on this kind of machine (REFERENCE: PyTorch ml-4m, fp32):
1.27 s/step at batch 8, 4.36 s at batch 32, 2.3 / 4.6 GB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

import numpy as np

# CPU features that decide whether bf16 operands can be faster than fp32 (see m4.precision).
from m4.precision import cpu_features

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = {8: {"step_s": 1.27, "peak_rss_gb": 2.3}, 32: {"step_s": 4.36, "peak_rss_gb": 4.6}}


def matmul_peak(dtype: str, n: int = 1024, reps: int = 20) -> float:
    """Achieved FLOP/s of a large canonical-layout dot (f32 accumulation)."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), dtype)
    b = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: jax.lax.dot_general(x, y, (((1,), (0,)), ((), ())),
                                                 preferred_element_type=jnp.float32))
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def model_flops(cfg, batches: list[dict]) -> float:
    """Matmul FLOPs of one training step, counted by hand: 3x the forward pass (forward, input
    gradient, weight gradient), the convention of MFU figures. XLA's cost analysis cannot be used:
    it counts a scanned or looped body once (the layer scan, the chunked loss's loops).

    Forward: every linear of every block over all fixed-length positions (padding included: the
    work the step does), the attention products, and the loss over each valid target row's own
    vocabulary (the useful work; the chunked loss's backward recompute is not counted)."""
    d, f = cfg.dim, cfg.mlp_hidden
    b, n_in = batches[0]["enc_ids"].shape
    n_tgt = batches[0]["dec_targets"].shape[1]
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * f
    enc = 2 * b * n_in * (4 * d * d + mlp) + 4 * b * n_in * n_in * d
    dec = (2 * b * n_tgt * (4 * d * d + 2 * d * d + mlp)     # self-attn, cross q/proj, mlp
           + 2 * b * n_in * 2 * d * d                         # cross-attention keys/values
           + 4 * b * n_tgt * n_tgt * d + 4 * b * n_tgt * n_in * d)
    vocab = np.array([s.vocab_size for s in cfg.modalities], np.float64)
    loss = np.mean([2 * d * vocab[bt["dec_mod"][bt["dec_valid"]]].sum() for bt in batches])
    return 3.0 * (cfg.encoder_depth * enc + cfg.decoder_depth * dec + loss)


def run_one(batch: int, dtype: str, steps: int, model_overrides: dict | None = None,
            breakdown: bool = False) -> dict:
    import jax
    from flax import nnx

    from m4 import parallel
    from m4.data.masking import Masker, Mixture, collate
    from m4.data.span_masking import SentinelSpec
    from m4.modalities import ModalitySpec
    from m4.model.configs import preset
    from m4.model.fourm import FourM
    from m4.train import step as step_lib
    from m4.train.optimizer import OptimizerConfig, make_optimizer

    specs = (ModalitySpec("rgb", "image", vocab_size=16384, grid=(14, 14)),
             ModalitySpec("depth", "image", vocab_size=8192, grid=(14, 14)),
             ModalitySpec("semseg", "image", vocab_size=4096, grid=(14, 14)),
             ModalitySpec("caption", "sequence", vocab_size=30000, length=256))
    sentinels = SentinelSpec(pad_id=0, eos_id=3, first_sentinel_id=5, num_sentinels=199)
    mixture = Mixture.from_config({"name": "all2all", "modalities": {
        s.name: {"input_alphas": [1.0], "target_alphas": [1.0]} for s in specs}})
    masker = Masker(specs, mixture, input_tokens=128, target_tokens=128, sentinels=sentinels)
    rng = np.random.default_rng(0)

    def sample():
        return {"rgb": rng.integers(0, 16384, 196), "depth": rng.integers(0, 8192, 196),
                "semseg": rng.integers(0, 4096, 196),
                "caption": rng.integers(300, 30000, int(rng.integers(10, 60)))}

    batches = [collate([masker(sample(), rng) for _ in range(batch)]) for _ in range(4)]
    # Unrolled layers by default: faster than the layer scan at this size (as experiments/demo.py).
    cfg = preset("tiny", specs, dtype=dtype, **{"scan_layers": False, **(model_overrides or {})})
    tx = make_optimizer(OptimizerConfig(base_lr=1e-4, global_batch=batch, warmup_steps=10,
                                        total_steps=1000))
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    model, _, shardings = step_lib.abstract_train_state(
        lambda: FourM(cfg, rngs=nnx.Rngs(0)), tx, mesh)
    state = step_lib.init_train_state(model, tx, shardings, mesh)
    train_step = step_lib.make_train_step(model, tx, shardings, mesh)
    device_batches = [step_lib.global_batch(b, mesh) for b in batches]

    t = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = train_step.jitted.lower(state, device_batches[0]).compile()
    compile_s = time.perf_counter() - t
    step_lib.release_freed_memory()     # as train_step's first call does
    flops = model_flops(cfg, batches)

    state, m = train_step(state, device_batches[0])   # warm-up (allocator, caches)
    jax.block_until_ready(m)
    times, cpu_times = [], []
    for i in range(steps):
        t, c = time.perf_counter(), time.process_time()
        state, m = train_step(state, device_batches[i % len(device_batches)])
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
        # CPU seconds of all threads: less sensitive than wall time to other jobs' load.
        cpu_times.append(time.process_time() - c)
    step_s = float(np.median(times))
    parts = phase_times(model, state, device_batches, mesh, steps) if breakdown else None
    peak = matmul_peak("float32" if dtype == "float32" else "bfloat16")
    ref = REFERENCE.get(batch)
    return {
        "batch": batch, "dtype": dtype, "steps": steps, "compile_s": round(compile_s, 2),
        "step_s_median": round(step_s, 4), "step_s_min": round(min(times), 4),
        "step_cpu_s_median": round(float(np.median(cpu_times)), 4),
        "tokens_per_s": round(batch * 256 / step_s, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3),
        "step_gflop": round(flops / 1e9, 2),   # model FLOPs, counted by hand (model_flops)
        "achieved_gflops": round(flops / step_s / 1e9, 1),
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "fraction_of_peak": round(flops / step_s / peak, 3) if peak else None,
        "speedup_vs_reference_fp32": round(ref["step_s"] / step_s, 2) if ref else None,
        "loss": float(m["loss"]),
        **({"phases_s_median": parts} if parts else {}),
    }


def phase_times(model, state, batches: list, mesh, steps: int) -> dict:
    """Median seconds of the step's phases, each compiled on its own: the forward loss, the
    forward + backward pass (gradients, no update); the optimizer's share is the rest of a step.
    Runs after the step is timed, but its executables raise the reported peak RSS (tiny, batch 8:
    2.53 vs 2.29 GB); measure memory without --breakdown."""
    import jax
    from flax import nnx

    def loss(params, batch):
        return nnx.merge(model.graphdef, params, state["rest"]).loss(batch, "mod")[0]

    def grads(params, batch):
        g = jax.grad(loss)(params, batch)
        return jax.tree.reduce(lambda a, x: a + (x.astype(np.float32) ** 2).sum(), g, 0.0)

    out = {}
    with jax.set_mesh(mesh):
        for name, fn in (("forward", loss), ("forward_backward", grads)):
            f = jax.jit(fn)
            f(state["params"], batches[0]).block_until_ready()
            times = []
            for i in range(steps):
                t = time.perf_counter()
                f(state["params"], batches[i % len(batches)]).block_until_ready()
                times.append(time.perf_counter() - t)
            out[name] = round(float(np.median(times)), 4)
    return out


def parse_overrides(items: list[str]) -> dict:
    """["scan_layers=false", "logits_chunk=256"] -> {"scan_layers": False, "logits_chunk": 256}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--model: expected FIELD=VALUE, got {item!r}")
        low = value.lower()
        out[key] = (low == "true" if low in ("true", "false")
                    else int(value) if value.lstrip("-").isdigit() else value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--model", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="FourMConfig overrides, e.g. scan_layers=true logits=full")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the forward loss and forward + backward alone")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print(json.dumps(run_one(args.batch[0], args.dtype[0], args.steps,
                                 parse_overrides(args.model), args.breakdown)))
        return
    from m4.cli import RUNTIME_ENV

    results = []
    for batch in args.batch:
        for dtype in args.dtype:
            env = dict(os.environ, **RUNTIME_ENV)   # user values already merged in RUNTIME_ENV
            out = subprocess.run([sys.executable, __file__, "--single", "--batch", str(batch),
                                  "--dtype", dtype, "--steps", str(args.steps),
                                  *(["--breakdown"] if args.breakdown else []),
                                  "--model", *args.model], env=env,
                                 capture_output=True, text=True, cwd=REPO)
            if out.returncode:
                results.append({"batch": batch, "dtype": dtype, "error": out.stderr[-2000:]})
            else:
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps({"benchmark": "train_step", "machine": platform.machine(),
                      "cpus": os.cpu_count(), "cpu": cpu_features(), "load_avg_1m": os.getloadavg()[0],
                      "runtime_env": RUNTIME_ENV,
                      "reference_pytorch_fp32": REFERENCE, "results": results}, indent=1))


if __name__ == "__main__":
    main()

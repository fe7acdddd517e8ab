"""Sampler speed: MaskGIT rgb -> depth on the `tiny` preset, printed as JSON.

    python benchmarks/generate.py                       # batch 1 and 8, both loop forms
    python benchmarks/generate.py --batch 1 --loop unrolled --repeats 5 --out runs/bench_gen.json

Setup of issue 6: a randomly initialised `tiny` FourM (dim 384, 6+6 blocks) with rgb tokens
14x14 (vocabulary 16384) as the condition and depth tokens 14x14 (vocabulary 8192) as the target,
MaskGIT 8 steps with the cosine schedule, temperature 1, no guidance, fp32, XLA on 2 CPU threads.
The reference PyTorch sampler took 0.70 s (batch 1) and 5.3 s (batch 8) on this kind of machine;
the targets are 3x faster at batch 1 and 1.5x at batch 8, excluding the first call's compilation
(reported separately).

Every configuration (loop form x batch) runs in its own subprocess with the `m4` entry point's
runtime settings (m4.cli.RUNTIME_ENV: allocator, XLA flags), restricted to `--threads` cores
(sched_setaffinity, as `taskset -c 0,1`) before JAX starts; `--rounds N` repeats the whole set
N times, alternating configurations, for A/B comparisons on a shared machine.

Per configuration: wall time of each call, process CPU time (on a shared machine cpu / threads
estimates the wall time with the cores to itself), the load average, the call's FLOPs counted by
hand (`maskgit_flops`), the FLOP rate the target needs, and this process's measured fp32 matmul
rate on the same cores, which bounds what any implementation of the same arithmetic can reach.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# One measurement of the matmul peak for every benchmark (same dot, same layout).
from benchmarks.train_step import matmul_peak  # noqa: E402

REFERENCE_SECONDS = {1: 0.70, 8: 5.3}
REQUIRED_SPEEDUP = {1: 3.0, 8: 1.5}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 and 8)")
    p.add_argument("--loop", choices=("unrolled", "fori", "auto"), action="append",
                   help="loop forms to measure (default unrolled and fori)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per setting (default 5)")
    p.add_argument("--rounds", type=int, default=1,
                   help="times to run the whole set of configurations, alternating (default 1)")
    p.add_argument("--threads", type=int, default=2, help="CPU cores to use (default 2)")
    p.add_argument("--size", default="tiny", help="model preset (default tiny)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def maskgit_flops(config, cond_slots: int, length: int, vocab: int, counts) -> float:
    """FLOPs of one example's MaskGIT run, counted by hand: every step runs the encoder on the
    condition plus the target's known slots and the decoder on its unknown slots (matmuls of the
    blocks, attention products, context projection, the target's logits)."""
    d, h = config.dim, config.mlp_hidden
    mlp = (3 if config.mlp == "swiglu" else 2) * d * h
    total, known = 0.0, length - sum(counts)
    for count in counts:
        n_enc, n_dec = cond_slots + known, length - known
        enc = n_enc * (4 * d * d + mlp) + 2 * n_enc * n_enc * d
        dec = (n_dec * (6 * d * d + mlp) + n_enc * 2 * d * d                # blocks, cross k/v
               + 2 * n_dec * n_dec * d + 2 * n_dec * n_enc * d)             # attention
        total += (config.encoder_depth * enc + config.decoder_depth * dec
                  + n_enc * d * d + n_dec * d * vocab)                       # context, logits
        known += count
    return 2.0 * total


def run_one(loop: str, batch: int, repeats: int, threads: int, size: str) -> dict:
    """One configuration, in this process (the parent starts one process per configuration)."""
    import jax
    import numpy as np
    from flax import nnx

    from m4.generate import schedules
    from m4.generate.sampler import Sampler, example_keys
    from m4.generate.state import known_tokens
    from m4.modalities import ModalitySpec
    from m4.model import FourM, preset

    specs = (ModalitySpec("rgb", "image", vocab_size=16384, grid=(14, 14)),
             ModalitySpec("depth", "image", vocab_size=8192, grid=(14, 14)))
    config = preset(size, specs)
    model = nnx.jit(lambda: FourM(config, rngs=nnx.Rngs(0)))()
    schedule = schedules.build_schedule(
        ["rgb"], [schedules.TargetSpec("depth", scheme="maskgit", steps=8,
                                       token_schedule="cosine", temperature=1.0,
                                       temperature_schedule="constant", cfg_scale=1.0)], specs)
    counts = [int(s.num_tokens) for s in schedule]
    rng = np.random.default_rng(0)
    sampler = Sampler(model, loop=loop)
    state = {"rgb": known_tokens(specs[0], rng.integers(0, 16384, (batch, 196)))}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    out, _ = sampler.generate(state, schedule, example_keys(0, batch))
    first = time.perf_counter() - start
    times, cpu = [], []
    for r in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out, _ = sampler.generate(state, schedule, example_keys(r + 1, batch))
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    assert out["depth"].known.all(), "not every position was decoded"
    median, best, cpu_median = statistics.median(times), min(times), statistics.median(cpu)
    flops = batch * maskgit_flops(config, 196, 196, specs[1].vocab_size, counts)
    row = {"loop": loop, "batch": batch, "first_call_s": round(first, 3),
           "compile_s": round(first - median, 3), "call_s": [round(t, 4) for t in times],
           "median_s": round(median, 4), "best_s": round(best, 4),
           # CPU seconds of this process per call: on a shared machine, cpu / threads
           # estimates the wall time the call would take with its cores to itself.
           "cpu_s": round(cpu_median, 3),
           "estimated_unshared_s": round(cpu_median / threads, 3),
           "traces": dict(sampler.traces), "gflop": round(flops / 1e9, 2),
           "gflops_median": round(flops / median / 1e9, 1),
           "gflops_per_cpu_s": round(flops / cpu_median / 1e9, 1),
           "matmul_peak_gflops": round(matmul_peak("float32") / 1e9, 1),
           "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    ref = REFERENCE_SECONDS.get(batch)
    if ref and size == "tiny":
        target = ref / REQUIRED_SPEEDUP[batch]
        unshared = cpu_median / threads
        row.update(reference_s=ref, target_s=round(target, 3),
                   target_gflops=round(flops / target / 1e9, 1),
                   speedup_median=round(ref / median, 2), speedup_best=round(ref / best, 2),
                   speedup_estimated_unshared=round(ref / unshared, 2),
                   target_speedup=REQUIRED_SPEEDUP[batch],
                   meets_target=bool(median <= target),
                   meets_target_unshared_estimate=bool(unshared <= target))
    return row


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads and hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))[:args.threads]
        os.sched_setaffinity(0, cores)       # inherited by the configurations' processes
    if args.single:
        print(json.dumps(run_one(args.loop[0], args.batch[0], args.repeats, args.threads,
                                 args.size)))
        return {}
    from m4.cli import RUNTIME_ENV

    env = dict(os.environ, **RUNTIME_ENV)   # user values already merged in RUNTIME_ENV
    results = []
    for round_index in range(args.rounds):
        for loop in args.loop or ["unrolled", "fori"]:
            for batch in args.batch or [1, 8]:
                cmd = [sys.executable, __file__, "--single", "--loop", loop, "--batch", str(batch),
                       "--repeats", str(args.repeats), "--threads", str(args.threads),
                       "--size", args.size]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
                if done.returncode:
                    row = {"loop": loop, "batch": batch, "error": done.stderr[-2000:]}
                else:
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                row["round"] = round_index
                results.append(row)
                print(json.dumps(row), file=sys.stderr)
    report = {
        "benchmark": "generate", "size": args.size, "steps": 8, "schedule": "cosine",
        "threads": args.threads, "runtime_env": RUNTIME_ENV,
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "results": results,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()

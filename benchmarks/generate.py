"""Sampler speed: MaskGIT rgb -> depth on the `tiny` preset, printed as JSON.

    python benchmarks/generate.py                       # batch 1 and 8, both loop forms
    python benchmarks/generate.py --batch 1 --loop unrolled --repeats 5 --out runs/bench_gen.json

Setup of issue 6: a randomly initialised `tiny` FourM (dim 384, 6+6 blocks) with rgb tokens
14x14 (vocabulary 16384) as the condition and depth tokens 14x14 (vocabulary 8192) as the target,
MaskGIT 8 steps with the cosine schedule, temperature 1, no guidance, fp32, XLA on 2 CPU threads.
The reference PyTorch sampler took 0.70 s (batch 1) and 5.3 s (batch 8) on this kind of machine;
the targets are 3x faster at batch 1 and 1.5x at batch 8, excluding the first call's compilation
(reported separately). The JSON records the load average, since the machine may be shared, and
each call's process CPU time: cpu / threads estimates the call's wall time on unshared cores.

Thread count: XLA's CPU client uses every core it sees; `--threads N` (default 2) restricts the
process to N cores with sched_setaffinity before JAX starts.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REFERENCE_SECONDS = {1: 0.70, 8: 5.3}
REQUIRED_SPEEDUP = {1: 3.0, 8: 1.5}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 and 8)")
    p.add_argument("--loop", choices=("unrolled", "fori"), action="append",
                   help="loop forms to measure (default both)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per setting (default 3)")
    p.add_argument("--threads", type=int, default=2, help="CPU cores to use (default 2)")
    p.add_argument("--size", default="tiny", help="model preset (default tiny)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads and hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))[:args.threads]
        os.sched_setaffinity(0, cores)

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
    config = preset(args.size, specs)
    start = time.perf_counter()
    model = nnx.jit(lambda: FourM(config, rngs=nnx.Rngs(0)))()
    init_s = time.perf_counter() - start
    schedule = schedules.build_schedule(
        ["rgb"], [schedules.TargetSpec("depth", scheme="maskgit", steps=8,
                                       token_schedule="cosine", temperature=1.0,
                                       temperature_schedule="constant", cfg_scale=1.0)], specs)
    rng = np.random.default_rng(0)
    results = []
    for loop in args.loop or ["unrolled", "fori"]:
        for batch in args.batch or [1, 8]:
            sampler = Sampler(model, loop=loop)
            state = {"rgb": known_tokens(specs[0], rng.integers(0, 16384, (batch, 196)))}
            keys = example_keys(0, batch)
            start = time.perf_counter()
            out, _ = sampler.generate(state, schedule, keys)
            first = time.perf_counter() - start
            times, cpu = [], []
            for r in range(args.repeats):
                start, start_cpu = time.perf_counter(), time.process_time()
                out, _ = sampler.generate(state, schedule, example_keys(r + 1, batch))
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
            assert out["depth"].known.all(), "not every position was decoded"
            best, median = min(times), statistics.median(times)
            ref = REFERENCE_SECONDS.get(batch)
            row = {"loop": loop, "batch": batch, "first_call_s": round(first, 3),
                   "compile_s": round(first - median, 3), "call_s": [round(t, 4) for t in times],
                   "median_s": round(median, 4), "best_s": round(best, 4),
                   # CPU seconds of this process per call: on a shared machine, cpu / threads
                   # estimates the wall time the call would take with its cores to itself.
                   "cpu_s": round(statistics.median(cpu), 3),
                   "estimated_unshared_s": round(statistics.median(cpu) / args.threads, 3),
                   "traces": dict(sampler.traces)}
            if ref:
                unshared = statistics.median(cpu) / args.threads
                row.update(reference_s=ref, speedup_median=round(ref / median, 2),
                           speedup_best=round(ref / best, 2),
                           speedup_estimated_unshared=round(ref / unshared, 2),
                           target_speedup=REQUIRED_SPEEDUP[batch],
                           meets_target=bool(ref / median >= REQUIRED_SPEEDUP[batch]))
            results.append(row)
            print(json.dumps(row), file=sys.stderr)
    report = {
        "benchmark": "generate", "size": args.size, "steps": 8, "schedule": "cosine",
        "tokens": [int(s.num_tokens) for s in schedule], "threads": args.threads,
        "jax": jax.__version__, "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
        "model_init_s": round(init_s, 2), "results": results,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()

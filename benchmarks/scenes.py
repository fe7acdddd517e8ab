"""Built-in scenes throughput: scenes per second on one core, printed as JSON.

    python benchmarks/scenes.py                          # 64x64 and 128x128, shadows on and off
    python benchmarks/scenes.py --resolutions 32,64,256 --n 300 --out runs/bench_scenes.json

"One core": the process pins itself to a single CPU and limits every thread pool to one thread
before numpy is imported. Each figure is the median of `--repeats` runs of `--n` consecutive
scenes (indices 0..n-1 of seed 0, all modalities, exactly what `scenes.render` returns), after a
warm-up that fills the per-resolution ray cache. The peak RSS is measured in the same run, and
the system load average is recorded: on a busy machine the wall-clock figure drops.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m4.data import scenes  # noqa: E402


def pin_to_one_core() -> int | None:
    """Run on the last CPU this process may use; None where affinity is unsupported."""
    try:
        cpu = max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return cpu
    except (AttributeError, OSError):
        return None


def measure(config: scenes.SceneConfig, n: int, repeats: int) -> dict:
    for i in range(min(n, 20)):  # warm-up: ray cache, imports, allocator
        scenes.render(0, i, config)
    rates, cpu_rates = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        for i in range(n):
            scenes.render(0, i, config)
        rates.append(n / (time.perf_counter() - start))
        cpu_rates.append(n / (time.process_time() - cpu_start))
    rate = statistics.median(rates)
    return {"resolution": config.resolution, "shadows": config.shadows,
            "feature_patch": config.feature_patch, "n": n, "repeats": repeats,
            "scenes_per_s": round(rate, 1), "ms_per_scene": round(1000 / rate, 3),
            # Per second of this process's own CPU time: less sensitive to other jobs sharing
            # the core (they show up in the wall-clock figure, not here).
            "scenes_per_cpu_s": round(statistics.median(cpu_rates), 1),
            "runs_scenes_per_s": [round(r, 1) for r in rates]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", default="64,128", help="comma-separated (default 64,128)")
    parser.add_argument("--n", type=int, default=400, help="scenes per run (default 400)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (default 3)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    cpu = pin_to_one_core()
    results = []
    for resolution in (int(r) for r in args.resolutions.split(",")):
        for shadows in (True, False):
            config = scenes.SceneConfig(resolution=resolution, shadows=shadows)
            n = max(20, args.n * 64 * 64 // (resolution * resolution))  # similar time per setting
            results.append(measure(config, n, args.repeats))
    report = {
        "benchmark": "scenes",
        "what": "scenes.render, all modalities, one process on one core",
        "cpu": platform.processor() or platform.machine(),
        "pinned_cpu": cpu,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "results": results,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()

"""Tokenizer quality benchmark: train each shipped tokenizer config, evaluate on held-out scenes.

    python benchmarks/tokenizers.py --workdir runs/bench_tokenizers            # all seven
    python benchmarks/tokenizers.py --workdir runs/bench_tokenizers --only rgb depth
    python benchmarks/tokenizers.py --workdir runs/bench_tokenizers --eval-only

Image-like tokenizers train for at most `--minutes` (default 15) of wall time each (their
schedule follows the clock, see m4/tokenizers/train.py); poses and captions train with their
config's schedule. Trainings run one after the other, never in parallel. Every result is
compared with the quality bar of issue 3; the JSON report (stdout and <workdir>/report.json)
says which pass. Measured numbers depend on the machine and on what else runs on it: the
report records the CPU count and the load average at the start and end of each training.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
MODALITIES = ("rgb", "depth", "normals", "semseg", "features", "poses", "caption")
IMAGE_LIKE = ("rgb", "depth", "normals", "semseg", "features")
# modality: (metric, ">=" or "<=", bar)
TARGETS = {
    "rgb": ("psnr", ">=", 25.0),
    "depth": ("delta1", ">=", 0.95),
    "normals": ("angular_error_deg", "<=", 10.0),
    "semseg": ("miou", ">=", 0.85),
    "features": ("cosine", ">=", 0.9),
    "poses": ("joint_error_px", "<=", 1.5),
    "caption": ("roundtrip_exact", ">=", 1.0),
}
MIN_CODEBOOK_USAGE = 0.8


def _passes(value: float, op: str, bar: float) -> bool:
    return value >= bar if op == ">=" else value <= bar


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--only", nargs="*", default=list(MODALITIES), choices=MODALITIES)
    parser.add_argument("--minutes", type=float, default=15.0,
                        help="wall-time budget per image-like tokenizer")
    parser.add_argument("--n", type=int, default=1000, help="held-out scenes to evaluate")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate the artifacts already in --workdir")
    parser.add_argument("--config-arg", default=None,
                        help="argument passed to every get_config (e.g. 'tiny' for a smoke test)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from m4.config import load_config
    from m4.tokenizers import load
    from m4.tokenizers.evaluate import evaluate_tokenizer
    from m4.tokenizers.train import train

    workdir = pathlib.Path(args.workdir)
    cache = workdir / "scene_cache"   # one render of the training scenes for all modalities
    report_path = workdir / "report.json"
    # Results accumulate over runs, so a benchmark that was interrupted can be finished with
    # --only <the rest> (a tokenizer's training resumes from its last checkpoint).
    previous = json.loads(report_path.read_text()) if report_path.exists() else {}
    report = {"cpus": os.cpu_count(), "minutes_per_image_tokenizer": args.minutes,
              "n_eval": args.n, "results": previous.get("results", {})}
    for modality in args.only:
        run_dir = workdir / modality
        spec = str(REPO / "tokenizers" / f"{modality}.py")
        if args.config_arg:
            spec += ":" + args.config_arg
        entry: dict = {}
        if not args.eval_only:
            overrides = [f"data.cache_dir={cache}"]
            if modality in IMAGE_LIKE:
                overrides += [f"train.max_minutes={args.minutes}"]
            config = load_config(spec, overrides)
            entry["load_before"] = os.getloadavg()[0]
            t0 = time.perf_counter()
            train(config, run_dir)
            entry["train_minutes"] = round((time.perf_counter() - t0) / 60.0, 2)
            entry["load_after"] = os.getloadavg()[0]
        summary_file = run_dir / "train_summary.json"
        if summary_file.exists():
            summary = json.loads(summary_file.read_text())
            entry["train_steps"] = summary.get("steps")
            entry["loop_minutes"] = summary.get("elapsed_min")
        tokenizer = load(run_dir)
        metrics, picture = evaluate_tokenizer(tokenizer, args.n, cache_dir=cache)
        picture.save(run_dir / f"eval_{args.n}.png")
        metric, op, bar = TARGETS[modality]
        ok = _passes(metrics[metric], op, bar)
        if modality in IMAGE_LIKE:
            ok = ok and metrics["codebook_usage"] >= MIN_CODEBOOK_USAGE
        entry.update(metric=metric, value=metrics[metric], target=f"{op} {bar}", passed=ok,
                     metrics=metrics)
        report["results"][modality] = entry
        print(f"{modality}: {metric} = {metrics[metric]:.4g} (target {op} {bar}), "
              f"codebook_usage = {metrics.get('codebook_usage', float('nan')):.3f} -> "
              f"{'PASS' if ok else 'FAIL'}", flush=True)
        report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({m: {k: e[k] for k in ("metric", "value", "target", "passed")}
                      for m, e in report["results"].items()}, indent=2))
    return 0 if all(e["passed"] for e in report["results"].values()) else 1


if __name__ == "__main__":
    from m4.cli import RUNTIME_ENV  # noqa: E402  (fast CPU allocator settings, set at start-up)

    missing = {k: v for k, v in RUNTIME_ENV.items() if k not in os.environ}
    if missing:
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, **missing))
    sys.exit(main())

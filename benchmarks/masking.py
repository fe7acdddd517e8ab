"""Host-side masking throughput (samples/s, one process, one thread), printed as JSON.

    python benchmarks/masking.py                 # demo mixture + the 4M-7 reference setting
    python benchmarks/masking.py --samples 5000 --grid 16 --out runs/bench_masking.json

Samples are synthetic token arrays with the shapes of the modalities (the masker's cost does not
depend on the token values): the built-in scene modalities for the demo mixture (image grids of
`--grid`^2 tokens, a caption of up to `--caption-length` tokens with 10-40 words, 16 pose tokens),
and the reference 4M-7 modalities (14x14 grids, RGB pixels, captions/det of up to 256) at 128/128.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m4.config import load_config  # noqa: E402
from m4.data.masking import Masker  # noqa: E402
from m4.data.span_masking import SentinelSpec  # noqa: E402
from m4.modalities import ModalitySpec  # noqa: E402

MIXTURES = str(REPO / "experiments" / "mixtures.py")


def demo_specs(grid: int, caption_length: int) -> list[ModalitySpec]:
    images = [ModalitySpec(name=n, kind="image", vocab_size=1024, grid=(grid, grid))
              for n in ("rgb", "depth", "normals", "semseg", "features")]
    return images + [
        ModalitySpec(name="caption", kind="sequence", vocab_size=8000, length=caption_length),
        ModalitySpec(name="poses", kind="vectors", vocab_size=512, length=16, positions="learned"),
    ]


def reference_4m7_specs() -> list[ModalitySpec]:
    tok = {"tok_rgb@224": 16384, "tok_depth@224": 8192, "tok_semseg@224": 4096,
           "tok_normal@224": 8192, "tok_clip@224": 8192}
    pixels = ModalitySpec(name="rgb@224", kind="pixels", grid=(14, 14), patch_dim=768, target=False)
    return ([pixels]
            + [ModalitySpec(name=n, kind="image", vocab_size=v, grid=(14, 14))
               for n, v in tok.items()]
            + [ModalitySpec(name=n, kind="sequence", vocab_size=30000, length=256, pos_table=512)
               for n in ("caption", "det")])


def synthetic_samples(specs, count: int, rng: np.random.Generator,
                      text_words=(10, 40)) -> list[dict]:
    samples = []
    for _ in range(count):
        sample = {}
        for s in specs:
            if s.kind == "sequence":
                sample[s.name] = rng.integers(300, s.vocab_size, int(rng.integers(*text_words)))
            elif s.kind == "pixels":
                sample[s.name] = rng.standard_normal((s.length, s.patch_dim)).astype(np.float32)
            else:
                sample[s.name] = rng.integers(0, s.vocab_size, s.length)
        samples.append(sample)
    return samples


def measure(masker: Masker, samples: list[dict], batch_size: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    for sample in samples[:50]:  # warm-up
        masker(sample, rng)
    start = time.perf_counter()
    for sample in samples:
        masker(sample, rng)
    per_sample = time.perf_counter() - start
    batches = [samples[i:i + batch_size]
               for i in range(0, len(samples) - batch_size + 1, batch_size)]
    start = time.perf_counter()
    for batch in batches:
        masker.mask_batch(batch, rng)
    batched = time.perf_counter() - start
    return {
        "samples_per_s": round(len(samples) / per_sample, 1),
        "us_per_sample": round(1e6 * per_sample / len(samples), 1),
        "batched_samples_per_s": round(batch_size * len(batches) / batched, 1),
        "batch_size": batch_size,
        "input_slots": masker.input_slots,
        "target_slots": masker.target_slots,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--grid", type=int, default=8, help="demo image grid side (default 8)")
    parser.add_argument("--caption-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, help="also write the JSON here")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    results = {"machine": {"python": platform.python_version(), "numpy": np.__version__,
                           "processor": platform.processor() or platform.machine()}}
    settings = {
        "demo": (demo_specs(args.grid, args.caption_length), load_config(MIXTURES + ":demo")),
        "4m7": (reference_4m7_specs(), load_config(MIXTURES + ":4m7")),
    }
    for name, (specs, config) in settings.items():
        masker = Masker.from_config(specs, config, sentinels=SentinelSpec.reference())
        samples = synthetic_samples(specs, args.samples, rng)
        results[name] = measure(masker, samples, args.batch_size, args.seed)
    results["demo"]["grid"] = args.grid
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()

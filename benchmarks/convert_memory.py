"""Peak host memory of converting a reference checkpoint, on a synthetic `large` one.

Writes a 4M-7-style checkpoint of the reference `large` size (dim 1024, 24 + 24 blocks, the 8
4M-7 modalities, untied logits, zero norm-bias buffers: ~4.1 GB fp32) in the reference layout
with random weights, then converts it in a fresh process and reports that process's peak RSS
(ru_maxrss) relative to the file size: once loading onto the device only, once also writing the
orbax checkpoint. JSON on stdout.

    python benchmarks/convert_memory.py [--size large] [--workdir /tmp/m4_convert_memory] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

DOMAINS = ["rgb@224", "caption", "det", "tok_rgb@224", "tok_depth@224", "tok_normal@224",
           "tok_semseg@224", "tok_clip@224"]

WRITE = """
import sys
from m4.convert import ml4m
from m4.convert.ml4m_synthetic import write_reference_checkpoint
from m4.model.configs import SIZES
dim, enc, dec, heads = SIZES[sys.argv[2]]
doms = {doms!r}
ref = dict(act_layer="SiLU", decoder_depth=dec, dim=dim, domains_in=doms,
           domains_out=[d for d in doms if d != "rgb@224"], encoder_depth=enc, gated_mlp=True,
           image_size=224, mlp_bias=False, mlp_ratio=4.0, norm_bias=False, num_heads=heads,
           patch_size=16, proj_bias=False, qkv_bias=False)
write_reference_checkpoint(sys.argv[1], ml4m.model_config(ref), progress=True)
"""

CONVERT = """
import json, resource, sys, time
t = time.time()
from m4.convert import ml4m
model, config = ml4m.load(sys.argv[1], progress=False)
loaded = time.time() - t
peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if sys.argv[2] != "-":
    ml4m.save_converted(model, sys.argv[2])
print(json.dumps({"seconds_load": round(loaded, 1), "seconds_total": round(time.time() - t, 1),
                  "peak_rss_after_load": peak_load,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

BASELINE = """
import json, resource
import jax, jax.numpy as jnp
from m4.convert import ml4m
jnp.zeros(1).block_until_ready()
print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def run(code, *args):
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="large")
    parser.add_argument("--workdir", default="/tmp/m4_convert_memory")
    parser.add_argument("--keep", action="store_true", help="keep the files written")
    args = parser.parse_args()
    work = pathlib.Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / f"synthetic_{args.size}.safetensors"
    t = time.time()
    if not ckpt.exists():
        subprocess.run([sys.executable, "-c", WRITE.format(doms=DOMAINS), str(ckpt), args.size],
                       check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    write_s = time.time() - t
    size = ckpt.stat().st_size
    baseline = run(BASELINE)["peak_rss"]
    load_only = run(CONVERT, str(ckpt), "-")
    with_save = run(CONVERT, str(ckpt), str(work / "converted"))
    gb = lambda b: round(b / 2**30, 3)
    result = {
        "size": args.size, "file_bytes": size, "file_gb": gb(size),
        "seconds_write": round(write_s, 1),
        "baseline_process_rss_gb": gb(baseline),
        "load": {"peak_rss_gb": gb(load_only["peak_rss"]),
                 "peak_over_file": round(load_only["peak_rss"] / size, 3),
                 "peak_minus_baseline_over_file": round((load_only["peak_rss"] - baseline) / size,
                                                        3),
                 "seconds": load_only["seconds_load"]},
        "load_and_save_orbax": {"peak_rss_gb": gb(with_save["peak_rss"]),
                                "peak_over_file": round(with_save["peak_rss"] / size, 3),
                                "seconds": with_save["seconds_total"]},
    }
    print(json.dumps(result, indent=1))
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

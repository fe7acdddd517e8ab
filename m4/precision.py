"""Which compute dtype is fast on this machine: the `dtype: "auto"` of training configs.

bfloat16 operands (float32 accumulation, float32 master weights) pay off where the hardware has
bf16 dot instructions: GPUs, TPUs, and CPUs with AVX512-BF16 or AMX. On a CPU without them XLA
runs bf16 dots slower than float32 ones (measured on an AVX-512 Xeon without them: train step
1.56 s vs 1.21 s at the benchmark's batch 8), so "auto" keeps float32 there.
"""

from __future__ import annotations

import pathlib
import platform
import re

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_features() -> dict:
    """The CPU's model name and its bf16 dot instructions (Linux /proc/cpuinfo; None elsewhere)."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or "unknown", "bf16_dot_instructions": None}
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags_line = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    return {"model": model.group(1).strip() if model else "unknown",
            "bf16_dot_instructions": sorted(flags & set(BF16_FLAGS))}


def fast_compute_dtype(platform_name: str | None = None) -> str:
    """"bfloat16" on accelerators and on CPUs with bf16 dot instructions, else "float32".
    `platform_name`: the JAX backend ("cpu", "gpu", "tpu"; None: the default backend)."""
    if platform_name is None:
        import jax

        platform_name = jax.default_backend()
    if platform_name != "cpu":
        return "bfloat16"
    return "bfloat16" if cpu_features()["bf16_dot_instructions"] else "float32"


def resolve_dtype(dtype: str | None) -> str | None:
    """A config's dtype with "auto" made concrete (None and explicit dtypes pass through)."""
    return fast_compute_dtype() if dtype == "auto" else dtype


__all__ = ["BF16_FLAGS", "cpu_features", "fast_compute_dtype", "resolve_dtype"]

"""Multi-process start-up: JAX's own multi-controller runtime (`jax.distributed`).

On TPU pods and SLURM/Open MPI GPU clusters `jax.distributed.initialize()` finds the coordinator
and the process ids by itself (`--distributed auto`). Elsewhere (or in tests on 127.0.0.1) give
them explicitly. It must run before any other JAX call, so commands call this first.
"""

from __future__ import annotations

import argparse

import jax


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-process (jax.distributed)")
    group.add_argument("--distributed", choices=("off", "auto", "explicit"), default="off",
                       help="off: one process; auto: let jax.distributed detect the cluster "
                            "(TPU pods, SLURM, Open MPI); explicit: use the flags below")
    group.add_argument("--coordinator", default=None,
                       help="host:port of process 0 (explicit mode)")
    group.add_argument("--num-processes", type=int, default=None)
    group.add_argument("--process-id", type=int, default=None)


def initialize_from_args(args: argparse.Namespace) -> None:
    mode = getattr(args, "distributed", "off")
    if mode == "off":
        return
    if mode == "auto":
        jax.distributed.initialize()
        return
    missing = [f for f in ("coordinator", "num_processes", "process_id")
               if getattr(args, f) is None]
    if missing:
        raise SystemExit(f"--distributed explicit needs --{', --'.join(m.replace('_', '-') for m in missing)}")
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id)

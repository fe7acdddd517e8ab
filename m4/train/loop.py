"""`m4 train`: the training loop, top to bottom.

Stages: (1) processes and mesh, (2) data: token shards -> masking -> batches, (3) model, optimizer
and the sharded train state, (4) restore, (5) the loop: step, metrics, checkpoints.

A resumed run continues bit-identically: the checkpoint holds the train state and the data
iterator's position, and every random choice in the data pipeline (crop, masking) is derived from
(seed, element index), not from how far an earlier process got.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from m4 import parallel
from m4.config import load_config
from m4.data import masking, pipeline, shards
from m4.data.span_masking import SentinelSpec
from m4.modalities import ModalitySpec
from m4.model.configs import FourMConfig, preset
from m4.model.fourm import FourM
from m4.precision import resolve_dtype
from m4.train import step as step_lib
from m4.train.checkpoint import Checkpointer
from m4.train.metrics import MetricWriter, Progress
from m4.train.model_io import MODEL_CONFIG_FILE
from m4.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer

TRAIN_CONFIG_FILE = "train_config.json"


class TrainConfigError(ValueError):
    pass


# ------------------------------------------------------------------------------ model config
def modality_specs(manifest: dict, names: list[str] | tuple[str, ...] | None) -> tuple[ModalitySpec, ...]:
    """The model's modalities: those of the shards' manifest (all, or `names` in that order)."""
    available = manifest.get("modalities", {})
    names = list(names) if names else list(available)
    missing = [n for n in names if n not in available]
    if missing:
        raise TrainConfigError(f"config.modalities names {missing}, but the token shards hold "
                               f"{sorted(available)}")
    return tuple(ModalitySpec.from_dict(available[n]["spec"]) for n in names)


def model_config(config: ml_collections.ConfigDict, specs) -> FourMConfig:
    overrides = {k: v for k, v in config.model.items() if k not in ("size", "variant") and v is not None}
    # "auto": bfloat16 compute where this machine has bf16 dot instructions (m4.precision); the
    # saved model config records the concrete dtype.
    if "dtype" in overrides:
        overrides["dtype"] = resolve_dtype(overrides["dtype"])
    return preset(config.model.size, specs, config.model.get("variant", "swiglu_nobias"), **overrides)


def sentinels_of(manifest: dict) -> SentinelSpec | None:
    text = manifest.get("text")
    return None if text is None else SentinelSpec(**text)


def make_masker(config: ml_collections.ConfigDict, specs, manifest: dict) -> masking.Masker:
    mixture_cfg = load_config(config.masking.mixture_file + ":" + config.masking.mixture)
    mixture = masking.Mixture.from_config(mixture_cfg)
    names = {s.name for s in specs}
    extra = [m for m in mixture.modalities if m not in names]
    if extra:
        mixture = mixture.drop(extra)
    return masking.Masker(specs, mixture, input_tokens=config.masking.input_tokens,
                          target_tokens=config.masking.target_tokens,
                          sentinels=sentinels_of(manifest))


# ------------------------------------------------------------------------------------- data
def batches(config, directory, masker, *, seed: int, local_batch: int, shuffle: bool = True,
            num_epochs: int | None = None):
    ds = pipeline.token_dataset(directory, seed=seed, process_index=jax.process_index(),
                                process_count=jax.process_count(), shuffle=shuffle,
                                num_epochs=num_epochs)
    ds = ds.random_map(masker, seed=seed + 2)
    return pipeline.batched(ds, local_batch, masking.collate)


def mesh_from_config(config) -> jax.sharding.Mesh:
    sizes = {k: int(config.mesh[k]) for k in ("data", "fsdp", "tensor")}
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise TrainConfigError(f"config.mesh: at most one axis may be -1, got {sizes}")
    if free:
        rest = math.prod(v for v in sizes.values() if v != -1)
        if jax.device_count() % rest:
            raise TrainConfigError(f"config.mesh {sizes}: {jax.device_count()} devices are not a "
                                   f"multiple of {rest}")
        sizes[free[0]] = jax.device_count() // rest
    return parallel.make_mesh(**sizes)


def optimizer_config(config, tokens_per_sample: int) -> OptimizerConfig:
    o = config.optimizer
    return OptimizerConfig(base_lr=o.base_lr, global_batch=config.batch_size,
                           warmup_steps=o.warmup_steps, total_steps=config.total_steps,
                           min_lr=o.min_lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                           clip_grad_norm=o.clip_grad_norm or None)


# ------------------------------------------------------------------------------------- main
def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
          quiet: bool = False, stop_at: int | None = None) -> dict[str, Any]:
    """Trains (or resumes) into `workdir`; returns a summary (final step, last metrics, compiles).

    `stop_at`: leave after this step with a checkpoint, as a job with a time limit would; the
    schedule still runs to `config.total_steps` when the run is resumed.
    """
    workdir = pathlib.Path(workdir)
    lead = jax.process_index() == 0
    if lead:
        workdir.mkdir(parents=True, exist_ok=True)

    # (1) mesh
    mesh = mesh_from_config(config)
    if config.batch_size % jax.process_count():
        raise TrainConfigError(f"config.batch_size={config.batch_size} is not divisible by the "
                               f"{jax.process_count()} processes")
    batch_axes = math.prod(mesh.shape[a] for a in parallel.BATCH_AXES)
    if config.batch_size % batch_axes:
        raise TrainConfigError(f"config.batch_size={config.batch_size} is not divisible by the "
                               f"data*fsdp mesh size {batch_axes}")
    local_batch = config.batch_size // jax.process_count()

    # (2) data
    manifest = shards.read_manifest(config.data.shards)
    if config.data.get("tokenizers"):
        from m4.pretokenize import expected_manifest, find_tokenizers
        shards.check_manifest(manifest, expected_manifest(find_tokenizers(config.data.tokenizers)),
                              where=str(config.data.shards))
    specs = modality_specs(manifest, config.get("modalities"))
    masker = make_masker(config, specs, manifest)
    data = batches(config, config.data.shards, masker, seed=config.seed, local_batch=local_batch)
    data_iter = iter(data.to_iter_dataset())

    # (3) model, optimizer, sharded state
    model_cfg = model_config(config, specs)
    tokens_per_sample = config.masking.input_tokens + config.masking.target_tokens
    opt_cfg = optimizer_config(config, tokens_per_sample)
    tx = make_optimizer(opt_cfg)
    schedule = learning_rate_schedule(opt_cfg)
    model, abstract, shardings = step_lib.abstract_train_state(
        lambda: FourM(model_cfg, rngs=nnx.Rngs(config.seed)), tx, mesh)
    train_step = step_lib.make_train_step(model, tx, shardings, mesh, loss_type=config.loss_type,
                                          learning_rate=schedule)

    # (4) restore or start
    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=config.checkpoint.keep,
                        save_interval_steps=1, async_save=config.checkpoint.get("async_save", True))
    if ckpt.latest_step() is not None:
        state, extra = ckpt.restore(abstract)
        data_iter.set_state(extra["data"])
        if not quiet and lead:
            print(f"resumed from step {int(state['step'])} in {ckpt.directory}", flush=True)
    else:
        state = step_lib.init_train_state(model, tx, shardings, mesh)
    if lead:
        (workdir / MODEL_CONFIG_FILE).write_text(json.dumps(model_cfg.to_dict(), indent=1))
        (workdir / TRAIN_CONFIG_FILE).write_text(config.to_json_best_effort(indent=1))

    # (5) the loop
    start = int(jax.device_get(state["step"]))
    total = int(config.total_steps)
    end = total if stop_at is None else min(total, int(stop_at))
    writer = MetricWriter(workdir, enabled=lead)
    progress = Progress(total, initial=start, desc="train", disable=quiet or not lead)
    tokens_per_step = config.batch_size * tokens_per_sample
    last: dict[str, float] = {}
    window_start, window_steps = time.perf_counter(), 0
    try:
        for step in range(start, end):
            batch = step_lib.global_batch(next(data_iter), mesh)
            state, metrics = train_step(state, batch)
            window_steps += 1
            done = step + 1
            if done % config.log_every == 0 or done == end:
                metrics = jax.device_get(metrics)
                seconds = time.perf_counter() - window_start
                last = {k: float(np.asarray(v)) for k, v in metrics.items()}
                last["steps_per_second"] = window_steps / seconds
                last["tokens_per_second"] = window_steps * tokens_per_step / seconds
                if not np.isfinite(last["loss"]):
                    progress.write(f"step {done}: non-finite loss {last['loss']} "
                                   f"(skipped steps so far: {int(last['skipped_steps'])})")
                writer.write_scalars(done, last)
                progress.update(window_steps, loss=last["loss"], grad_norm=last["grad_norm"],
                                tok_s=last["tokens_per_second"])
                window_start, window_steps = time.perf_counter(), 0
            if done % config.checkpoint.every_steps == 0 or done == end:
                ckpt.save(done, state, extra={"data": data_iter.get_state()}, force=True)
    finally:
        ckpt.close()
        writer.close()
        progress.close()
    return {"step": int(jax.device_get(state["step"])), "metrics": last,
            "compilations": train_step.jitted._cache_size(), "workdir": str(workdir)}


# -------------------------------------------------------------------------------------- CLI
def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True,
                        help="experiment config file, e.g. experiments/demo.py (path.py[:arg]); "
                             "override fields with --config.x=y")
    parser.add_argument("--workdir", required=True, type=pathlib.Path,
                        help="checkpoints, metrics and configs go here; re-running resumes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--stop-at", type=int, default=None,
                        help="stop after this step (with a checkpoint); re-run to continue")
    from m4.distributed import add_distributed_arguments
    add_distributed_arguments(parser)


def main(args) -> int:
    from m4.distributed import initialize_from_args
    initialize_from_args(args)
    config = load_config(args.config, args.config_overrides)
    summary = train(config, args.workdir, quiet=args.quiet, stop_at=args.stop_at)
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=1))
    return 0

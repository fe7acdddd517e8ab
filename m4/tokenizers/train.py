"""Tokenizer training: `m4 tokenizer train --config tokenizers/<modality>.py --workdir DIR`.

One function, top to bottom, in stages:
  1. data     rendered scenes (cached), the modality's raw arrays, the preprocessing spec
  2. mesh     data parallel over every device: the batch is sharded, the state replicated
  3. state    model parameters, codebook statistics, optimizer state, EMA of the parameters
  4. resume   from the latest checkpoint in <workdir>/checkpoints, if there is one
  5. loop     jitted step; metrics (JSONL + TensorBoard), held-out evals, checkpoints, progress
  6. export   the artifact (EMA weights, spec, config) to <workdir>/tokenizer
Captions take a shorter path (SentencePiece has no steps): `train_text`.

The schedule: linear warm-up, then cosine decay over the run's progress. With
`train.max_minutes > 0` progress is max(steps / num_steps, elapsed / budget), so a run on a busy
machine still decays its learning rate properly and ends on time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from m4 import parallel
from m4.data import scenes
from m4.tokenizers import artifact, data as data_lib, evaluate, tasks, text as text_lib
from m4.tokenizers.spec import PreprocessSpec
from m4.train.checkpoint import Checkpointer, abstract_like
from m4.train.metrics import MetricWriter, Progress

ARTIFACT_DIR = "tokenizer"
SUMMARY_FILE = "train_summary.json"


def train(config, workdir: str | pathlib.Path, *, progress: bool = True) -> pathlib.Path:
    """Trains the tokenizer described by `config`; returns the artifact directory."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if config.kind == "text":
        return train_text(config, workdir, progress=progress)
    tc = config.train
    is_main = jax.process_index() == 0

    # ---------------------------------------------------------------------------- 1. data
    scene_cfg = data_lib.scene_config(config.data.scene)
    cache = config.data.cache_dir or workdir / "scene_cache"
    train_scenes = data_lib.load_scenes(config.data.train_seed, config.data.train_size,
                                        scene_cfg, cache, progress=progress and is_main)
    eval_scenes = data_lib.load_scenes(config.data.eval_seed, config.data.eval_size,
                                       scene_cfg, cache, progress=progress and is_main)
    task = tasks.make_task(config, scene_cfg, train_scenes[config.modality])
    spec = task.spec
    examples = task.train_examples(train_scenes)                   # [N, ...] raw
    eval_raw = np.asarray(eval_scenes[config.modality])

    # ---------------------------------------------------------------------------- 2. mesh
    n_dev = jax.device_count()
    if tc.batch_size % n_dev:
        raise ValueError(f"train.batch_size={tc.batch_size} must be a multiple of the number of "
                         f"devices ({n_dev}): the batch is split evenly over them")
    mesh = parallel.make_mesh(data=n_dev)
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(parallel.BATCH_AXES))

    # --------------------------------------------------------------------------- 3. state
    model = artifact.build_model(config, spec, nnx.Rngs(tc.seed))
    graphdef, params, stats = nnx.split(model, nnx.Param, ...)
    tx = _optimizer(tc)
    state = {"params": params, "stats": stats, "opt": tx.init(params),
             "ema": jax.tree.map(jnp.copy, params), "step": jnp.zeros((), jnp.int32)}
    # Fresh buffers for every leaf: the step donates its state, and XLA refuses to donate one
    # buffer twice (two leaves may share an initial array).
    state = jax.device_put(jax.tree.map(lambda x: jnp.array(x, copy=True), state), replicated)
    _log_overview(params, spec, config, n_dev, progress and is_main)

    # -------------------------------------------------------------------------- 4. resume
    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=tc.keep_checkpoints,
                        save_interval_steps=tc.checkpoint_every)
    elapsed0 = 0.0
    if ckpt.latest_step() is not None:
        state, extra = ckpt.restore(abstract_like(state))
        elapsed0 = float(extra.get("elapsed_s", 0.0))
        if progress and is_main:
            print(f"resumed from step {int(state['step'])} ({ckpt.directory})", flush=True)

    # ---------------------------------------------------------------------------- 5. loop
    train_step = jax.jit(_make_step(task, graphdef, tx, tc.ema_decay), donate_argnums=(0,))
    evaluator = _Evaluator(task, graphdef, eval_raw, spec, eval_scenes)
    sampler = _Sampler(len(examples), tc.batch_size, tc.seed)
    writer = MetricWriter(workdir, enabled=is_main)
    step = int(state["step"])
    bar = Progress(tc.num_steps, initial=step, desc=f"train {config.modality} tokenizer",
                   disable=not (progress and is_main))
    budget = 60.0 * tc.max_minutes if tc.max_minutes > 0 else math.inf
    start = time.perf_counter()
    window_start, window_steps = start, 0
    done = _progress(step, tc.num_steps, elapsed0, budget) >= 1.0
    final_metrics: dict = {}
    while not done:
        elapsed = elapsed0 + time.perf_counter() - start
        frac = _progress(step, tc.num_steps, elapsed, budget)
        lr = _learning_rate(tc, step, frac)
        batch = _global_batch(examples, sampler.indices(step), batch_sharding)
        rng = jax.random.fold_in(jax.random.key(tc.seed), step)
        state, metrics = train_step(state, batch, rng, jnp.float32(lr))
        step += 1
        window_steps += 1
        # Waiting here keeps the wall-time budget exact (CPU devices share the host anyway).
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
            raise FloatingPointError(f"step {step}: loss is {loss}; lower train.lr or check the "
                                     f"data")
        elapsed = elapsed0 + time.perf_counter() - start
        done = _progress(step, tc.num_steps, elapsed, budget) >= 1.0
        bar.update(1, loss=loss)
        if step % tc.log_every == 0 or done:
            now = time.perf_counter()
            scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
            scalars.update(steps_per_s=window_steps / max(now - window_start, 1e-9),
                           elapsed_min=elapsed / 60.0, progress=min(frac, 1.0))
            writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
            window_start, window_steps = now, 0
        if step % tc.eval_every == 0 or done:
            final_metrics = evaluator.run(state)
            writer.write_scalars(step, {f"eval/{k}": v for k, v in final_metrics.items()
                                        if isinstance(v, (int, float))})
            writer.write_image(step, "eval/originals_vs_reconstructions",
                               np.asarray(evaluator.picture()))
            if progress and is_main:
                bar.write(f"step {step}: " + _headline(config.modality, final_metrics))
        extra = {"elapsed_s": elapsed, "step": step, "sampler_position": step * tc.batch_size}
        ckpt.save(step, state, extra, force=done)
    bar.close()
    ckpt.wait()

    # -------------------------------------------------------------------------- 6. export
    if not final_metrics:  # resumed a finished run: evaluate once more for the summary
        final_metrics = evaluator.run(state)
    out = workdir / ARTIFACT_DIR
    if is_main:  # the state is replicated: one process writes the artifact
        model = nnx.merge(graphdef, state["ema"], state["stats"])
        spec = artifact.save_model_artifact(out, config, spec, model)
        summary = {"modality": config.modality, "steps": step,
                   "elapsed_min": round((elapsed0 + time.perf_counter() - start) / 60.0, 3),
                   "devices": n_dev, "eval": final_metrics, "content_hash": spec.content_hash}
        (workdir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    writer.close()
    ckpt.close()
    return out


# ------------------------------------------------------------------------------ schedule
def _progress(step: int, num_steps: int, elapsed: float, budget: float) -> float:
    return max(step / max(num_steps, 1), elapsed / budget)


def _learning_rate(tc, step: int, frac: float) -> float:
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    floor = tc.lr * tc.min_lr_ratio
    return floor + (tc.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))


def _optimizer(tc) -> optax.GradientTransformation:
    """AdamW without its learning rate: the step scales the update by a host-computed lr, so
    the schedule can follow wall time. Weight decay applies to matrices/kernels only."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(tc.grad_clip),
        optax.scale_by_adam(b1=tc.b1, b2=tc.b2),
        optax.add_decayed_weights(tc.weight_decay, mask=decay_mask),
    )


# ---------------------------------------------------------------------------------- step
def _make_step(task, graphdef, tx, ema_decay: float):
    def step(state, batch, rng, lr):
        def loss_fn(params):
            model = nnx.merge(graphdef, params, state["stats"], copy=True)
            loss, metrics = task.loss(model, batch, rng)
            _, _, stats = nnx.split(model, nnx.Param, ...)
            return loss, (stats, metrics)

        (loss, (stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = jax.tree.map(lambda p, u: p - lr * u, state["params"], updates)
        # EMA with a short-memory start: early parameters are soon forgotten.
        n = state["step"].astype(jnp.float32)
        decay = jnp.minimum(ema_decay, (1.0 + n) / (10.0 + n))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state["ema"], params)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads), lr=lr)
        new_state = {"params": params, "stats": jax.lax.stop_gradient(stats), "opt": opt,
                     "ema": ema, "step": state["step"] + 1}
        return new_state, metrics

    return step


# ---------------------------------------------------------------------------------- data
class _Sampler:
    """Epoch-wise random permutations; the batch of a step depends only on (seed, step), so a
    resumed run sees exactly the batches it would have seen."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm

    def indices(self, step: int) -> np.ndarray:
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        out = np.empty(self.batch_size, np.int64)
        for epoch in np.unique(positions // self.n):
            sel = positions // self.n == epoch
            out[sel] = self._permutation(int(epoch))[positions[sel] % self.n]
        return np.sort(out)  # sorted reads from the memory-mapped cache are faster


def _global_batch(examples: np.ndarray, indices: np.ndarray, sharding) -> jax.Array:
    """This process's slice of the global batch, assembled into one sharded global array."""
    per_process = len(indices) // jax.process_count()
    mine = indices[jax.process_index() * per_process:(jax.process_index() + 1) * per_process]
    return jax.make_array_from_process_local_data(sharding, np.asarray(examples[mine]))


# --------------------------------------------------------------------------------- evals
class _Evaluator:
    """Reconstruction metrics and codebook statistics on the held-out scenes (EMA weights)."""

    def __init__(self, task, graphdef, eval_raw: np.ndarray, spec: PreprocessSpec,
                 eval_scenes: dict, chunk: int = 64):
        self.task, self.spec, self.raw, self.chunk = task, spec, eval_raw, chunk
        self.rgb = np.asarray(eval_scenes["rgb"])

        @jax.jit
        def run(ema, stats, raw):
            model = nnx.merge(graphdef, ema, stats)
            return task.reconstruct(model, raw), task.codes(model, raw)

        self._run = run

    def _outputs(self, state) -> tuple[np.ndarray, np.ndarray]:
        recon, codes = [], []
        for s in range(0, len(self.raw), self.chunk):
            part = self.raw[s:s + self.chunk]
            r, c = self._run(state["ema"], state["stats"], part)
            recon.append(np.asarray(r))
            codes.append(np.asarray(c))
        return np.concatenate(recon), np.concatenate(codes)

    def run(self, state) -> dict:
        recon, codes = self._outputs(state)
        self._last_recon = recon
        metrics = evaluate.modality_metrics(self.spec, self.raw, recon)
        k = self.spec.vocab_size - (1 if self.spec.kind == "poses" else 0)
        metrics.update(evaluate.codebook_stats(codes[codes >= 0], k))
        return {k: v for k, v in metrics.items() if not isinstance(v, list)}

    def picture(self, n: int = 8):
        """Originals over reconstructions of the last `run`."""
        return evaluate.comparison_grid(self.spec, self.raw[:n], self._last_recon[:n],
                                        rgb=self.rgb[:n], tile=96)


def _headline(modality: str, metrics: dict) -> str:
    key = evaluate.HEADLINE.get(modality, (None,))[0]
    parts = [f"{key}={metrics[key]:.4g}"] if key in metrics else []
    parts.append(f"codebook_usage={metrics.get('codebook_usage', float('nan')):.3f}")
    parts.append(f"perplexity={metrics.get('perplexity', float('nan')):.1f}")
    return ", ".join(parts)


def _log_overview(params, spec: PreprocessSpec, config, n_dev: int, show: bool) -> None:
    if not show:
        return
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    print(f"{config.modality} tokenizer: {count / 1e6:.2f}M parameters, "
          f"{spec.vocab_size} codes, tokens {list(spec.token_shape)} per example, "
          f"{n_dev} device(s), batch {config.train.batch_size}", flush=True)


# ----------------------------------------------------------------------------------- text
def train_text(config, workdir: pathlib.Path, *, progress: bool = True) -> pathlib.Path:
    """SentencePiece on the training captions; evaluated on held-out captions."""
    scene_cfg = data_lib.scene_config(config.data.scene)
    cache = config.data.cache_dir or workdir / "scene_cache"
    captions = data_lib.load_scenes(config.data.train_seed, config.data.train_size, scene_cfg,
                                    cache, progress=progress)["caption"]
    held_out = data_lib.load_scenes(config.data.eval_seed, config.data.eval_size, scene_cfg,
                                    cache, progress=progress)["caption"]
    t0 = time.perf_counter()
    proto = text_lib.train_sentencepiece(captions, vocab_size=config.text.vocab_size,
                                         num_sentinels=config.text.num_sentinels,
                                         model_type=config.text.model_type)
    spec = PreprocessSpec(
        modality=config.modality, kind="text", dtype="str", shape=(), normalization="text",
        resolution=scene_cfg.resolution, vocab_size=0, token_shape=(config.text.max_len,),
        norm_params={"pad_id": text_lib.PAD_ID, "unk_id": text_lib.UNK_ID,
                     "sos_id": text_lib.SOS_ID, "eos_id": text_lib.EOS_ID,
                     "sentinel_start": text_lib.SENTINEL_START,
                     "num_sentinels": config.text.num_sentinels},
        description=scenes.raw_specs(scene_cfg)[config.modality].description)
    vocab = text_lib.TextTokenizer(proto, spec).vocab_size
    spec = dataclasses.replace(spec, vocab_size=vocab)
    out = workdir / ARTIFACT_DIR
    spec = artifact.save_text_artifact(out, config, spec, proto)
    tokenizer = artifact.load(out)
    tokens = tokenizer.encode(held_out)
    metrics = evaluate.caption_metrics(held_out, tokenizer.decode(tokens), tokens)
    metrics["vocab_size"] = vocab
    with MetricWriter(workdir) as writer:
        writer.write_scalars(0, {f"eval/{k}": v for k, v in metrics.items()})
    summary = {"modality": config.modality, "elapsed_min": (time.perf_counter() - t0) / 60.0,
               "eval": metrics, "content_hash": spec.content_hash}
    (workdir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    if progress:
        print(f"caption tokenizer: {vocab} ids, held-out round trip "
              f"{metrics['roundtrip_exact']:.3f}, longest {metrics['tokens_max']} tokens",
              flush=True)
    return out

"""What differs between tokenizer kinds during training: the spec, the loss, the evaluation.

A task turns raw arrays into a preprocessing spec, and gives the trainer three functions to run
inside jit: `loss(model, raw_batch, rng)` (training), `reconstruct(model, raw_batch)` and
`codes(model, raw_batch)` (evaluation, on raw held-out scenes). The loop itself (train.py) is the
same for every kind.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from m4.data import scenes
from m4.tokenizers.spec import PreprocessSpec
from m4.tokenizers.vector_vq import figure_present, pose_loss
from m4.tokenizers.vqvae import grid_size, reconstruction_loss

# Default normalisation per built-in modality (a config may name one with `normalization`).
NORMALIZATION = {"rgb": "rgb_uint8", "depth": "linear_range", "normals": "unit_vectors",
                 "semseg": "class_ids", "features": "standardize"}


def codebook_size(quantizer) -> int:
    if quantizer.kind == "fsq":
        return math.prod(quantizer.levels)
    return int(quantizer.codebook_size)


def class_weights(labels: np.ndarray, num_classes: int, weighting: str) -> np.ndarray:
    """Per-class loss weights from the class frequencies of (a sample of) the training maps.

    "sqrt_inverse_frequency": w_c ~ 1 / sqrt(f_c), scaled so that the average pixel weight is 1;
    classes absent from the sample get the largest weight seen."""
    if weighting != "sqrt_inverse_frequency":
        raise ValueError(f"loss.class_weighting must be 'none' or 'sqrt_inverse_frequency', "
                         f"got {weighting!r}")
    sample = np.asarray(labels[: min(len(labels), 4096)]).reshape(-1).astype(np.int64)
    freq = np.bincount(sample, minlength=num_classes)[:num_classes] / max(sample.size, 1)
    w = np.where(freq > 0, 1.0 / np.sqrt(np.maximum(freq, 1e-12)), 0.0)
    w = np.where(freq > 0, w, w.max())
    return (w / max(float((w * freq).sum()), 1e-12)).astype(np.float32)


class ImageTask:
    """rgb, depth, normals, semseg, features: one raw array per scene."""

    def __init__(self, config, scene_cfg: scenes.SceneConfig, train_raw: np.ndarray):
        modality = config.modality
        raw = scenes.raw_specs(scene_cfg)[modality]
        normalization = config.get("normalization", None) or NORMALIZATION.get(modality)
        if normalization is None:
            raise ValueError(f"config.normalization: no default for modality {modality!r}; set "
                             f"one of {sorted(set(NORMALIZATION.values()))}")
        side = raw.shape[0]
        g = grid_size(config.model, side)
        norm_params = {}
        if normalization == "standardize":
            sample = np.asarray(train_raw[: min(len(train_raw), 4096)], np.float64)
            sample = sample.reshape(-1, sample.shape[-1])
            norm_params = {"mean": [round(float(v), 6) for v in sample.mean(0)],
                           "std": [round(float(max(v, 1e-3)), 6) for v in sample.std(0)]}
        self.spec = PreprocessSpec(
            modality=modality, kind="image", dtype=raw.dtype, shape=tuple(raw.shape),
            normalization=normalization, resolution=scene_cfg.resolution,
            vocab_size=codebook_size(config.quantizer), token_shape=(g, g),
            value_range=tuple(raw.value_range) if raw.value_range is not None else None,
            num_classes=raw.num_classes, norm_params=norm_params, description=raw.description)
        self.loss_kind = "ce" if normalization == "class_ids" else config.loss.kind
        self.beta = config.loss.get("beta", 1.0)
        self.class_weights = None
        weighting = config.loss.get("class_weighting", "none")
        if normalization == "class_ids" and weighting != "none":
            self.class_weights = class_weights(train_raw, raw.num_classes, weighting)
        self.flip = bool(config.data.get("flip", False))

    def train_examples(self, scenes_data: dict) -> np.ndarray:
        return scenes_data[self.spec.modality]

    def _augment(self, x: jax.Array, rng: jax.Array) -> jax.Array:
        """Random horizontal flips of normalised inputs [B, H, W, (C)]."""
        if not self.flip:
            return x
        flip = jax.random.bernoulli(rng, 0.5, (x.shape[0],))
        flipped = x[:, :, ::-1]
        if self.spec.normalization == "unit_vectors":  # a mirror turns x right into x left
            flipped = flipped * jnp.asarray([-1.0, 1.0, 1.0])
        return jnp.where(flip.reshape((-1,) + (1,) * (x.ndim - 1)), flipped, x)

    def loss(self, model, raw: jax.Array, rng: jax.Array):
        rng_aug, rng_q = jax.random.split(rng)
        x = self._augment(self.spec.normalize(raw), rng_aug)
        out, q = model(x, train=True, rng=rng_q)
        weights = None if self.class_weights is None else jnp.asarray(self.class_weights)
        rec = reconstruction_loss(self.loss_kind, out, x, beta=self.beta, class_weights=weights)
        metrics = dict(q.metrics, reconstruction=rec)
        return rec + q.loss, metrics

    def reconstruct(self, model, raw: jax.Array) -> jax.Array:
        out, _ = model(self.spec.normalize(raw))
        return self.spec.denormalize(out)

    def codes(self, model, raw: jax.Array) -> jax.Array:
        return model.encode(self.spec.normalize(raw))


class PoseTask:
    """poses: trained on single figures, evaluated on scenes (with absent figures)."""

    def __init__(self, config, scene_cfg: scenes.SceneConfig, train_raw: np.ndarray):
        raw = scenes.raw_specs(scene_cfg)["poses"]
        f = raw.shape[0]
        self.spec = PreprocessSpec(
            modality=config.modality, kind="poses", dtype=raw.dtype, shape=tuple(raw.shape),
            normalization="pose_pixels", resolution=scene_cfg.resolution,
            vocab_size=codebook_size(config.quantizer) + 1,
            token_shape=(f * config.model.tokens_per_figure,),
            value_range=tuple(raw.value_range), description=raw.description + "; id 0 = absent")
        self.beta = config.loss.get("beta", 0.02)
        self.visibility_weight = config.loss.get("visibility_weight", 0.1)

    def train_examples(self, scenes_data: dict) -> np.ndarray:
        """Every present figure of the training scenes: [N, J, 3]."""
        poses = np.asarray(scenes_data["poses"])
        figures = poses[np.any(poses != 0, axis=(-2, -1))]
        if not len(figures):
            raise ValueError("poses tokenizer: the training scenes contain no figures "
                             "(data.scene.max_figures = 0?)")
        return figures

    def loss(self, model, raw: jax.Array, rng: jax.Array):
        x = self.spec.normalize(raw)                                      # [B, J, 3]
        out, q = model(x, train=True, rng=rng)
        loss, metrics = pose_loss(out, x, visibility_weight=self.visibility_weight,
                                  beta=self.beta)
        return loss + q.loss, dict(q.metrics, **metrics)

    def reconstruct(self, model, raw: jax.Array) -> jax.Array:
        tokens = model.encode(self.spec.normalize(raw), figure_present(raw))
        out, present = model.decode(tokens)
        res = float(self.spec.resolution)
        xy = jnp.clip((out[..., :2] + 1.0) * (res / 2.0), 0.0, res)
        poses = jnp.concatenate([xy, (out[..., 2:] > 0).astype(jnp.float32)], axis=-1)
        return jnp.where(present[..., None, None], poses, 0.0)

    def codes(self, model, raw: jax.Array) -> jax.Array:
        """Quantizer codes of the present figures (absent slots as -1, ignored by stats)."""
        tokens = model.encode(self.spec.normalize(raw), figure_present(raw))
        return tokens - 1


def make_task(config, scene_cfg: scenes.SceneConfig, train_raw: np.ndarray):
    if config.kind == "image":
        return ImageTask(config, scene_cfg, train_raw)
    if config.kind == "poses":
        return PoseTask(config, scene_cfg, train_raw)
    raise ValueError(f"config.kind must be 'image', 'poses' or 'text', got {config.kind!r}")

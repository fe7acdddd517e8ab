"""Quantizers: cosine codebook with EMA updates and dead-code restarts; FSQ."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from m4.tokenizers.quantizers import FSQ, VectorQuantizer, build_quantizer, usage_metrics


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _vq(k=5, d=3, **kw):
    return VectorQuantizer(d, k, rngs=nnx.Rngs(0), **kw)


def test_encode_is_argmax_of_cosine_not_distance():
    vq = _vq(k=2, d=2)
    vq.codebook.set_value(jnp.asarray([[1.0, 0.0], [0.0, 1.0]]))
    # Long vector pointing mostly along code 0, short one along code 1.
    z = jnp.asarray([[10.0, 1.0], [0.01, 0.02]])
    np.testing.assert_array_equal(vq.encode(z), [0, 1])


def test_ema_update_follows_the_formula():
    k, d, decay = 4, 3, 0.9
    vq = _vq(k, d, decay=decay, dead_code_coef=1e9)  # threshold ~0: nothing is dead
    codes = _unit(np.eye(4, 3) + 0.1)
    vq.codebook.set_value(jnp.asarray(codes, jnp.float32))
    vq.embed_sum.set_value(jnp.asarray(codes, jnp.float32))
    vq.cluster_size.set_value(jnp.ones((k,), jnp.float32))
    z = _unit(np.asarray([[1.0, 0.1, 0.0], [0.9, 0.0, 0.2], [0.0, 1.0, 0.1]], np.float32))
    out = vq(jnp.asarray(z), train=True, rng=jax.random.key(0))
    idx = np.asarray(out.indices)
    assert idx.tolist() == [0, 0, 1]
    counts = np.bincount(idx, minlength=k)
    expected_size = decay * 1.0 + (1 - decay) * counts
    np.testing.assert_allclose(vq.cluster_size.get_value(), expected_size, rtol=1e-6)
    sums = np.zeros((k, d))
    np.add.at(sums, idx, z)
    expected_sum = decay * codes + (1 - decay) * sums
    np.testing.assert_allclose(vq.embed_sum.get_value(), expected_sum, rtol=1e-5, atol=1e-6)
    # Code 0 moved towards the mean of its two latents; unused codes keep their direction.
    new = np.asarray(vq.codebook.get_value())
    np.testing.assert_allclose(np.linalg.norm(new, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(new[2], codes[2], atol=1e-5)
    target = _unit(z[:2].mean(0))
    assert new[0] @ target > codes[0] @ target
    assert float(out.metrics["dead_codes"]) == 0


def test_dead_codes_restart_from_batch_latents():
    k, d = 8, 4
    vq = _vq(k, d, decay=0.99, dead_code_coef=1.0)
    rng = np.random.default_rng(0)
    z = _unit(rng.normal(size=(64, d)).astype(np.float32))
    vq(jnp.asarray(z), train=True, rng=jax.random.key(1))          # first step: all dead
    codebook = np.asarray(vq.codebook.get_value())
    # Every code is now one of the batch latents (data-dependent initialisation).
    match = np.abs(codebook[:, None, :] - z[None]).max(-1).min(-1)
    assert match.max() < 1e-6
    # Make code 3 alive and code 5 dead, then feed latents that all go to code 3.
    size = np.full((k,), 100.0, np.float32)
    size[5] = 0.0
    vq.cluster_size.set_value(jnp.asarray(size))
    z2 = np.repeat(codebook[3:4], 32, axis=0)
    z2_new = z2 + 0.01 * rng.normal(size=z2.shape).astype(np.float32)
    out = vq(jnp.asarray(_unit(z2_new)), train=True, rng=jax.random.key(2))
    after = np.asarray(vq.codebook.get_value())
    assert float(out.metrics["dead_codes"]) == 1
    assert np.abs(after[5] - _unit(z2_new)).max(-1).min() < 1e-6   # restarted from the batch
    np.testing.assert_allclose(after[[0, 1, 2, 4, 6, 7]], codebook[[0, 1, 2, 4, 6, 7]],
                               atol=1e-6)                            # the others untouched
    threshold = (32 / k) / 1.0
    assert float(vq.cluster_size.get_value()[5]) == pytest.approx(threshold)


def test_straight_through_gradient_and_commitment():
    vq = _vq(k=6, d=4, commitment_weight=0.5)
    z = jax.random.normal(jax.random.key(3), (10, 4))

    def f(z):
        out = vq(z)
        return jnp.sum(out.quantized * jnp.arange(4.0)), out

    (value, out), grad = jax.value_and_grad(f, has_aux=True)(z)
    codes = vq.lookup(out.indices)
    np.testing.assert_allclose(out.quantized, codes, atol=1e-6)   # forward: the codes
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0    # backward: reaches z
    zn = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    expected = 0.5 * jnp.mean(jnp.sum((zn - codes) ** 2, -1))
    np.testing.assert_allclose(out.loss, expected, rtol=1e-5)


def test_train_without_rng_is_an_error():
    with pytest.raises(ValueError, match="rng"):
        _vq()(jnp.ones((2, 3)), train=True)


def test_fsq_levels_indices_and_lookup():
    fsq = FSQ([8, 5, 3])
    assert fsq.codebook_size == 120 and fsq.input_dim == 3
    g = jnp.linspace(-4.0, 4.0, 25)
    z = jnp.stack(jnp.meshgrid(g, g, g), -1).reshape(-1, 3)      # covers every bin
    out = fsq(z)
    q = np.asarray(out.quantized)
    assert [len(np.unique(q[:, i])) for i in range(3)] == [8, 5, 3]
    assert q.min() >= -1 and q.max() <= 1
    idx = np.asarray(out.indices)
    assert idx.min() >= 0 and idx.max() < 120
    np.testing.assert_allclose(fsq.lookup(out.indices), q, atol=1e-6)
    # Every code is reachable and lookup/encode are inverse on the whole codebook.
    all_codes = jnp.arange(120)
    np.testing.assert_array_equal(fsq._to_indices(fsq.lookup(all_codes)), all_codes)
    assert len(np.unique(idx)) == 120
    assert float(out.loss) == 0.0


def test_fsq_gradient_is_straight_through():
    fsq = FSQ([5, 5])
    grad = jax.grad(lambda z: jnp.sum(fsq(z).quantized))(jnp.asarray([[0.1, -0.3]]))
    assert np.all(np.asarray(grad) > 0)


def test_usage_metrics():
    m = usage_metrics(jnp.asarray([0, 0, 1, 1]), 4)
    assert float(m["usage"]) == 0.5
    assert float(m["perplexity"]) == pytest.approx(2.0)


def test_build_quantizer_from_config():
    cfg = ml_collections.ConfigDict(dict(kind="fsq", levels=(4, 4), codebook_size=0,
                                         latent_dim=0))
    assert isinstance(build_quantizer(cfg, rngs=nnx.Rngs(0)), FSQ)
    cfg = ml_collections.ConfigDict(dict(kind="vq", codebook_size=16, latent_dim=8))
    vq = build_quantizer(cfg, rngs=nnx.Rngs(0))
    assert isinstance(vq, VectorQuantizer) and vq.codebook_size == 16
    cfg.kind = "kmeans"
    with pytest.raises(ValueError, match="quantizer.kind"):
        build_quantizer(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="levels"):
        FSQ([1, 4])


def test_codebook_stats_are_not_parameters():
    vq = _vq()
    params = nnx.state(vq, nnx.Param)
    assert len(jax.tree.leaves(params)) == 0

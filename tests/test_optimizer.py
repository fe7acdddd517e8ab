import jax
import jax.numpy as jnp
import numpy as np

from m4.train.optimizer import (OptimizerConfig, decay_mask, learning_rate_schedule,
                                make_optimizer, skipped_steps)


def test_lr_scales_with_batch_warms_up_and_decays():
    cfg = OptimizerConfig(base_lr=1e-4, global_batch=512, warmup_steps=10, total_steps=110)
    lr = learning_rate_schedule(cfg)
    assert cfg.peak_lr == 2e-4
    assert float(lr(0)) == 0.0
    np.testing.assert_allclose(float(lr(5)), 1e-4, rtol=1e-6)
    np.testing.assert_allclose(float(lr(10)), 2e-4, rtol=1e-6)
    np.testing.assert_allclose(float(lr(60)), 1e-4, rtol=1e-5)  # cosine half way
    assert float(lr(110)) < 1e-9


def test_no_decay_on_norms_and_biases():
    params = {"encoder": {"norm1": {"scale": 1.0}, "attn": {"qkv": {"kernel": 1.0, "bias": 1.0}}},
              "mask_token": 1.0, "encoder_norm": {"scale": 1.0}, "embed": {"embedding": 1.0}}
    mask = decay_mask(params)
    assert mask["encoder"]["norm1"]["scale"] is False
    assert mask["encoder"]["attn"]["qkv"]["bias"] is False
    assert mask["encoder_norm"]["scale"] is False
    assert mask["encoder"]["attn"]["qkv"]["kernel"] is True
    assert mask["mask_token"] is True and mask["embed"]["embedding"] is True


def test_non_finite_steps_are_skipped_and_counted():
    cfg = OptimizerConfig(base_lr=0.1 * 256 / 8, global_batch=8, warmup_steps=0, total_steps=10)
    tx = make_optimizer(cfg)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    good = {"w": jnp.ones(3)}
    bad = {"w": jnp.array([1.0, jnp.nan, 1.0])}
    updates, state = tx.update(bad, state, params)
    assert np.all(np.asarray(updates["w"]) == 0) and int(skipped_steps(state)) == 1
    updates, state = tx.update(good, state, params)
    params2 = jax.tree.map(lambda p, u: p + u, params, updates)
    assert np.all(np.asarray(params2["w"]) < 1.0) and int(skipped_steps(state)) == 1

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

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


def test_decay_mask_on_real_model_state():
    from flax import nnx

    from m4.modalities import ModalitySpec
    from m4.model.configs import preset
    from m4.model.fourm import FourM

    specs = [ModalitySpec("rgb", "image", vocab_size=16, grid=(2, 2)),
             ModalitySpec("caption", "sequence", vocab_size=20, length=8)]
    cfg = preset("tiny", specs, dim=16, encoder_depth=1, decoder_depth=1, num_heads=2)
    params = nnx.state(nnx.eval_shape(lambda: FourM(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    flat = {jax.tree_util.keystr(p): m for p, m in
            jax.tree_util.tree_leaves_with_path(decay_mask(params))}
    decayed = sorted(k for k, v in flat.items() if v)
    kept = sorted(k for k, v in flat.items() if not v)
    assert kept and all("norm" in k or "bias" in k for k in kept), kept
    assert any("qkv" in k for k in decayed) and any("token_emb" in k for k in decayed)


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


def _tree(rng, scale=1.0):
    leaf = lambda *shape: jnp.asarray(rng.standard_normal(shape) * scale, jnp.float32)
    return {"encoder": {"norm1": {"scale": leaf(5)},
                        "qkv": {"kernel": leaf(3, 4), "bias": leaf(4)}},
            "token_emb": leaf(7, 3)}


def _fused_and_optax(clip, seed: int):
    """The fused AdamW and optax's chain with one config, random parameters, their states."""
    from m4.train.optimizer import optax_adamw

    cfg = OptimizerConfig(base_lr=0.3, global_batch=256, warmup_steps=2, total_steps=6,
                          clip_grad_norm=clip)
    fused, ref = make_optimizer(cfg), optax_adamw(cfg)
    rng = np.random.default_rng(seed)
    params = _tree(rng)
    return fused, ref, rng, (params, fused.init(params)), (params, ref.init(params))


@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("with_rows", [False, True])
def test_fused_adamw_equals_the_optax_chain(clip, with_rows):
    """Same parameters, moments and counters as optax's apply_if_finite(chain(clip, adamw)),
    through warmup, a skipped non-finite step, and clipping. with_rows: the [V, D] table also
    gets row gradients (`apply_gradients(rows=...)`, ids repeated; some steps with no dense
    table gradient, as an untied embedding): optax sees their dense sum."""
    fused, ref, rng, (p_f, s_f), (p_r, s_r) = _fused_and_optax(clip, seed=int(with_rows))
    assert jax.tree.structure(s_f) == jax.tree.structure(s_r)
    step = jax.jit(fused.apply_gradients)
    index = jnp.asarray([[1, 4, 1], [6, 1, 0]], jnp.int32)           # row 1 three times
    for i in range(5):
        grads = _tree(rng, scale=3.0)
        rows, dense = None, grads
        if with_rows:
            if i % 2:
                grads["token_emb"] = jnp.zeros_like(grads["token_emb"])
            values = jnp.asarray(rng.standard_normal((2, 3, 3)) * 3.0, jnp.float32)
            if i == 2:
                values = values.at[1, 2, 0].set(jnp.nan)
            rows = {("token_emb",): (index, values)}
            dense = dict(grads, token_emb=grads["token_emb"].at[index.reshape(-1)].add(
                values.reshape(-1, 3)))
        elif i == 2:
            grads["token_emb"] = grads["token_emb"].at[1, 1].set(jnp.inf)
        p_f, s_f, norm = step(grads, s_f, p_f, rows)
        updates, s_r = ref.update(dense, s_r, p_r)
        p_r = optax.apply_updates(p_r, updates)
        # Rows of equal ids are summed in another order than optax's dense scatter-add.
        rtol, atol = (2e-5, 1e-6) if with_rows else (2e-6, 1e-7)
        if i != 2:
            np.testing.assert_allclose(norm, optax.tree.norm(dense), rtol=5 * rtol)
        for a, b in zip(jax.tree.leaves((p_f, s_f)), jax.tree.leaves((p_r, s_r))):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    assert int(skipped_steps(s_f)) == 1


def test_row_gradients_of_an_unknown_parameter_are_refused():
    fused, _, rng, (params, state), _ = _fused_and_optax(None, seed=0)
    index, values = jnp.zeros((2,), jnp.int32), jnp.ones((2, 3))
    with pytest.raises(ValueError, match="not parameters"):
        fused.apply_gradients(_tree(rng), state, params, {("nope",): (index, values)})

"""The train step's token tables learn from row gradients (m4.train.sparse_rows) exactly as from
the dense gradient autodiff gives."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from m4 import parallel
from m4.data.masking import Masker, Mixture, collate
from m4.data.span_masking import SentinelSpec
from m4.model.configs import preset
from m4.model.fourm import FourM
from m4.train import sparse_rows
from m4.train import step as step_lib
from m4.train.optimizer import OptimizerConfig, make_optimizer, optax_adamw
from token_shards_fixture import SPECS, TEXT


def _batches(n: int):
    mixture = Mixture.from_config({"name": "t", "modalities": {
        s.name: {"input_alphas": [1.0], "target_alphas": [1.0]} for s in SPECS}})
    masker = Masker(SPECS, mixture, input_tokens=12, target_tokens=12,
                    sentinels=SentinelSpec(**TEXT))
    rng = np.random.default_rng(0)
    first_word = TEXT["first_sentinel_id"] + TEXT["num_sentinels"]
    # Small vocabularies: ids repeat within the batch, so rows of equal ids must be summed.
    return [collate([masker({"rgb": rng.integers(0, 32, 16), "depth": rng.integers(0, 16, 16),
                             "caption": rng.integers(first_word, 64, 6)}, rng)
                     for _ in range(4)]) for _ in range(n)]


@pytest.mark.parametrize("tied,fused", [(False, True), (True, True), (False, False)])
def test_row_gradient_steps_equal_dense_gradient_steps(tied, fused):
    cfg = preset("tiny", SPECS, dim=32, encoder_depth=1, decoder_depth=1, num_heads=2,
                 tie_logits=tied)
    opt_cfg = OptimizerConfig(base_lr=0.05, global_batch=256, warmup_steps=1, total_steps=10,
                              clip_grad_norm=0.5)
    tx = make_optimizer(opt_cfg) if fused else optax_adamw(opt_cfg)
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    model, _, shardings = step_lib.abstract_train_state(
        lambda: FourM(cfg, rngs=nnx.Rngs(0)), tx, mesh)
    state = step_lib.init_train_state(model, tx, shardings, mesh)   # donated by train_step
    initial = step_lib.init_train_state(model, tx, shardings, mesh)
    params, rest = initial["params"], initial["rest"]
    first_table = np.asarray(params["enc_embed"]["token_emb"][...])
    reference = make_optimizer(opt_cfg)
    opt = reference.init(params)

    @jax.jit
    def dense_step(params, opt, batch):       # autodiff's dense table gradients
        def loss(p):
            return nnx.merge(model.graphdef, p, rest).loss(batch, "mod")[0]
        grads = jax.grad(loss)(params)
        return reference.apply_gradients(grads, opt, params)

    train_step = step_lib.make_train_step(model, tx, shardings, mesh)
    for batch in _batches(3):
        state, metrics = train_step(state, step_lib.global_batch(batch, mesh))
        params, opt, norm = dense_step(params, opt, batch)
        np.testing.assert_allclose(metrics["grad_norm"], norm, rtol=1e-5)
    # Float-order differences only (rows summed in another order); an update is ~lr = 5e-2.
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state["params"]),
                            jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5, err_msg=jax.tree_util.keystr(path))
    moved = np.asarray(state["params"]["enc_embed"]["token_emb"][...])
    assert np.abs(moved - first_table).max() > 0


def test_densify_adds_the_rows_of_equal_ids():
    grads = {"enc_embed": {"token_emb": jax.numpy.ones((5, 2))}, "other": jax.numpy.ones(3)}
    index = jax.numpy.asarray([[0, 3, 0]])
    rows = jax.numpy.asarray([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    out = sparse_rows.densify(grads, {("enc_embed", "token_emb"): (index, rows)})
    np.testing.assert_array_equal(out["enc_embed"]["token_emb"],
                                  [[7, 9], [1, 1], [1, 1], [4, 5], [1, 1]])
    np.testing.assert_array_equal(out["other"], grads["other"])

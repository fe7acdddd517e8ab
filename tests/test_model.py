"""The FourM model: presets, invariances, loss paths, options. Tiny configs, CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m4.modalities import ModalitySpec
from m4.model import (
    BatchError, FourM, count_params, preset, random_batch, validate_batch,
)

SPECS = (
    ModalitySpec("rgb", "image", vocab_size=37, grid=(4, 4)),
    ModalitySpec("depth", "image", vocab_size=23, grid=(4, 4)),
    ModalitySpec("caption", "sequence", vocab_size=41, length=10, pos_table=12),
    ModalitySpec("pose", "vectors", vocab_size=13, length=5, positions="learned"),
    ModalitySpec("pix", "pixels", patch_dim=12, patch_size=2, grid=(4, 4), target=False),
)


def tiny(**kw):
    base = dict(dim=24, num_heads=3, encoder_depth=2, decoder_depth=2)
    base.update(kw)
    return preset("tiny", SPECS, **base)


@pytest.fixture(scope="module")
def model():
    return FourM(tiny(), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def batch():
    b = random_batch(tiny(), 3, 20, 14, seed=1, fill=0.8)
    validate_batch(b, tiny())
    return b


@jax.jit
def _loss_all(state, graphdef, batch):
    m = nnx.merge(graphdef, state)
    out = m(batch)
    return out, m.loss(batch, "mod")[1]


def run(model, batch):
    graphdef, state = nnx.split(model)
    return jax.device_get(_loss_all(state, graphdef, {k: jnp.asarray(v) for k, v in batch.items()}))


@pytest.mark.parametrize("size, blocks", [("base", 198_236_160), ("large", 704_692_224),
                                          ("xl", 2_818_768_896), ("tiny", 24_786_432),
                                          ("small", 58_736_640)])
def test_blocks_only_parameter_counts(size, blocks):
    specs = (ModalitySpec("rgb", "image", vocab_size=16384, grid=(14, 14)),
             ModalitySpec("caption", "sequence", vocab_size=30000, length=256, pos_table=512))
    abstract = nnx.eval_shape(lambda: FourM(preset(size, specs), rngs=nnx.Rngs(0)))
    assert count_params(abstract, blocks_only=True) == blocks


def test_fully_masked_modality_changes_nothing(model, batch):
    out, metrics = run(model, batch)
    # Append slots of modalities that are entirely masked (valid False everywhere).
    extra = {k: np.concatenate([v, np.zeros_like(v[:, :6])], axis=1) if v.ndim >= 2 else v
             for k, v in batch.items()}
    extra["enc_mod"][:, -6:] = 1
    extra["enc_ids"][:, -6:] = 5
    extra["dec_mod"][:, -6:] = 1
    extra["dec_targets"][:, -6:] = 3
    out2, metrics2 = run(model, extra)
    n_in, n_tgt = batch["enc_mod"].shape[1], batch["dec_mod"].shape[1]
    np.testing.assert_allclose(out2["enc_out"][:, :n_in], out["enc_out"], atol=1e-5)
    np.testing.assert_allclose(out2["dec_out"][:, :n_tgt], out["dec_out"], atol=1e-5)
    for k, v in metrics.items():
        np.testing.assert_allclose(metrics2[k], v, rtol=1e-5, err_msg=k)


def test_slot_order_does_not_change_the_loss(model, batch):
    out, metrics = run(model, batch)
    rng = np.random.default_rng(0)
    perm_in = np.stack([rng.permutation(batch["enc_mod"].shape[1]) for _ in range(3)])
    perm_t = np.stack([rng.permutation(batch["dec_mod"].shape[1]) for _ in range(3)])
    shuffled = {k: (np.take_along_axis(v, (perm_in if k.startswith("enc") else perm_t)
                                       .reshape(perm_in.shape[:1] + (-1,) + (1,) * (v.ndim - 2)),
                                       axis=1) if v.ndim >= 2 else v)
                for k, v in batch.items()}
    out2, metrics2 = run(model, shuffled)
    for k, v in metrics.items():
        np.testing.assert_allclose(metrics2[k], v, rtol=2e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(np.take_along_axis(out["dec_out"], perm_t[..., None], 1),
                               out2["dec_out"], atol=2e-5)


def test_decoder_attention_rules(model, batch):
    """Causal inside a sequence, bidirectional inside an image, nothing across modalities."""
    b = {k: v.copy() for k, v in batch.items()}
    e = 0
    cap = np.flatnonzero(b["dec_valid"][e] & (b["dec_mod"][e] == 2))
    rgb = np.flatnonzero(b["dec_valid"][e] & (b["dec_mod"][e] == 0))
    assert len(cap) >= 3 and len(rgb) >= 2
    out, _ = run(model, b)
    last = cap[np.argmax(b["dec_seq_index"][e, cap])]
    b2 = {k: v.copy() for k, v in b.items()}
    b2["dec_ids_in"][e, last] = (b2["dec_ids_in"][e, last] + 1) % 41   # a later caption token
    b2["dec_pos"][e, rgb[0]] = (b2["dec_pos"][e, rgb[0]] + 1) % 16    # move one rgb target
    out2, _ = run(model, b2)
    earlier = [c for c in cap if c != last]
    changed = lambda idx: np.abs(out2["dec_out"][e, idx] - out["dec_out"][e, idx]).max()
    assert changed(earlier) < 1e-6                     # causal: earlier rows cannot see it
    assert changed([last]) > 1e-4
    assert changed(rgb[1:]) > 1e-4                     # image rows see each other
    others = np.flatnonzero(b["dec_valid"][e] & ~np.isin(b["dec_mod"][e], [0, 2]))
    assert changed(others) < 1e-6                      # no attention across modalities
    assert np.abs(out2["dec_out"][1:] - out["dec_out"][1:]).max() < 1e-6   # other examples


def variant(model, **changes):
    """The same parameters under another config (no new initialisation to compile)."""
    config = model.config.replace(**changes)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: FourM(config, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, nnx.state(model))


@nnx.jit
def _losses_and_grads(model, batch):
    def total(m):
        _, metrics = m.loss(batch, "mod")
        losses = {t: metrics[f"loss_{t}"] for t in ("mod", "token", "token_mean")}
        # One gradient exercises the three losses (different weights, so none cancels).
        return losses["mod"] + 2.0 * losses["token"] + 3.0 * losses["token_mean"], losses
    (_, losses), grads = nnx.value_and_grad(total, has_aux=True)(model)
    return losses, nnx.to_pure_dict(grads)


def _grads(model, batch):
    return jax.device_get(_losses_and_grads(model, {k: jnp.asarray(v) for k, v in batch.items()}))


def _max_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


@pytest.fixture(scope="module")
def reference_grads(model, batch):
    return _grads(model, batch)


def test_chunked_logits_equal_full_vocabulary(model, batch, reference_grads):
    losses, grads = reference_grads
    assert model.config.logits == "chunked"
    for kw in (dict(logits="full"), dict(logits_chunk=8)):
        losses2, grads2 = _grads(variant(model, **kw), batch)
        for t in losses:
            assert abs(losses[t] - losses2[t]) < 1e-5, (kw, t)
        assert _max_diff(grads, grads2) < 1e-5, kw


def test_scan_unrolled_and_remat_agree(model, batch, reference_grads):
    losses, grads = reference_grads
    for kw in (dict(scan_layers=False, remat="dots"), dict(remat="full")):
        losses2, grads2 = _grads(variant(model, **kw), batch)
        assert abs(losses["mod"] - losses2["mod"]) < 1e-5, kw
        assert _max_diff(grads, grads2) < 1e-5, kw


def test_bf16_compute_keeps_fp32_params(model, batch, reference_grads):
    losses, _ = reference_grads
    losses16, grads16 = _grads(variant(model, dtype="bfloat16"), batch)
    assert abs(losses["mod"] - losses16["mod"]) < 2e-2
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(grads16))


def test_shared_and_tied_options_change_parameters():
    abstract = lambda cfg: nnx.eval_shape(lambda: FourM(cfg, rngs=nnx.Rngs(0)))
    shared = abstract(tiny())
    split = abstract(tiny(share_modality_embeddings=False, tie_logits=True))
    assert hasattr(shared, "mod_emb") and not hasattr(split, "mod_emb")
    assert split.enc_mod_emb.shape == split.dec_mod_emb.shape == (len(SPECS), 24)
    assert split.dec_embed.to_logits is None
    # Tied: one [V, D] table fewer.
    assert count_params(shared) - count_params(split) == 114 * 24 - len(SPECS) * 24


def test_logits_for_modality(model):
    h = jnp.ones((2, 3, 24))
    assert model.logits_for_modality(h, "depth").shape == (2, 3, 23)
    assert model.logits_for_modality(h, 3).shape == (2, 3, 13)
    with pytest.raises(ValueError, match="'pix'"):
        model.logits_for_modality(h, "pix")


def test_bad_batches_name_the_field(model, batch):
    with pytest.raises(BatchError, match="dec_seq_index"):
        model({k: v for k, v in batch.items() if k != "dec_seq_index"})
    bad = dict(batch, enc_pos=batch["enc_pos"][:, :-1])
    with pytest.raises(BatchError, match="enc_pos"):
        model(bad)
    with pytest.raises(BatchError, match="enc_pixels"):
        model({k: v for k, v in batch.items() if k != "enc_pixels"})
    bad = dict(batch, dec_valid=batch["dec_valid"].astype(np.int32))
    with pytest.raises(BatchError, match="dec_valid"):
        model(bad)
    wrong = {k: v.copy() for k, v in batch.items()}
    wrong["dec_mod"][0, 0], wrong["dec_valid"][0, 0] = 4, True     # pixels are never targets
    with pytest.raises(BatchError, match="'pix' is not a target"):
        validate_batch(wrong, tiny())
    with pytest.raises(ValueError, match="loss_type"):
        model.loss(batch, "tokens")


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("bfloat16", 3e-2)])
def test_linear_custom_vjp_matches_autodiff(dtype, tol):
    from m4.model.layers import linear

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 5, 3, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 4, 7)), jnp.float32)
    ref = lambda x, w: jnp.sum(jnp.sin(jnp.einsum("bnhk,hkd->bnd", x, w)))
    ours = lambda x, w: jnp.sum(jnp.sin(linear(x, w, dtype, contract=2)))
    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=tol)
    for a, b in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, atol=tol * 10, rtol=tol)
    with pytest.raises(ValueError, match="does not end with"):
        linear(x, w.reshape(4, 3, 7), dtype, contract=2)


@pytest.mark.parametrize("shape", [(16, 6), (6, 16), (12, 10), (7, 5), (1, 8), (3, 1)])
def test_canonical_transpose_is_the_transpose(shape):
    from m4.model.layers import _canonical_t

    a = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    np.testing.assert_array_equal(np.asarray(jax.jit(_canonical_t)(a)), a.T)


def _dot_operand_dtypes(compiled_text: str) -> list[tuple[str, ...]]:
    """Operand dtypes of every dot in an optimised HLO module (dots sit in fused computations
    whose parameters are the operands)."""
    import re

    out = []
    for params, body in re.findall(r"^%\S+ \(([^)]*)\) -> \S+ \{\n(.*?)^\}", compiled_text,
                                   re.S | re.M):
        if " dot(" in body:
            out.append(tuple(re.findall(r"(bf16|f32)\[", params)))
    return out


def test_bf16_linear_backward_keeps_bf16_dots():
    """In bfloat16, both gradient dots of a linear layer must take bf16 operands. A transpose
    XLA folds into a dot's dimension numbers makes it upcast that dot to float32 operands (3-4x
    slower on CPUs with bf16 dot instructions; see layers._canonical_t)."""
    from m4.model.layers import linear

    x = jnp.ones((64, 48), jnp.float32)
    w = jnp.ones((48, 96), jnp.float32)
    forward = jax.jit(lambda x, w: linear(x, w, "bfloat16")).lower(x, w).compile().as_text()
    if ("bf16", "bf16") not in _dot_operand_dtypes(forward):
        pytest.skip("XLA runs bf16 dots with float32 operands on this CPU (no bf16 kernels)")
    grads = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(linear(x, w, "bfloat16"))), (0, 1)))
    dots = _dot_operand_dtypes(grads.lower(x, w).compile().as_text())
    assert len(dots) == 3 and all(set(d) == {"bf16"} for d in dots), dots


def _reference_attention(q, k, v, allowed):
    """Plain autodiff attention: what the reference computes."""
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5
    s = jnp.where(allowed[:, None], s, -np.finfo(np.float32).max)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, axis=-1), v)


@pytest.mark.parametrize("dtype, tol", [("float32", 2e-5), ("bfloat16", 3e-2)])
@pytest.mark.parametrize("cross", [False, True])
def test_attention_custom_vjp_matches_autodiff(dtype, tol, cross):
    from m4.model.layers import attend

    rng = np.random.default_rng(1)
    b, nq, nk, h, hd = 2, 5, 7, 3, 4
    q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32)
               for s in ((b, nq, h, hd), (b, nk, h, hd), (b, nk, h, hd)))
    allowed = rng.random((b, 1 if cross else nq, nk)) < 0.6
    allowed[0, 0] = False            # a query row (or, for cross, an example) with no valid key
    allowed = jnp.asarray(allowed)
    ct = jnp.asarray(rng.standard_normal((b, nq, h, hd)), jnp.float32)
    ref = lambda q, k, v: jnp.sum(_reference_attention(q, k, v, allowed) * ct)
    ours = lambda q, k, v: jnp.sum(attend(q, k, v, allowed, dtype) * ct)
    np.testing.assert_allclose(ours(q, k, v), ref(q, k, v), rtol=tol, atol=tol)
    for a, r in zip(jax.grad(ours, (0, 1, 2))(q, k, v), jax.grad(ref, (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(a, r, atol=tol * 10, rtol=tol)


@pytest.mark.parametrize("dtype, tol", [("float32", 2e-5), ("bfloat16", 3e-2)])
def test_gated_mlp_custom_vjp_matches_autodiff(dtype, tol):
    from m4.model.layers import Mlp

    mlp = Mlp(6, 10, kind="swiglu", use_bias=False, dtype=dtype, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 3, 6)), jnp.float32)

    graphdef, params = nnx.split(mlp)

    def ref(x, params):
        p = nnx.merge(graphdef, params)
        return jnp.sum(jnp.sin((jax.nn.silu(x @ p.fc1[...]) * (x @ p.fc3[...])) @ p.fc2[...]))

    def ours(x, params):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(x)))

    np.testing.assert_allclose(ours(x, params), ref(x, params), rtol=tol)
    got, want = jax.grad(ours, (0, 1))(x, params), jax.grad(ref, (0, 1))(x, params)
    for a, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, r, atol=tol * 10, rtol=tol)

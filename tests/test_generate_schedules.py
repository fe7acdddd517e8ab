"""Generation schedules and the sampling primitives (no model): reference numbers, filters,
exact selection."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m4.generate import sampling
from m4.generate.schedules import (
    ScheduleError, Step, TargetSpec, build_schedule, cosine_schedule, guidance_schedule,
    linear_schedule, parse_target, temperature_schedule,
)
from m4.modalities import ModalitySpec

SPECS = (
    ModalitySpec("rgb", "image", vocab_size=37, grid=(3, 5)),
    ModalitySpec("depth", "image", vocab_size=23, grid=(3, 5)),
    ModalitySpec("caption", "sequence", vocab_size=41, length=10, pos_table=12),
    ModalitySpec("pix", "pixels", patch_dim=12, patch_size=2, grid=(3, 5), target=False),
)


# ------------------------------------------------------------------------------ token counts
def test_cosine_schedule_reference_numbers():
    assert cosine_schedule(8, 784).tolist() == [30, 85, 127, 150, 150, 127, 85, 30]
    assert cosine_schedule(8, 196).tolist() == [7, 21, 32, 38, 38, 32, 21, 7]
    for steps, total in [(1, 5), (3, 7), (13, 196), (25, 1024)]:
        counts = cosine_schedule(steps, total)
        assert counts.sum() == total and len(counts) == steps and counts.min() >= 0


def test_linear_schedule_reference_numbers():
    assert linear_schedule(49, 196).tolist() == [4] * 49
    assert linear_schedule(3, 10).tolist() == [4, 3, 3]        # largest first
    assert linear_schedule(10, 4).tolist() == [1, 1, 1, 1]     # empty steps dropped
    assert linear_schedule(1, 196).tolist() == [196]


def test_bad_step_counts_are_refused():
    with pytest.raises(ScheduleError, match="at most one step per token"):
        cosine_schedule(9, 8)
    with pytest.raises(ScheduleError, match="decoding steps"):
        linear_schedule(0, 8)
    with pytest.raises(ScheduleError, match="tokens to decode"):
        cosine_schedule(2, 0)


# ------------------------------------------------------------------------------ temperatures
def test_temperature_schedules():
    tokens = cosine_schedule(8, 196)
    np.testing.assert_allclose(temperature_schedule("constant", 2.5, tokens), [2.5] * 8)
    linear = temperature_schedule("linear", 2.0, tokens)
    # Step i runs at t * (tokens masked before it) / total: first t, then decreasing.
    expected = [2.0] + [2.0 * (196 - c) / 196 for c in np.cumsum(tokens)[:-1]]
    np.testing.assert_allclose(linear, expected)
    onex = temperature_schedule("onex:0.5:0.5", 5.0, linear_schedule(50, 196))
    assert onex[-1] == pytest.approx(0.5) and 4.5 < onex[0] <= 5.0
    assert np.all(np.diff(onex) <= 0)
    with pytest.raises(ScheduleError, match="onex"):
        temperature_schedule("onex:0.5", 1.0, tokens)
    with pytest.raises(ScheduleError, match="temperature schedule"):
        temperature_schedule("cosine", 1.0, tokens)


def test_guidance_schedules():
    tokens = np.asarray([4, 4, 4, 4])
    np.testing.assert_allclose(guidance_schedule("constant", 3.0, tokens), [3.0] * 4)
    np.testing.assert_allclose(guidance_schedule("linear", 3.0, tokens), [1.5, 2.0, 2.5, 3.0])
    with pytest.raises(ScheduleError, match="guidance schedule"):
        guidance_schedule("cosine", 3.0, tokens)


# ------------------------------------------------------------------------------ build/parse
def test_chained_schedule_with_grown_conditioning():
    steps = build_schedule(["rgb"], [TargetSpec("caption"),
                                     TargetSpec("depth", steps=3, cfg_scale=2.0)],
                           SPECS, grow_conditioning=True)
    assert [s.target for s in steps] == ["caption", "depth", "depth", "depth"]
    assert steps[0].scheme == "autoregressive" and steps[0].num_tokens is None
    assert steps[0].temperature == pytest.approx(0.3)
    assert sum(s.num_tokens for s in steps[1:]) == 15
    # caption finished before depth: it joined the conditions guidance removes.
    assert steps[1].guidance == ((("rgb", "caption"), 2.0),) and steps[1].guided
    assert not steps[0].guided


def test_multi_condition_weights_and_errors():
    steps = build_schedule(["rgb", "caption"], [TargetSpec("depth", steps=2,
                                                           cfg_scale=(3.0, 1.5))], SPECS)
    assert steps[0].guidance == ((("rgb",), 3.0), (("caption",), 1.5))
    with pytest.raises(ScheduleError, match="one per condition"):
        build_schedule(["rgb"], [TargetSpec("depth", cfg_scale=(1.0, 2.0))], SPECS)
    with pytest.raises(ScheduleError, match="unknown modality"):
        build_schedule([], ["nope"], SPECS)
    with pytest.raises(ScheduleError, match="cannot predict"):
        build_schedule([], ["pix"], SPECS)
    with pytest.raises(ScheduleError, match="autoregressive"):
        build_schedule([], [TargetSpec("depth", scheme="autoregressive")], SPECS)
    with pytest.raises(ScheduleError, match="image-like"):
        build_schedule([], [TargetSpec("caption", scheme="maskgit")], SPECS)
    with pytest.raises(ScheduleError, match="num_tokens"):
        build_schedule([], [TargetSpec("depth", num_tokens=16)], SPECS)
    with pytest.raises(ScheduleError, match="top_p"):
        build_schedule([], [TargetSpec("depth", top_p=1.5)], SPECS)


def test_parse_target():
    t = parse_target("depth,scheme=roar,steps=4,tokens=linear,temp=0.5,"
                     "temp_schedule=onex:0.5:0.5,cfg=2.0,cfg_schedule=linear,top_k=3,top_p=0.8")
    assert t == TargetSpec("depth", scheme="roar", steps=4, token_schedule="linear",
                           temperature=0.5, temperature_schedule="onex:0.5:0.5", cfg_scale=2.0,
                           cfg_schedule="linear", top_k=3, top_p=0.8)
    assert parse_target("depth,cfg=3/1.5").cfg_scale == (3.0, 1.5)
    assert parse_target("caption") == TargetSpec("caption")
    with pytest.raises(ScheduleError, match="key=value"):
        parse_target("depth,stepz=3")
    with pytest.raises(ScheduleError, match="not a valid int"):
        parse_target("depth,steps=many")


# ------------------------------------------------------------------------------- sampling
def _reference_keep(probs: np.ndarray, top_p: float) -> np.ndarray:
    """The reference's nucleus rule through a full sort."""
    order = np.argsort(-probs, kind="stable")
    before = np.cumsum(probs[order]) - probs[order]
    keep_sorted = before <= top_p
    keep_sorted[0] = True
    keep = np.zeros_like(keep_sorted)
    keep[order] = keep_sorted
    return keep


@pytest.mark.parametrize("vocab", [7, 128, 301])
def test_nucleus_threshold_matches_sorting(vocab):
    rng = np.random.default_rng(vocab)
    probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(31, vocab)) * 3, jnp.float32), -1)
    for top_p in (0.05, 0.3, 0.9):
        threshold = np.asarray(sampling.nucleus_threshold(probs, jnp.float32(top_p)))
        p = np.asarray(probs)
        for row in range(31):
            np.testing.assert_array_equal(p[row] >= threshold[row],
                                          _reference_keep(p[row], top_p))
    for off in (0.0, 1.0):   # top_p 0 (the reference's "off") and 1 keep everything
        assert np.all(np.asarray(sampling.nucleus_threshold(probs, jnp.float32(off))) == 0)


def test_top_k_filter():
    logits = jnp.asarray([[0.0, 3.0, 1.0, 2.0, -1.0]])
    out = np.asarray(sampling.filter_logits(logits, 2, None))
    assert np.isfinite(out).tolist() == [[False, True, False, True, False]]


@pytest.mark.parametrize("vocab", [5, 128, 300])
def test_inverse_cdf_matches_searchsorted(vocab):
    rng = np.random.default_rng(vocab)
    logits = rng.normal(size=(64, vocab)) * 3
    logits[:, ::3] = -np.inf                       # ids of probability 0 are never drawn
    probs = jax.nn.softmax(jnp.asarray(logits, jnp.float32), -1)
    u = jnp.asarray(1.0 - rng.random(64), jnp.float32)
    ids = np.asarray(sampling.inverse_cdf(probs, u))
    p = np.asarray(probs, np.float64)
    expected = [np.searchsorted(np.cumsum(p[i]), float(u[i]) * p[i].sum()) for i in range(64)]
    np.testing.assert_array_equal(ids, np.minimum(expected, vocab - 1))
    assert np.all(ids % 3 != 0)


def test_draws_follow_the_distribution():
    logits = jnp.log(jnp.asarray([0.1, 0.6, 0.3]))
    u = jax.random.uniform(jax.random.key(0), (20000,), minval=1e-7, maxval=1.0)
    ids, conf = sampling.sample(jnp.broadcast_to(logits, (20000, 3)), jnp.float32(1.0), u, 0,
                                None)
    freq = np.bincount(np.asarray(ids), minlength=3) / 20000
    np.testing.assert_allclose(freq, [0.1, 0.6, 0.3], atol=0.015)
    np.testing.assert_allclose(np.asarray(conf), np.asarray([0.1, 0.6, 0.3])[np.asarray(ids)],
                               rtol=1e-5)
    # Tiny temperatures: still exactly the argmax with confidence 1 (no 0 / 0).
    many = jax.random.normal(jax.random.key(1), (4, 9, 23)) * 5
    for t in (1e-9, 1e-6):
        ids, conf = sampling.sample(many, jnp.float32(t), u[:36].reshape(4, 9), 0, None)
        np.testing.assert_array_equal(ids, jnp.argmax(many, -1))
        np.testing.assert_allclose(conf, 1.0)
    # Temperature ~ 0: argmax, with its probability as the confidence.
    ids, conf = sampling.sample(logits[None], jnp.float32(0.0), u[:1], 0, None)
    assert int(ids[0]) == 1 and float(conf[0]) == pytest.approx(0.6)


def test_top_confidence_commits_exactly_k_even_with_ties():
    conf = jnp.asarray([[0.5, 0.5, 0.5, 0.5, 0.9, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2, 0.2]])
    candidate = jnp.asarray([[True, True, True, True, False, True]] * 2)
    for k in range(6):
        chosen = np.asarray(sampling.top_confidence(conf, candidate, k))
        assert chosen.sum(1).tolist() == [min(k, 5)] * 2
        assert not chosen[:, 4].any()                       # never a non-candidate
    chosen = np.asarray(sampling.top_confidence(conf, candidate, 2))
    assert chosen[0].tolist() == [True, True, False, False, False, False]  # ties: lower slot


def test_guidance_combination():
    lu, lc = jnp.asarray([1.0, 2.0]), jnp.asarray([3.0, -1.0])
    stacked = jnp.stack([lu, lc])
    for s in (0.0, 1.0, 2.5):
        coef = jnp.asarray(sampling.guidance_coefficients([s]))
        np.testing.assert_allclose(sampling.combine_guidance(stacked, coef), lu + s * (lc - lu))
    np.testing.assert_array_equal(sampling.combine_guidance(
        stacked, jnp.asarray(sampling.guidance_coefficients([1.0]))), lc)


def test_step_guided_flag():
    assert not Step("d", "maskgit", 3, 1.0).guided
    assert not Step("d", "maskgit", 3, 1.0, ((("rgb",), 1.0),)).guided
    assert Step("d", "maskgit", 3, 1.0, ((("rgb",), 0.0),)).guided


def test_cosine_schedule_with_few_tokens_never_goes_negative():
    # The reference's rounded differences overshoot for 16 tokens in 8 steps ([.., 2, -1]).
    for total in range(8, 80):
        counts = cosine_schedule(8, total)
        assert counts.min() >= 0 and counts.sum() == total, (total, counts)
    assert cosine_schedule(8, 16).tolist() == [1, 1, 3, 3, 3, 3, 1, 1]

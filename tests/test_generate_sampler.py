"""The compiled sampler on tiny random models: decoding bookkeeping, determinism, compilation
reuse, guidance identities, autoregressive stopping and chaining. CPU, seconds per compile."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m4.data.span_masking import SentinelSpec
from m4.generate import sampler as sampler_lib
from m4.generate.sampler import Sampler, _apply_passes, example_keys, merge_generated
from m4.generate.schedules import ScheduleError, Step, TargetSpec, build_schedule
from m4.generate.state import (
    GenerationInputError, ModalityState, continuous, known_tokens, pack_encoder, sequences,
    unknown,
)
from m4.modalities import ModalitySpec
from m4.model import FourM, preset

SENTINELS = SentinelSpec(pad_id=0, eos_id=3, first_sentinel_id=5, num_sentinels=7)  # 5..11
SPECS = (
    ModalitySpec("rgb", "image", vocab_size=37, grid=(3, 5)),
    ModalitySpec("depth", "image", vocab_size=23, grid=(3, 5)),
    ModalitySpec("caption", "sequence", vocab_size=41, length=10, pos_table=12),
    ModalitySpec("pix", "pixels", patch_dim=12, patch_size=2, grid=(3, 5), target=False),
)
RGB, DEPTH, CAPTION, PIX = SPECS
B = 3


def tiny_model(variant="swiglu_nobias", seed=0):
    config = preset("tiny", SPECS, variant, dim=32, num_heads=2, encoder_depth=2,
                    decoder_depth=2)
    return FourM(config, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def samplers(model):
    """Shared per loop form, so tests reuse each other's compilations."""
    return {loop: Sampler(model, SENTINELS, loop=loop) for loop in ("fori", "unrolled")}


def rgb_state(batch=B, seed=0):
    rng = np.random.default_rng(seed)
    return {"rgb": known_tokens(RGB, rng.integers(0, 37, (batch, 15)))}


def depth_schedule(scheme="maskgit", steps=3, temperature=1.0, **kw):
    return build_schedule(["rgb"], [TargetSpec("depth", scheme=scheme, steps=steps,
                                               temperature=temperature,
                                               temperature_schedule="constant", **kw)], SPECS)


# --------------------------------------------------------------------------- bookkeeping
@pytest.mark.parametrize("scheme", ["maskgit", "roar"])
def test_every_position_decoded_exactly_once(samplers, scheme):
    schedule = depth_schedule(scheme)
    counts = [s.num_tokens for s in schedule]
    results = {}
    for loop, sampler in samplers.items():
        out, info = sampler.generate(rgb_state(), schedule, example_keys(0, B))
        order = info["decode_order"]["depth"]
        assert out["depth"].known.all()
        # Each step committed exactly its scheduled count, so no position twice.
        for step, count in enumerate(counts):
            assert ((order == step).sum(axis=1) == count).all(), (loop, step)
        assert (order >= 0).all()
        assert out["depth"].tokens.min() >= 0 and out["depth"].tokens.max() < DEPTH.vocab_size
        results[loop] = (out["depth"].tokens, order)
    # The two loop forms compute the same thing.
    np.testing.assert_array_equal(results["fori"][0], results["unrolled"][0])
    np.testing.assert_array_equal(results["fori"][1], results["unrolled"][1])


def test_partially_known_target_keeps_its_tokens(samplers):
    state = rgb_state()
    given = unknown(DEPTH, B)
    given.tokens[:, [0, 4, 7]] = [[1, 2, 3]] * B
    given.known[:, [0, 4, 7]] = True
    state["depth"] = given
    schedule = build_schedule(["rgb"], [TargetSpec("depth", scheme="roar", steps=3,
                                                   num_tokens=12)], SPECS)
    out, info = samplers["fori"].generate(state, schedule, example_keys(0, B))
    assert out["depth"].known.all()
    np.testing.assert_array_equal(out["depth"].tokens[:, [0, 4, 7]], [[1, 2, 3]] * B)
    order = info["decode_order"]["depth"]
    assert (order[:, [0, 4, 7]] == -1).all() and (np.delete(order, [0, 4, 7], 1) >= 0).all()


# ------------------------------------------------------------------ how the model is called
def test_inference_graph_computes_the_model(model):
    """The loops' model (unrolled layers, one weight array per layer) = the model itself."""
    from m4.model.batch import random_batch

    sampler = Sampler(model, SENTINELS)
    assert all(isinstance(x, tuple) and len(x) == 2 for x, (path, _) in zip(
        sampler.params, jax.tree_util.tree_flatten_with_path(nnx.state(model))[0])
        if path[0].key in ("encoder", "decoder"))
    batch = random_batch(model.config, 2, 20, 12, seed=1)

    @jax.jit
    def forward(params, batch):
        return sampler._model(params)(batch)

    got, want = forward(sampler.params, batch), model(batch)
    assert sampler._model(sampler.params).config.scan_layers is False
    for key in ("enc_out", "dec_out"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5)


def test_rows_per_call():
    assert sampler_lib.CALL_SLOTS == 800
    assert sampler_lib.rows_per_call(8, 385) == 2
    assert sampler_lib.rows_per_call(8, 196) == 4
    assert sampler_lib.rows_per_call(6, 100) == 6
    assert sampler_lib.rows_per_call(3, 900) == 1          # too many slots: one row per call
    assert sampler_lib.rows_per_call(1, 385) == 1


@pytest.mark.parametrize("loop", ["unrolled", "fori"])
def test_grouped_model_calls_give_the_same_tokens(model, monkeypatch, loop):
    """Rows (passes x examples) run in groups through lax.map decode exactly as in one call."""
    schedule = depth_schedule(cfg_scale=2.0)                 # 2 passes: 6 rows of 15+ slots
    keys = example_keys(0, B)
    whole, info = Sampler(model, SENTINELS, loop=loop).generate(rgb_state(), schedule, keys)
    monkeypatch.setattr(sampler_lib, "CALL_SLOTS", 64)      # groups of 2 rows at most
    assert sampler_lib.rows_per_call(2 * B, 30) == 2
    grouped, info2 = Sampler(model, SENTINELS, loop=loop).generate(rgb_state(), schedule, keys)
    np.testing.assert_array_equal(grouped["depth"].tokens, whole["depth"].tokens)
    np.testing.assert_array_equal(info2["decode_order"]["depth"], info["decode_order"]["depth"])


# --------------------------------------------------------------------------- determinism
def test_same_seed_same_tokens_and_batch_independence(samplers):
    sampler = samplers["fori"]
    schedule = depth_schedule()
    first, _ = sampler.generate(rgb_state(), schedule, example_keys(0, B))
    again, _ = sampler.generate(rgb_state(), schedule, example_keys(0, B))
    other, _ = sampler.generate(rgb_state(), schedule, example_keys(1, B))
    np.testing.assert_array_equal(first["depth"].tokens, again["depth"].tokens)
    assert (first["depth"].tokens != other["depth"].tokens).any()
    # Example 1 alone (same seed, same index) decodes the same as inside the batch of 3.
    alone = {"rgb": ModalityState(rgb_state()["rgb"].tokens[1:2], np.ones((1, 15), bool))}
    single, _ = sampler.generate(alone, schedule, example_keys(0, 1, first_index=1))
    np.testing.assert_array_equal(single["depth"].tokens[0], first["depth"].tokens[1])


def test_no_recompilation_for_the_same_shapes(model):
    sampler = Sampler(model, SENTINELS, loop="fori")
    schedule = depth_schedule(cfg_scale=2.0)
    sampler.generate(rgb_state(), schedule, example_keys(0, B))
    traces = dict(sampler.traces)
    # New seed, new inputs, other temperatures and guidance weights: traced values only.
    other = depth_schedule(temperature=0.3, cfg_scale=3.5, cfg_schedule="linear")
    for seed in (1, 2):
        sampler.generate(rgb_state(seed=seed), other, example_keys(seed, B))
    assert dict(sampler.traces) == traces == {"image": 1}
    # A new batch size is a new shape: one more trace (the counter does count).
    sampler.generate(rgb_state(batch=2), other, example_keys(0, 2))
    assert sampler.traces["image"] == 2


# ------------------------------------------------------------------------------- guidance
def test_guidance_scale_identities(samplers):
    """Greedy decoding: scale 0 = no condition at all, weight 1 = the conditional result."""
    sampler = samplers["fori"]
    keys = example_keys(0, B)
    greedy = dict(temperature=0.0)
    conditional, _ = sampler.generate(rgb_state(), depth_schedule(**greedy), keys)
    unconditional, _ = sampler.generate({"depth": unknown(DEPTH, B)},
                                        depth_schedule(**greedy), keys)
    scale0, _ = sampler.generate(rgb_state(), depth_schedule(cfg_scale=0.0, **greedy), keys)
    np.testing.assert_array_equal(scale0["depth"].tokens, unconditional["depth"].tokens)
    # Force the guided path with weight 1 on rgb (a second, absent condition with weight 0):
    # l_u + 1 (l_rgb - l_u) + 0 (l_caption - l_u) = l_rgb.
    steps = [Step(s.target, s.scheme, s.num_tokens, 0.0, ((("rgb",), 1.0), (("caption",), 0.0)))
             for s in depth_schedule()]
    scale1, _ = sampler.generate(rgb_state(), steps, keys)
    np.testing.assert_array_equal(scale1["depth"].tokens, conditional["depth"].tokens)
    assert (conditional["depth"].tokens != unconditional["depth"].tokens).any()
    for out in (conditional, unconditional, scale0, scale1):
        assert out["depth"].known.all()


def test_autoregressive_guidance_scale_zero_is_unconditional(samplers):
    sampler = samplers["fori"]
    keys = example_keys(0, B)
    greedy = dict(temperature=0.0, max_tokens=5)
    state = {"caption": sequences(CAPTION, [[SENTINELS.sentinel(1)]] * B, SENTINELS)}
    _, uncond = sampler.generate(state, build_schedule([], [TargetSpec("caption", **greedy)],
                                                       SPECS), keys)
    _, scale0 = sampler.generate(rgb_state(), build_schedule(
        ["rgb"], [TargetSpec("caption", cfg_scale=0.0, **greedy)], SPECS), keys)
    for a, b in zip(uncond["sequences"]["caption"]["generated"],
                    scale0["sequences"]["caption"]["generated"]):
        np.testing.assert_array_equal(a, b)


def test_dropped_sequence_condition_becomes_s1():
    state = rgb_state()
    state["caption"] = sequences(CAPTION, [[20, 21, 3], [22, 3], [23, 24, 25, 3]], SENTINELS)
    enc = pack_encoder(state, SPECS, ["rgb", "caption"], pixel_dim=12)
    visible = jnp.asarray([[True, True, False, True], [True, True, True, True]])
    passes = jax.tree.map(np.asarray, _apply_passes(enc, visible, jnp.int32(5)))
    caption = enc["enc_mod"][0] == 2
    uncond_ids = passes["enc_ids"][:B][:, caption]
    uncond_valid = passes["enc_valid"][:B][:, caption]
    assert (uncond_ids[:, 0] == 5).all() and uncond_valid[:, 0].all()
    assert not uncond_valid[:, 1:].any()
    np.testing.assert_array_equal(passes["enc_valid"][B:], enc["enc_valid"])
    np.testing.assert_array_equal(passes["enc_ids"][B:], enc["enc_ids"])


# ------------------------------------------------------------------------ autoregressive
def stopping_model(eos_logit: float):
    """A model whose caption logits ignore the input: every id 0 except the closing sentinel
    [S_2] (= 6) at `eos_logit`. The decoder's last norm (gelu variant: with bias) is set to a
    constant vector e, and the logits rows to 0 except eos_logit * e / |e|^2."""
    model = tiny_model("gelu", seed=1)
    e = jnp.linspace(0.5, 1.5, model.config.dim)
    model.decoder_norm.scale[...] = jnp.zeros_like(e)
    model.decoder_norm.bias[...] = e
    start, stop = model.config.vocab.range("caption")
    table = model.dec_embed.to_logits[...]
    rows = jnp.zeros((stop - start, model.config.dim)).at[SENTINELS.sentinel(2)].set(
        eos_logit * e / jnp.sum(e * e))
    model.dec_embed.to_logits[...] = table.at[start:stop].set(rows)
    return model


def test_autoregressive_stops_at_the_closing_sentinel():
    sampler = Sampler(stopping_model(3.3), SENTINELS)   # P(eos) ~ 0.4 per token
    schedule = build_schedule(["rgb"], [TargetSpec("caption", temperature=1.0)], SPECS)
    out, info = sampler.generate(rgb_state(batch=8), schedule, example_keys(0, 8))
    seq = info["sequences"]["caption"]
    lengths = set()
    for gen, merged, complete in zip(seq["generated"], seq["merged"], seq["complete"]):
        assert gen[0] == SENTINELS.sentinel(1) and gen[-1] == SENTINELS.sentinel(2)
        assert (gen[1:-1] != SENTINELS.sentinel(2)).all()       # stops at the first one
        assert complete
        # The input was [S_1]: the text is the span between [S_1] and [S_2].
        np.testing.assert_array_equal(merged, merge_generated([5], gen, SENTINELS)[0])
        lengths.add(len(gen))
    assert len(lengths) > 1                                      # per-example stopping
    # The completed captions are inputs now (known prefix of the state).
    for i, merged in enumerate(seq["merged"]):
        n = min(len(merged), CAPTION.length)
        assert out["caption"].known[i].sum() == n
        np.testing.assert_array_equal(out["caption"].tokens[i, :n], merged[:n])


def test_autoregressive_max_tokens_and_prompt_with_two_sentinels():
    sampler = Sampler(stopping_model(-30.0), SENTINELS)   # never closes
    state = rgb_state(batch=2)
    # "a [S_1] b [S_2]" -> generation must close with [S_3] (= 7).
    state["caption"] = sequences(CAPTION, [[20, 5, 21, 6], [22, 5, 23, 6]], SENTINELS)
    schedule = build_schedule(["rgb"], [TargetSpec("caption", temperature=1.0, max_tokens=4)],
                              SPECS)
    out, info = sampler.generate(state, schedule, example_keys(0, 2))
    seq = info["sequences"]["caption"]
    assert not seq["complete"].any()
    for gen, merged, prompt in zip(seq["generated"], seq["merged"], ([20, 21], [22, 23])):
        assert len(gen) == 5                          # start sentinel + max_tokens
        assert merged[0] == prompt[0] and prompt[1] in merged.tolist()


def test_cached_autoregressive_decoding_is_greedy_decoding(model):
    """At temperature 0 the key/value-cached loop produces the argmax of the full decoder run
    over its own text (the decoder is causal: one teacher-forced call predicts every row), up to
    the closing sentinel, and padding after it."""
    from m4.generate.state import empty_sequence_target, pack_encoder

    sampler = Sampler(model, SENTINELS)
    schedule = build_schedule(["rgb"], [TargetSpec("caption", temperature=0.0, max_tokens=9)],
                              SPECS)
    state = rgb_state()
    _, info = sampler.generate(state, schedule, example_keys(0, B))
    generated = np.stack(info["sequences"]["caption"]["generated"])          # [B, 10]
    m = [s.name for s in SPECS].index("caption")
    rows = generated.shape[1] - 1
    r = np.arange(rows)
    dec = {"dec_mod": np.full((B, rows), m), "dec_targets": np.zeros((B, rows)),
           "dec_pos": np.broadcast_to(np.where(r < CAPTION.length, r, 0), (B, rows)),
           "dec_ids_in": generated[:, :-1], "dec_seq_index": np.broadcast_to(r, (B, rows))}
    batch = {k: jnp.asarray(v, jnp.int32) for k, v in dec.items()}
    batch["dec_valid"] = batch["dec_attn_valid"] = jnp.ones((B, rows), bool)
    state["caption"] = empty_sequence_target(CAPTION, B, SENTINELS)       # the [S_1] prompt
    enc = pack_encoder(state, SPECS, sampler._conditions(state, exclude=None), 16)
    batch.update({k: jnp.asarray(v) for k, v in enc.items()})
    h = model.decode(batch, *model.encode(batch))
    greedy = np.asarray(jnp.argmax(model.logits_for_modality(h, m), -1))      # [B, rows]
    for e in range(B):
        agree = greedy[e] == generated[e, 1:]
        first_miss = rows if agree.all() else int(np.argmin(agree))
        assert first_miss >= 1
        # Past the first disagreement only padding: the text had closed with a sentinel.
        assert (generated[e, 1 + first_miss:] == SENTINELS.pad_id).all(), (greedy[e], generated[e])
        if first_miss < rows:
            assert generated[e, first_miss] in range(5, 12)                  # a sentinel


def test_merge_generated_fills_missing_spans():
    merged, ok = merge_generated(np.asarray([20, 5, 21, 6]), np.asarray([5, 30, 31]), SENTINELS)
    assert merged.tolist() == [20, 30, 31, 21] and not ok
    merged, ok = merge_generated(np.asarray([5]), np.asarray([5, 30, 6]), SENTINELS)
    assert merged.tolist() == [30] and ok


def test_chained_generation_conditions_on_earlier_outputs(samplers):
    """depth -> caption in one chain equals the caption generated from (rgb, that depth)."""
    sampler = samplers["fori"]
    keys = example_keys(0, B)
    schedule = build_schedule(["rgb"], [TargetSpec("depth", steps=4, temperature=0.0),
                                        TargetSpec("caption", temperature=0.0, max_tokens=6)],
                              SPECS)
    chained, info = sampler.generate(rgb_state(), schedule, keys)
    # The generated depth is in the encoder input of the caption step.
    enc = pack_encoder(chained, SPECS, sampler._conditions(chained, exclude=None), 12)
    depth_slots = enc["enc_mod"] == 1
    assert depth_slots.sum() == B * 15 and enc["enc_valid"][depth_slots].all()
    np.testing.assert_array_equal(np.sort(enc["enc_ids"][depth_slots].reshape(B, 15), 1),
                                  np.sort(chained["depth"].tokens, 1))
    # Same caption as a separate run with that depth as an input (run index 1: same keys).
    state = rgb_state()
    state["depth"] = chained["depth"]
    caption_only = [s for s in schedule if s.target == "caption"]
    # Greedy decoding: the keys do not matter, the conditioning does.
    _, info2 = sampler.generate(state, caption_only, keys)
    for a, b in zip(info["sequences"]["caption"]["generated"],
                    info2["sequences"]["caption"]["generated"]):
        np.testing.assert_array_equal(a, b)


def test_pixel_inputs_condition_the_encoder(samplers):
    rng = np.random.default_rng(3)
    state = rgb_state()
    state["pix"] = continuous(PIX, rng.normal(size=(B, 15, 12)).astype(np.float32))
    schedule = depth_schedule(temperature=0.0)
    with_pix, _ = samplers["fori"].generate(state, schedule, example_keys(0, B))
    assert with_pix["depth"].known.all()


# --------------------------------------------------------------------------------- errors
def test_clear_errors(samplers):
    sampler = samplers["fori"]
    with pytest.raises(GenerationInputError, match="typed PRNG keys"):
        sampler.generate(rgb_state(), depth_schedule(), jnp.zeros((B, 2), jnp.uint32))
    state = rgb_state()
    state["depth"] = unknown(DEPTH, B)
    state["depth"].known[0, 0] = True
    with pytest.raises(GenerationInputError, match="same number of unknown positions"):
        sampler.generate(state, depth_schedule(), example_keys(0, B))
    state = rgb_state()
    state["caption"] = sequences(CAPTION, [[20, 3]] * B, SENTINELS)
    schedule = build_schedule(["rgb"], ["caption"], SPECS)
    with pytest.raises(GenerationInputError, match="no sentinel"):
        sampler.generate(state, schedule, example_keys(0, B))
    with pytest.raises(GenerationInputError, match="sentinels"):
        Sampler(tiny_model()).generate(rgb_state(), schedule, example_keys(0, B))
    with pytest.raises(ScheduleError, match="unknown modality"):
        sampler.generate(rgb_state(), [Step("nope", "maskgit", 3, 1.0)], example_keys(0, B))
    with pytest.raises(ScheduleError, match="image-like"):
        sampler.generate(rgb_state(), [Step("caption", "maskgit", 3, 1.0)], example_keys(0, B))
    with pytest.raises(ScheduleError, match="decodes 16 tokens"):
        sampler.generate(rgb_state(), [Step("depth", "maskgit", 16, 1.0)], example_keys(0, B))
    with pytest.raises(ScheduleError, match="cannot drop the target"):
        sampler.generate(rgb_state(), [Step("depth", "maskgit", 15, 1.0,
                                            ((("depth",), 2.0),))], example_keys(0, B))

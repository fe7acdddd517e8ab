"""Masking: Dirichlet budgets (distribution, caps, alpha ~ 0), disjointness, span masking round
trips, static shapes, determinism, fixed masking, bad input, and the reference caption layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import REPO_ROOT, shared_fixture
from m4.config import load_config
from m4.data import span_masking
from m4.data.masking import (FixedMasker, Masker, MaskingError, Mixture, all_inputs_visible,
                             collate, dirichlet_budget, teacher_forcing_rows)
from m4.data.span_masking import SentinelSpec, SpanMaskingError, merge_span_masking
from m4.modalities import ModalitySpec

S = SentinelSpec.reference()
TEXT_LO, TEXT_HI = 300, 1000  # ordinary (non-special) text ids of the reference vocabulary
MIXTURES = str(REPO_ROOT / "experiments" / "mixtures.py")


def image(name, side=4, vocab=64, **kw):
    return ModalitySpec(name=name, kind="image", vocab_size=vocab, grid=(side, side), **kw)


def text(name="caption", length=32, vocab=1000):
    return ModalitySpec(name=name, kind="sequence", vocab_size=vocab, length=length, pos_table=512)


def mixture(entries: dict, weights=None) -> Mixture:
    """entries: name -> (input_alphas, target_alphas[, keep])."""
    mods = {}
    for name, (a_in, a_tgt, *keep) in entries.items():
        mods[name] = {"input_alphas": a_in, "target_alphas": a_tgt}
        if keep:
            mods[name]["keep"] = keep[0]
    return Mixture.from_config({"name": "test", "modalities": mods, "weights": weights})


def random_sample(specs, rng, text_len=(5, 20)):
    sample = {}
    for s in specs:
        if s.kind == "sequence":
            sample[s.name] = rng.integers(TEXT_LO, TEXT_HI, int(rng.integers(*text_len)))
        elif s.kind in ("pixels", "embeddings"):
            sample[s.name] = rng.standard_normal((s.length, s.patch_dim)).astype(np.float32)
        else:
            sample[s.name] = rng.integers(0, s.vocab_size, s.length)
    return sample


def slots(out, m, side):
    """(ids, positions[, ids_in, seq_index]) of modality m's valid slots, in slot order."""
    if side == "enc":
        sel = out["enc_valid"] & (out["enc_mod"] == m)
        return out["enc_ids"][sel], out["enc_pos"][sel]
    sel = out["dec_attn_valid"] & (out["dec_mod"] == m)
    return tuple(out[k][sel] for k in ("dec_targets", "dec_pos", "dec_ids_in", "dec_seq_index"))


# ----------------------------------------------------------------------------------------------
# Budgets: distribution


def test_mean_budgets_match_dirichlet_expectation():
    specs = [image(f"m{i}", side=32) for i in range(4)]  # L = 1024: caps never bind at N = 200
    a_in, a_tgt = np.array([0.5, 1.0, 2.0, 4.0]), np.array([3.0, 1.0, 0.25, 1.0])
    mix = mixture({f"m{i}": ([a_in[i]], [a_tgt[i]]) for i in range(4)})
    masker = Masker(specs, mix, input_tokens=200, target_tokens=150)
    rng = np.random.default_rng(0)
    draws = [masker.sample_budgets(rng) for _ in range(3000)]
    for side, alpha, total in (("input", a_in, 200), ("target", a_tgt, 150)):
        budgets = np.stack([getattr(b, side) for b in draws])  # [D, M]
        assert (budgets.sum(1) == total).all()  # the leftover rule fills the budget exactly
        a0 = alpha.sum()
        expected = total * alpha / a0
        stderr = total * np.sqrt(alpha * (a0 - alpha) / (a0 ** 2 * (a0 + 1))) / np.sqrt(len(draws))
        # The argmax assignment of the < M leftover tokens biases the means by under a token or so.
        np.testing.assert_array_less(np.abs(budgets.mean(0) - expected), 4 * stderr + 1.5)


def test_component_weights_and_per_component_alphas():
    specs = [image("a", side=16), image("b", side=16)]
    mix = mixture({"a": ([1000.0, 0.0], [0.0, 1.0]), "b": ([0.0, 1000.0], [1.0, 0.0])},
                  weights=[1.0, 3.0])
    masker = Masker(specs, mix, input_tokens=64, target_tokens=32)
    rng = np.random.default_rng(1)
    draws = [masker.sample_budgets(rng) for _ in range(4000)]
    share = np.mean([b.component == 1 for b in draws])
    assert abs(share - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 4000)
    for b in draws:
        src = 0 if b.component == 0 else 1
        assert b.input[src] == 64 and b.input[1 - src] == 0
        assert b.target[src] == 0 and b.target[1 - src] == 32


def test_alpha_zero_modality_stays_empty():
    specs = [image("a"), image("b"), image("c")]
    mix = mixture({"a": ([0.0], [0.5]), "b": ([0.5], [0.0]), "c": ([0.5], [0.5])})
    masker = Masker(specs, mix, input_tokens=12, target_tokens=12)
    rng = np.random.default_rng(2)
    for _ in range(1000):
        out, budgets = masker.mask(random_sample(specs, rng), rng)
        assert budgets.input[0] == 0 and budgets.target[1] == 0
        assert not (out["enc_valid"] & (out["enc_mod"] == 0)).any()
        assert not (out["dec_valid"] & (out["dec_mod"] == 1)).any()


def test_dirichlet_budget_all_tiny_alphas_gives_one_modality():
    rng = np.random.default_rng(3)
    for _ in range(200):
        budget = dirichlet_budget(rng, np.zeros(5), 37, np.ones(5, bool))
        assert budget.sum() == 37 and np.count_nonzero(budget) == 1


# ----------------------------------------------------------------------------------------------
# Caps, disjointness, packing


def test_caps_disjointness_and_packed_values():
    specs = [image("a", side=4), image("b", side=4), image("c", side=3)]
    mix = mixture({n: ([0.2], [0.2]) for n in ("a", "b", "c")})
    masker = Masker(specs, mix, input_tokens=30, target_tokens=30)
    rng = np.random.default_rng(4)
    for _ in range(300):
        sample = random_sample(specs, rng)
        out, budgets = masker.mask(sample, rng)
        for m, spec in enumerate(specs):
            ids, pos = slots(out, m, "enc")
            targets, tpos, ids_in, _ = slots(out, m, "dec")
            assert len(pos) == budgets.input[m] <= spec.length
            assert len(tpos) == budgets.target[m] <= spec.length - budgets.input[m]
            assert not set(pos.tolist()) & set(tpos.tolist())
            np.testing.assert_array_equal(ids, sample[spec.name][pos])
            np.testing.assert_array_equal(targets, sample[spec.name][tpos])
            assert (ids_in == 0).all()
        assert out["enc_valid"].sum() <= 30 and out["dec_valid"].sum() <= 30
        np.testing.assert_array_equal(out["dec_valid"], out["dec_attn_valid"])


def test_clamped_tokens_are_not_redistributed():
    specs = [image("rgb", side=4), image("depth", side=4)]  # 16 positions each
    mix = mixture({"rgb": ([1000.0], [0.0]), "depth": ([0.0], [1.0])})
    masker = Masker(specs, mix, input_tokens=40, target_tokens=8)
    rng = np.random.default_rng(5)
    out, budgets = masker.mask(random_sample(specs, rng), rng)
    assert budgets.input.tolist() == [16, 0]  # 24 input tokens lost to the cap, as the reference
    assert out["enc_valid"].sum() == 16 and out["enc_valid"].shape == (40,)


def test_absent_modality_gets_nothing_and_its_share_moves():
    specs = [image("a", side=8), image("b", side=8), text()]
    mix = mixture({"a": ([1.0], [1.0]), "b": ([1.0], [1.0]), "caption": ([1.0], [1.0])})
    masker = Masker(specs, mix, input_tokens=20, target_tokens=20, sentinels=S)
    rng = np.random.default_rng(6)
    for _ in range(200):
        sample = random_sample(specs, rng)
        del sample["b"]
        sample["caption"] = None  # None counts as absent too
        out, budgets = masker.mask(sample, rng)
        assert budgets.input.tolist() == [20, 0, 0] and budgets.target.tolist() == [20, 0, 0]
        assert set(out["enc_mod"][out["enc_valid"]].tolist()) == {0}


def test_shapes_are_static_and_collate_stacks():
    poses = ModalitySpec(name="poses", kind="vectors", vocab_size=32, length=6)
    specs = [image("rgb"), text(length=24), poses]
    mix = mixture({s.name: ([0.5], [0.5]) for s in specs})
    masker = Masker(specs, mix, input_tokens=(10, 20), target_tokens=16, sentinels=S)
    rng = np.random.default_rng(7)
    batch = masker.mask_batch([random_sample(specs, rng, text_len=(1, 40)) for _ in range(6)], rng)
    expected = {k: (6, 20) for k in ("enc_ids", "enc_mod", "enc_pos", "enc_valid")}
    expected |= {k: (6, 16) for k in ("dec_mod", "dec_pos", "dec_ids_in", "dec_targets",
                                      "dec_valid", "dec_attn_valid", "dec_seq_index")}
    assert {k: v.shape for k, v in batch.items()} == expected
    for key, value in batch.items():
        assert value.dtype == (bool if key.endswith("valid") else np.int32), key
    # Padding slots hold zeros.
    assert (batch["enc_ids"][~batch["enc_valid"]] == 0).all()
    with pytest.raises(MaskingError, match="shape"):
        collate([{"x": np.zeros(3)}, {"x": np.zeros(4)}])


def test_determinism_for_a_seeded_generator():
    specs = [image("rgb"), image("depth"), text()]
    mix = mixture({s.name: ([0.5, 1.0], [0.5, 1.0]) for s in specs})
    masker = Masker(specs, mix, input_tokens=16, target_tokens=16, sentinels=S)
    samples = [random_sample(specs, np.random.default_rng(i)) for i in range(8)]
    a = masker.mask_batch(samples, np.random.default_rng(42))
    b = masker.mask_batch(samples, np.random.default_rng(42))
    c = masker.mask_batch(samples, np.random.default_rng(43))
    rng = np.random.default_rng(42)
    one_by_one = collate([masker(sample, rng) for sample in samples])
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a[key], one_by_one[key])  # mask_batch == collate(masks)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# Span masking


def test_span_mask_structure_and_exact_reconstruction():
    rng = np.random.default_rng(8)
    for _ in range(500):
        ids = rng.integers(TEXT_LO, TEXT_HI, int(rng.integers(1, 40)))
        keep_prob = float(rng.choice([0.0, 1.0, rng.random()]))
        inputs, target = span_masking.span_mask(ids, keep_prob, S, rng)
        runs = int(S.is_sentinel(inputs).sum())
        np.testing.assert_array_equal(inputs[S.is_sentinel(inputs)],
                                      S.sentinel(np.arange(1, runs + 1)))
        np.testing.assert_array_equal(target[S.is_sentinel(target)],
                                      S.sentinel(np.arange(1, runs + 2)))
        assert target[0] == S.sentinel(1) and target[-1] == S.sentinel(runs + 1)
        adjacent = S.is_sentinel(inputs[1:]) & S.is_sentinel(inputs[:-1])
        assert not adjacent.any()  # a dropped run is one sentinel
        np.testing.assert_array_equal(merge_span_masking(inputs, target, S), ids)


def test_mask_sequence_budgets_and_keep_schemes():
    rng = np.random.default_rng(9)
    seq = span_masking.prepare_sequence(rng.integers(TEXT_LO, TEXT_HI, 30), 64, S)  # 31 with EOS
    for _ in range(100):
        inputs, target = span_masking.mask_sequence(seq, 7, 100, "all", S, rng)
        assert 1 <= len(inputs) <= 7  # p shrank from 1 by 0.9 until the input fits
        np.testing.assert_array_equal(merge_span_masking(inputs, target, S), seq)
    full, _ = span_masking.mask_sequence(seq, 31, 100, "all", S, rng)
    np.testing.assert_array_equal(full, seq)  # it fits: everything visible
    inputs, target = span_masking.mask_sequence(seq, 0, 100, "random", S, rng)
    assert len(inputs) == 0
    np.testing.assert_array_equal(target, np.r_[S.sentinel(1), seq, S.sentinel(2)])
    for _ in range(50):  # binary: p is 0 or 1
        inputs, _ = span_masking.mask_sequence(seq, 64, 100, "binary", S, rng)
        assert inputs.tolist() in (seq.tolist(), [S.sentinel(1)])
    with pytest.raises(SpanMaskingError, match="keep scheme"):
        span_masking.mask_sequence(seq, 5, 5, "sometimes", S, rng)


def test_target_truncation_follows_the_reference_rule():
    seq = np.arange(TEXT_LO, TEXT_LO + 40)
    for seed in range(300):
        rng = np.random.default_rng(seed)
        _, full = span_masking.span_mask(seq, 0.5, S, rng)
        budget = int(rng.integers(0, len(full) + 3))
        mirror = np.random.default_rng([seed, 1])
        got = span_masking.truncate_target(full, budget, S, np.random.default_rng([seed, 1]))
        if len(full) <= budget:
            np.testing.assert_array_equal(got, full)
            continue
        starts = np.flatnonzero(S.is_sentinel(full))
        chosen = starts[mirror.integers(max(1, len(starts) - 1))]
        if len(full) - chosen >= budget:
            np.testing.assert_array_equal(got, full[chosen:chosen + budget])
        else:  # the earliest sentinel whose suffix fits
            start = next(i for i in starts if len(full) - i <= budget)
            np.testing.assert_array_equal(got, full[start:])
        assert len(got) <= budget and (len(got) == 0 or S.is_sentinel(got[0]))


def test_packed_sequence_rebuilds_the_original_text():
    spec = text(length=40)
    masker = Masker([spec], mixture({"caption": ([1.0], [1.0])}), input_tokens=40, target_tokens=40,
                    sentinels=S)
    rng = np.random.default_rng(10)
    checked = 0
    for _ in range(300):
        words = rng.integers(TEXT_LO, TEXT_HI, int(rng.integers(1, 25)))
        out, budgets = masker.mask({"caption": words}, rng)
        inputs, enc_pos = slots(out, 0, "enc")
        targets, dec_pos, ids_in, seq_index = slots(out, 0, "dec")
        np.testing.assert_array_equal(enc_pos, np.arange(len(inputs)))  # visible-token positions
        np.testing.assert_array_equal(seq_index, np.arange(len(targets)))
        np.testing.assert_array_equal(dec_pos, seq_index)  # < length here
        np.testing.assert_array_equal(ids_in[1:], targets[:-1])  # teacher forcing
        assert len(inputs) <= budgets.input[0]
        target = np.r_[ids_in[:1], targets]
        if len(targets) and len(target) < budgets.target[0]:  # not truncated
            merged = merge_span_masking(inputs, target, S)
            np.testing.assert_array_equal(merged, np.r_[words, S.eos_id])
            checked += 1
    assert checked > 100


def test_sequence_truncation_is_the_documented_rule_only():
    spec = text(length=8)
    fixed = FixedMasker([spec, image("rgb")], ["caption"], ["rgb"], sentinels=S)
    for n, expected in ((5, lambda w: np.r_[w, S.eos_id]), (7, lambda w: np.r_[w, S.eos_id]),
                        (8, lambda w: w), (12, lambda w: w[:8])):
        words = np.arange(TEXT_LO, TEXT_LO + n)
        ids, _ = slots(fixed({"caption": words}), 0, "enc")
        np.testing.assert_array_equal(ids, expected(words))


# ----------------------------------------------------------------------------------------------
# Continuous inputs


def test_pixels_are_inputs_only_and_carry_their_patches():
    pixels = ModalitySpec(name="rgb@224", kind="pixels", grid=(3, 3), patch_dim=6, target=False)
    specs = [pixels, image("tok_depth", side=3)]
    mix = mixture({"rgb@224": ([1.0], [0.0]), "tok_depth": ([1.0], [1.0])})
    masker = Masker(specs, mix, input_tokens=8, target_tokens=8)
    rng = np.random.default_rng(11)
    for _ in range(50):
        sample = random_sample(specs, rng)
        out = masker(sample, rng)
        sel = out["enc_valid"] & (out["enc_mod"] == 0)
        patches = sample["rgb@224"][out["enc_pos"][sel]]
        np.testing.assert_array_equal(out["enc_pixels"][sel], patches)
        assert not (out["enc_pixels"][~sel] != 0).any()
        assert not (out["dec_attn_valid"] & (out["dec_mod"] == 0)).any()


def test_embeddings_are_span_masked_with_zero_sentinels():
    spec = ModalitySpec(name="t5_caption", kind="embeddings", length=10, patch_dim=3, target=False)
    masker = Masker([spec], mixture({"t5_caption": ([1.0], [0.0])}), input_tokens=6,
                    target_tokens=4)
    rng = np.random.default_rng(12)
    for _ in range(100):
        vectors = rng.standard_normal((int(rng.integers(1, 14)), 3)).astype(np.float32) + 5.0
        out = masker({"t5_caption": vectors}, rng)
        got = out["enc_pixels"][out["enc_valid"]]
        assert len(got) <= 6
        np.testing.assert_array_equal(out["enc_pos"][out["enc_valid"]], np.arange(len(got)))
        is_sentinel = (got == 0).all(1)
        assert not (is_sentinel[1:] & is_sentinel[:-1]).any()
        kept = got[~is_sentinel]  # kept vectors, in order, from the first 10 (truncation)
        rows = [int(np.flatnonzero((vectors[:10] == v).all(1))[0]) for v in kept]
        assert rows == sorted(rows)


# ----------------------------------------------------------------------------------------------
# Fixed masking and generation


def test_fixed_masker_full_inputs_and_targets():
    specs = [image("rgb"), image("depth"), text(length=16)]
    rng = np.random.default_rng(13)
    sample = random_sample(specs, rng)
    words = sample["caption"][:10]
    sample["caption"] = words
    out = FixedMasker(specs, ["rgb"], ["depth", "caption"], sentinels=S)(sample)
    assert out["enc_ids"].shape == (16,) and out["dec_mod"].shape == (16 + 17,)
    ids, pos = slots(out, 0, "enc")
    np.testing.assert_array_equal(pos, np.arange(16))
    np.testing.assert_array_equal(ids, sample["rgb"])
    targets, _, _, _ = slots(out, 1, "dec")
    np.testing.assert_array_equal(targets, sample["depth"])
    targets, _, ids_in, _ = slots(out, 2, "dec")
    np.testing.assert_array_equal(np.r_[ids_in[:1], targets],
                                  np.r_[S.sentinel(1), words, S.eos_id, S.sentinel(2)])
    assert out["dec_valid"].sum() == 16 + len(words) + 2
    # Decoder positions count target tokens; rows at or past the max length (16) use row 0.
    long_words = np.arange(TEXT_LO, TEXT_LO + 16)
    out = FixedMasker(specs, ["rgb"], ["caption"], sentinels=S)({"caption": long_words})
    _, dec_pos, _, seq_index = slots(out, 2, "dec")
    np.testing.assert_array_equal(seq_index, np.arange(17))
    np.testing.assert_array_equal(dec_pos, np.r_[np.arange(16), 0])
    with pytest.raises(MaskingError, match="both input and target"):
        FixedMasker(specs, ["rgb", "depth"], ["depth"], sentinels=S)
    with pytest.raises(MaskingError, match="unknown modality 'dept'"):
        FixedMasker(specs, ["rgb"], ["dept"], sentinels=S)


def test_all_inputs_visible_queries_absent_targets():
    specs = [image("rgb"), image("depth"), text(length=16)]
    rng = np.random.default_rng(14)
    sample = random_sample(specs, rng)
    del sample["depth"]
    out = all_inputs_visible(specs, sample, ["depth"], sentinels=S)
    assert out["enc_valid"].shape == (16 + 16,)  # static: every possible input at full length
    assert out["enc_valid"].sum() == 16 + len(sample["caption"]) + 1
    query = out["dec_mod"] == 1
    assert query.sum() == 16 and out["dec_attn_valid"][query].all() and not out["dec_valid"].any()
    out = all_inputs_visible(specs, {"rgb": sample["rgb"]}, ["caption"], sentinels=S)
    start = out["dec_attn_valid"] & (out["dec_mod"] == 2)
    assert out["dec_ids_in"][start].tolist() == [S.sentinel(1)] and not out["dec_valid"].any()


# ----------------------------------------------------------------------------------------------
# Bad input


@pytest.fixture
def small_masker():
    specs = [image("rgb", vocab=10), text(length=8)]
    return Masker(specs, mixture({"rgb": ([1.0], [1.0]), "caption": ([1.0], [1.0])}),
                  input_tokens=8, target_tokens=8, sentinels=S)


@pytest.mark.parametrize("sample, message", [
    ({"rgbx": np.zeros(16, int)}, "unknown modality 'rgbx'"),
    ({"rgb": np.full(16, 10)}, r"token id 10 outside the vocabulary \[0, 10\)"),
    ({"rgb": np.full(16, -1)}, "token id -1 outside"),
    ({"rgb": np.zeros(16, np.float32)}, "expected integer token ids, got dtype float32"),
    ({"rgb": np.zeros(16, bool)}, "expected integer token ids, got dtype bool"),
    ({"rgb": np.zeros(17, int)}, r"expected shape \(16,\) or \(4, 4\), got \(17,\)"),
    ({"caption": np.array([400, S.sentinel(1)])}, "special id 5 at position 1"),
    ({"caption": np.array([400, S.eos_id])}, "the masker appends EOS"),
    ({"caption": np.zeros((2, 2), int)}, "1-D sequence"),
])
def test_bad_samples_raise_clear_errors(small_masker, sample, message):
    with pytest.raises(MaskingError, match=message):
        small_masker(sample, np.random.default_rng(0))


def test_metadata_keys_are_ignored_and_non_mappings_rejected(small_masker):
    small_masker({"rgb": np.zeros(16, int), "id": "scene-3", "crop": 2}, np.random.default_rng(0))
    with pytest.raises(MaskingError, match="expected a mapping"):
        small_masker([np.zeros(16, int)], np.random.default_rng(0))


def test_bad_configs_raise_clear_errors():
    specs = [image("rgb"), text()]
    with pytest.raises(MaskingError, match=r"names modalities the specs do not have: \['det'\]"):
        Masker(specs, mixture({"rgb": ([1.0], [1.0]), "det": ([1.0], [1.0])}), input_tokens=4,
               target_tokens=4, sentinels=S)
    with pytest.raises(MaskingError, match="keep scheme"):
        mixture({"caption": ([1.0], [1.0], ["sometimes"])})
    with pytest.raises(MaskingError, match="different lengths"):
        mixture({"rgb": ([1.0, 2.0], [1.0]), "caption": ([1.0], [1.0])})
    with pytest.raises(MaskingError, match="weights"):
        mixture({"rgb": ([1.0], [1.0])}, weights=[1.0, 1.0])
    with pytest.raises(MaskingError, match="pass sentinels"):
        Masker(specs, mixture({"rgb": ([1.0], [1.0])}), input_tokens=4, target_tokens=4)
    with pytest.raises(MaskingError, match="vocab_size 100 does not hold the special ids"):
        Masker([text(vocab=100)], mixture({"caption": ([1.0], [1.0])}), input_tokens=4,
               target_tokens=4, sentinels=S)
    with pytest.raises(MaskingError, match="input_tokens"):
        Masker(specs, mixture({"rgb": ([1.0], [1.0])}), input_tokens=(9, 3), target_tokens=4,
               sentinels=S)
    with pytest.raises(SpanMaskingError, match="eos_id=6 lies inside the sentinel ids"):
        SentinelSpec(pad_id=0, eos_id=6, first_sentinel_id=5, num_sentinels=10)
    with pytest.raises(SpanMaskingError, match="need 6 sentinels"):
        Masker([text(length=10)], mixture({"caption": ([1.0], [1.0])}), input_tokens=4,
               target_tokens=4,
               sentinels=SentinelSpec(pad_id=0, eos_id=1, first_sentinel_id=2, num_sentinels=5))


# ----------------------------------------------------------------------------------------------
# Reference mixtures and the reference caption layout


def reference_4m7_specs():
    tok = {"tok_rgb@224": 16384, "tok_depth@224": 8192, "tok_semseg@224": 4096,
           "tok_normal@224": 8192, "tok_clip@224": 8192}
    pixels = ModalitySpec(name="rgb@224", kind="pixels", grid=(14, 14), patch_dim=768, target=False)
    return ([pixels]
            + [image(n, side=14, vocab=v) for n, v in tok.items()]
            + [ModalitySpec(name=n, kind="sequence", vocab_size=30000, length=256, pos_table=512)
               for n in ("caption", "det")])


def test_reference_4m7_mixture_runs_with_the_reference_budgets():
    config = load_config(MIXTURES + ":4m7")
    mix = Mixture.from_config(config)
    assert mix.num_components == 2 and np.allclose(mix.weights, 0.5)
    rgb = mix.modalities.index("rgb@224")
    np.testing.assert_array_equal(mix.input_alphas[:, rgb], [1000.0, 0.5])
    masker = Masker.from_config(reference_4m7_specs(), config, sentinels=S)
    assert (masker.input_slots, masker.target_slots) == (128, 128)
    rng = np.random.default_rng(15)
    for _ in range(20):
        sample = random_sample(masker.specs, rng, text_len=(5, 60))
        out, budgets = masker.mask(sample, rng)
        assert out["enc_valid"].sum() <= 128 and out["dec_valid"].sum() <= 128
        assert budgets.target[0] == 0  # RGB pixels are never a target
        if budgets.component == 0:  # rgb2all: the pixels take (almost) the whole input budget
            assert budgets.input[0] >= 120


def test_all_reference_mixture_configs_load():
    weights = {"4m7": 2, "4m7_rgb2dense": 2, "4m7_capbias": 6, "4m21": 7, "demo": 4}
    for name, k in weights.items():
        mix = Mixture.from_config(load_config(f"{MIXTURES}:{name}"))
        assert mix.num_components == k, name
    mix21 = Mixture.from_config(load_config(MIXTURES + ":4m21"))
    np.testing.assert_allclose(mix21.weights, np.array([1, 1, 1, 1, 1, 0.5, 0.5]) / 6)
    assert len(mix21.modalities) == 19  # the entries of the reference YAML
    assert mix21.keep[0][mix21.modalities.index("color_palette")] == "binary"
    dropped = mix21.drop(["t5_caption"])
    assert "t5_caption" not in dropped.modalities and dropped.input_alphas.shape == (7, 18)


def test_fixture_caption_rows_match_the_reference():
    """The reference's caption targets (case2, drawn by its UnifiedMasking) give exactly its
    decoder rows: labels, position-table rows and the teacher-forcing input tokens."""
    root = shared_fixture("ml4m_parity")
    case = json.loads((root / "cases.json").read_text())["cases"][1]
    arrays = np.load(root / case["file"])
    tensor = arrays["inputs/caption/tensor"]  # [B, 514] the reference layout
    for b, ex in enumerate(case["per_example"]["caption"]):
        rows = arrays["decoder/caption/batch_index"] == b
        pos, ids_in, targets, seq_index = teacher_forcing_rows(np.array(ex["target_ids"]), 256)
        np.testing.assert_array_equal(targets, arrays["decoder/caption/label"][rows])
        np.testing.assert_array_equal(pos, arrays["decoder/caption/pos_emb_row"][rows])
        query = arrays["decoder/caption/query_position"][rows]
        np.testing.assert_array_equal(ids_in, tensor[b, query])
        # The encoder reads the input at [0, n_in) with positions 0..n_in-1 (visible tokens).
        np.testing.assert_array_equal(tensor[b, :ex["num_inputs"]], ex["input_ids"])


def test_fixture_captions_merge_back_to_their_text():
    root = shared_fixture("ml4m_parity")
    case = json.loads((root / "cases.json").read_text())["cases"][1]
    for ex in case["per_example"]["caption"]:
        merged = merge_span_masking(np.array(ex["input_ids"]), np.array(ex["target_ids"]), S)
        assert merged[-1] == S.eos_id and not S.is_special(merged[:-1]).any()
        assert len(merged) == len(ex["source_text"].split()) + 1  # one WordPiece per word here


def test_demo_mixture_source_components():
    config = load_config(MIXTURES + ":demo")
    specs = [image(n, side=8) for n in ("rgb", "depth", "normals", "semseg", "features")]
    specs += [text(length=48), ModalitySpec(name="poses", kind="vectors", vocab_size=64, length=8),
              ModalitySpec(name="rgb_pixels", kind="pixels", grid=(8, 8), patch_dim=12,
                           patch_size=2, source="rgb", target=False)]
    masker = Masker.from_config(specs, config, sentinels=S)
    # rgb -> all weighs 1.5 (a third of the samples): the demo is judged on rgb -> X.
    np.testing.assert_allclose(Mixture.from_config(config).weights, np.array([1, 1, 1.5, 1]) / 4.5)
    rng = np.random.default_rng(16)
    seen = set()
    whole_caption, rgb_targets = [], []
    for _ in range(200):
        sample = random_sample(specs, rng, text_len=(5, 30))
        out, budgets = masker.mask(sample, rng)
        seen.add(budgets.component)
        assert budgets.target[7] == 0   # pixels are never a target
        if budgets.component == 2:  # rgb -> all: every pixel patch visible, no rgb token input
            assert budgets.input[7] == 64 and budgets.input[0] == 0
            rgb_targets.append(budgets.target[0])  # rgb tokens (codes of the pixels) a target
            # The caption (target alpha 2) is mostly the whole target: [S_0] text [EOS] [S_1].
            whole_caption.append(budgets.target[5] >= len(sample["caption"]) + 3)
        if budgets.component == 3:  # no rgb in caption -> all
            assert budgets.input[7] == 0 and budgets.input[0] == 0
        if budgets.component == 3:  # caption -> all: the caption whole (keep "all"), no target
            ids, _ = slots(out, 5, "enc")
            np.testing.assert_array_equal(ids, np.r_[sample["caption"], S.eos_id])
            assert budgets.target[5] == 0
    assert seen == {0, 1, 2, 3}
    # P(whole caption) for these lengths: ~0.8 at alpha 2, ~0.3 at the others' alpha 0.5.
    assert np.mean(whole_caption) > 0.6, np.mean(whole_caption)
    assert np.mean(np.asarray(rgb_targets) > 0) > 0.5, rgb_targets


def test_batches_pass_the_model_batch_validation():
    """What the model reads (m4.model.batch.validate_batch) accepts every masker's output."""
    from m4.model.batch import validate_batch
    from m4.model.configs import FourMConfig

    specs = (ModalitySpec(name="rgb@224", kind="pixels", grid=(3, 3), patch_dim=6, target=False),
             image("depth", side=3), text(length=12),
             ModalitySpec(name="poses", kind="vectors", vocab_size=32, length=5),
             ModalitySpec(name="t5", kind="embeddings", length=7, patch_dim=4, target=False))
    config = FourMConfig(modalities=specs, dim=16, encoder_depth=1, decoder_depth=1, num_heads=2)
    mix = mixture({s.name: ([0.5, 1.0], [0.0 if s.kind in ("pixels", "embeddings") else 0.5] * 2)
                   for s in specs})
    masker = Masker(specs, mix, input_tokens=(8, 16), target_tokens=12, sentinels=S)
    rng = np.random.default_rng(17)
    samples = [random_sample(specs, rng, text_len=(1, 20)) for _ in range(16)]
    validate_batch(masker.mask_batch(samples, rng), config)
    fixed = FixedMasker(specs, ["rgb@224", "t5"], ["depth", "caption", "poses"], sentinels=S)
    validate_batch(fixed.mask_batch(samples), config)
    validate_batch(collate([all_inputs_visible(specs, {"caption": s["caption"]}, ["depth"],
                                               sentinels=S) for s in samples]), config)


def test_masker_is_a_grain_random_map():
    """Per-element randomness from grain: the same element gives the same mask on re-reading,
    which is what makes a resumed pipeline bit-identical."""
    import grain

    specs = [image("rgb"), text()]
    masker = Masker(specs, mixture({"rgb": ([1.0], [1.0]), "caption": ([1.0], [1.0])}),
                    input_tokens=8, target_tokens=8, sentinels=S)
    rng = np.random.default_rng(18)
    records = [{**random_sample(specs, rng), "id": i, "crop": 0} for i in range(8)]
    ds = grain.MapDataset.source(records).random_map(masker, seed=5).batch(4, batch_fn=collate)
    first, again = ds[1], ds[1]
    assert first["enc_ids"].shape == (4, 8)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])

"""Conversion of reference (apple/ml-4m) checkpoints: synthetic checkpoints of every modality
kind checked against an independent NumPy (float64) implementation of the reference forward
pass, the conversion options, and clear errors for broken files."""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from m4.convert import cli, ml4m
from m4.convert.ml4m_modalities import REFERENCE_MODALITIES
from m4.convert.ml4m_synthetic import write_reference_checkpoint

ALL_21 = ["caption", "t5_caption", "det", "metadata", "human_poses", "color_palette",
          "sam_instance", "rgb@224", "tok_rgb@224", "tok_normal@224", "tok_depth@224",
          "tok_semseg@224", "tok_clip@224", "tok_dinov2@224", "tok_dinov2_global",
          "tok_imagebind@224", "tok_imagebind_global", "tok_sam_edge@224", "tok_canny_edge@224"]
SR = ["rgb@448", "tok_rgb@448", "tok_depth@448", "tok_normal@448", "tok_semseg@448",
      "tok_clip@448"]


def ref_config(domains_in, domains_out, **kw):
    cfg = dict(act_layer="SiLU", decoder_depth=2, dim=16, domains_in=domains_in,
               domains_out=domains_out, encoder_depth=2, gated_mlp=True, image_size=224,
               mlp_bias=False, mlp_ratio=4.0, norm_bias=False, num_heads=2, patch_size=16,
               proj_bias=False, qkv_bias=False)
    cfg.update(kw)
    return cfg


def write(tmp_path, ref, name="model.safetensors", **kw):
    path = tmp_path / name
    write_reference_checkpoint(path, ml4m.model_config(ref, tie_logits=kw.pop("tied", False)),
                               **kw)
    return path


# -- an independent float64 NumPy implementation of the reference forward pass ---------------------

def np_ln(x, sd, key):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * sd[key + ".weight"] + sd.get(key + ".bias", 0.0)


def np_lin(x, sd, key):
    return x @ sd[key + ".weight"].T + sd.get(key + ".bias", 0.0)


def np_attn(q, k, v, allowed, heads):
    n, d = q.shape
    split = lambda t: t.reshape(t.shape[0], heads, d // heads).transpose(1, 0, 2)
    s = split(q) @ split(k).transpose(0, 2, 1) * (d // heads) ** -0.5
    s = np.where(allowed[None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ split(v)).transpose(1, 0, 2).reshape(n, d)


def np_mlp(x, sd, key, gelu):
    if gelu:
        from math import erf
        h = np_lin(x, sd, key + ".fc1")
        h = 0.5 * h * (1 + np.vectorize(erf)(h / np.sqrt(2)))
        return np_lin(h, sd, key + ".fc2")
    a = np_lin(x, sd, key + ".fc1")
    return np_lin(a / (1 + np.exp(-a)) * np_lin(x, sd, key + ".fc3"), sd, key + ".fc2")


def np_reference(sd, ref, mod_dict):
    """Per example: encoder over its visible tokens, decoder over its targets; returns
    ({(m, b, p): encoder output}, {(m, b, query p): logits}, per-modality mean CE, mod loss)."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    d, heads, gelu = ref["dim"], ref["num_heads"], ref["act_layer"] == "GELU"
    enc_dom = [m for m in mod_dict if m in ref["domains_in"]]
    dec_dom = [m for m in mod_dict if m in ref["domains_out"] and REFERENCE_MODALITIES[m].decoder]
    b_size = next(iter(mod_dict.values()))["tensor"].shape[0]
    enc_outs, logits, ce = {}, {}, {m: [] for m in dec_dom}
    for b in range(b_size):
        xs, es, keys = [], [], []
        for m in enc_dom:
            dm, p = mod_dict[m], f"encoder_embeddings.{m}"
            vis = np.flatnonzero(~dm["input_mask"][b])
            kind = REFERENCE_MODALITIES[m].kind
            for rank, pos in enumerate(vis):
                row = rank if kind in ("sequence", "embeddings") else pos
                if kind == "pixels":
                    img = dm["tensor"][b]                               # [3, H, W]
                    gw = img.shape[2] // 16
                    r, c = divmod(pos, gw)
                    patch = img[:, 16 * r:16 * r + 16, 16 * c:16 * c + 16].transpose(1, 2, 0)
                    x = patch.reshape(-1) @ sd[p + ".proj.weight"].T
                elif kind == "embeddings":
                    x = np_lin(dm["tensor"][b, pos], sd, p + ".emb_proj")
                else:
                    x = sd[p + ".token_emb.weight"][dm["tensor"][b].reshape(-1)[pos]]
                xs.append(x)
                es.append(sd[p + ".pos_emb"][0, row] + sd[p + ".mod_emb"][0, 0])
                keys.append((m, b, pos))
        h = np.asarray(xs) + np.asarray(es)
        full = np.ones((len(h), len(h)), bool)
        for i in range(ref["encoder_depth"]):
            k = f"encoder.{i}"
            u = np_ln(h, sd, k + ".norm1")
            q, kk, v = np.split(np_lin(u, sd, k + ".attn.qkv"), 3, axis=-1)
            h = h + np_lin(np_attn(q, kk, v, full, heads), sd, k + ".attn.proj")
            h = h + np_mlp(np_ln(h, sd, k + ".norm2"), sd, k + ".mlp", gelu)
        enc = np_ln(h, sd, "encoder_norm")
        enc_outs.update(zip(keys, enc))
        context = np_lin(enc, sd, "decoder_proj_context") + np.asarray(es)
        ys, rows = [], []   # rows: (modality, query position, target id, is sequence)
        for m in dec_dom:
            dm, p = mod_dict[m], f"decoder_embeddings.{m}"
            tgt = ~dm["target_mask"][b]
            ids = dm["tensor"][b].reshape(-1)
            if REFERENCE_MODALITIES[m].kind == "sequence":
                rank = np.cumsum(tgt) - 1
                for t in range(len(tgt) - 1):
                    if tgt[t] and tgt[t + 1]:
                        j = rank[t] if rank[t] < REFERENCE_MODALITIES[m].max_length else 0
                        ys.append(sd[p + ".token_emb.weight"][ids[t]] + sd[p + ".pos_emb"][0, j]
                                  + sd[p + ".mod_emb"][0, 0])
                        rows.append((m, t, ids[t + 1], True))
            else:
                for pos in np.flatnonzero(tgt):
                    ys.append(sd["mask_token"][0, 0] + sd[p + ".pos_emb"][0, pos]
                              + sd[p + ".mod_emb"][0, 0])
                    rows.append((m, pos, ids[pos], False))
        if not rows:
            continue
        y = np.asarray(ys)
        allowed = np.array([[r[0] == s[0] and (not r[3] or s[1] <= r[1]) for s in rows]
                            for r in rows])
        cross = np.ones((len(y), len(context)), bool)
        for i in range(ref["decoder_depth"]):
            k = f"decoder.{i}"
            u = np_ln(y, sd, k + ".norm1")
            q, kk, v = np.split(np_lin(u, sd, k + ".self_attn.qkv"), 3, axis=-1)
            y = y + np_lin(np_attn(q, kk, v, allowed, heads), sd, k + ".self_attn.proj")
            q = np_lin(np_ln(y, sd, k + ".query_norm"), sd, k + ".cross_attn.q")
            kk, v = np.split(np_lin(np_ln(context, sd, k + ".context_norm"), sd,
                                    k + ".cross_attn.kv"), 2, axis=-1)
            y = y + np_lin(np_attn(q, kk, v, cross, heads), sd, k + ".cross_attn.proj")
            y = y + np_mlp(np_ln(y, sd, k + ".norm2"), sd, k + ".mlp", gelu)
        y = np_ln(y, sd, "decoder_norm")
        for (m, pos, target, _), out in zip(rows, y):
            w = sd.get(f"decoder_embeddings.{m}.to_logits.weight",
                       sd[f"decoder_embeddings.{m}.token_emb.weight"])
            lg = out @ w.T
            logits[(m, b, pos)] = lg
            ce[m].append(np.log(np.exp(lg - lg.max()).sum()) + lg.max() - lg[target])
    per_mod = {m: float(np.mean(v)) if v else 0.0 for m, v in ce.items()}
    return enc_outs, logits, per_mod, float(np.mean(list(per_mod.values())))


def random_mod_dict(ref, rng, b=2):
    """Reference-format inputs: random budgets per modality, disjoint inputs and targets."""
    cfg = ml4m.model_config(ref)
    mods = {}
    for s in cfg.modalities:
        if s.kind == "pixels":
            h = s.grid[0] * s.patch_size
            tensor = rng.standard_normal((b, 3, h, h)).astype(np.float32)
            length = s.length
        elif s.kind == "embeddings":
            length = s.length
            tensor = rng.standard_normal((b, length, s.patch_dim)).astype(np.float32)
        elif s.kind == "sequence":
            length = (s.length + 1) * 2
            tensor = rng.integers(0, s.vocab_size, (b, length)).astype(np.int32)
        else:
            length = s.length
            tensor = rng.integers(0, s.vocab_size, (b, length))
        inp = np.ones((b, length), bool)
        tgt = np.ones((b, length), bool)
        attn = np.zeros((b, length), np.int32)
        for e in range(b):
            if s.kind in ("sequence", "embeddings"):
                n_in = int(rng.integers(0, 6)) if s.input else 0
                inp[e, :n_in] = False
                if s.target:
                    start, n_t = n_in + 2, int(rng.integers(0, 6))
                    tgt[e, start:start + n_t] = False
                    attn[e, start:start + n_t] = 1
            else:
                perm = rng.permutation(length)
                n_in = int(rng.integers(0, 8)) if s.input else 0
                inp[e, perm[:n_in]] = False
                if s.target:
                    n_t = int(rng.integers(0, 6))
                    tgt[e, perm[n_in:n_in + n_t]] = False
                    if n_t:
                        attn[e, perm[n_in:n_in + n_t].min()] = n_t
        mods[s.name] = dict(tensor=tensor, input_mask=inp, target_mask=tgt,
                            decoder_attention_mask=attn)
    return mods


@jax.jit
def _run(state, graphdef, batch):
    m = nnx.merge(graphdef, state)
    out = m(batch)
    return out, m.loss(batch)[1]


def compare_with_numpy(path, ref, seed=0):
    model, config = ml4m.load(path)
    mod_dict = random_mod_dict(ref, np.random.default_rng(seed))
    batch, origin = ml4m.mod_dict_to_batch(mod_dict, config)
    graphdef, state = nnx.split(model)
    out, metrics = jax.device_get(_run(state, graphdef, {k: jnp.asarray(v)
                                                         for k, v in batch.items()}))
    enc_ref, logits_ref, per_mod, loss_mod = np_reference(load_file(str(path)), ref, mod_dict)
    names = config.names
    worst = 0.0
    for (b, n) in zip(*np.nonzero(batch["enc_valid"])):
        key = (names[batch["enc_mod"][b, n]], b, origin.enc_position[b, n])
        worst = max(worst, np.abs(out["enc_out"][b, n] - enc_ref.pop(key)).max())
    assert not enc_ref and worst < 1e-4, worst
    worst = 0.0
    for (b, n) in zip(*np.nonzero(batch["dec_valid"])):
        m = names[batch["dec_mod"][b, n]]
        ours = np.asarray(model.logits_for_modality(jnp.asarray(out["dec_out"][b, n]), m))
        worst = max(worst, np.abs(ours - logits_ref.pop((m, b, origin.dec_position[b, n]))).max())
    assert not logits_ref and worst < 1e-4, worst
    for m, v in per_mod.items():
        assert abs(metrics[f"loss/{m}"] - v) < 1e-4 * max(1, abs(v)), m
    assert abs(metrics["loss_mod"] - loss_mod) < 1e-4
    return model, config


def test_4m21_all_modality_kinds_match_numpy_reference(tmp_path):
    ref = ref_config(ALL_21, [m for m in ALL_21 if m != "rgb@224"],
                     share_modality_embeddings=False)
    path = write(tmp_path, ref)
    model, config = compare_with_numpy(path, ref)
    kinds = {s.name: s.kind for s in config.modalities}
    assert kinds["rgb@224"] == "pixels" and kinds["t5_caption"] == "embeddings"
    assert kinds["tok_dinov2_global"] == "vectors" and kinds["human_poses"] == "sequence"
    spec = config.spec("tok_imagebind_global")
    assert spec.positions == "learned" and spec.length == 16
    assert config.spec("tok_dinov2@224").grid == (16, 16)
    assert config.spec("caption").pos_table == 512 and config.spec("caption").length == 256
    assert not config.spec("t5_caption").target     # listed in domains_out, no decoder adapter
    assert not config.share_modality_embeddings and not config.tie_logits


def test_4m7_shared_tied_without_norm_buffers_and_superres(tmp_path):
    doms = ["rgb@224", "caption", "det", "tok_rgb@224", "tok_depth@224", "tok_normal@224",
            "tok_semseg@224", "tok_clip@224"]
    ref = ref_config(doms + SR, [m for m in doms + SR if not m.startswith("rgb@")])
    path = write(tmp_path, ref, tied=True, norm_bias_buffers=False, with_metadata=False)
    (tmp_path / "config.json").write_text(json.dumps(ref))
    with pytest.raises(ml4m.ConversionError, match="no config in its metadata"):
        ml4m.load(path)
    model, config = ml4m.load(path, tmp_path / "config.json")
    assert config.tie_logits and config.share_modality_embeddings
    assert config.spec("tok_rgb@448").grid == (28, 28) and config.spec("rgb@448").length == 784
    # the NumPy check reads the config from the metadata: write a copy that has it
    sd = load_file(str(path))
    save_file(sd, str(tmp_path / "with_meta.safetensors"),
              metadata={k: str(v) for k, v in ref.items()})
    compare_with_numpy(tmp_path / "with_meta.safetensors", ref, seed=1)


def test_gelu_variant_with_biases(tmp_path):
    doms = ["caption", "tok_rgb@224", "tok_depth@224"]
    ref = ref_config(doms, doms, act_layer="GELU", gated_mlp=False, qkv_bias=True,
                     proj_bias=True, mlp_bias=True, norm_bias=True)
    compare_with_numpy(write(tmp_path, ref), ref, seed=2)


def test_save_and_load_converted(tmp_path):
    doms = ["caption", "tok_rgb@224"]
    path = write(tmp_path, ref_config(doms, doms))
    model, config = ml4m.convert(path, out_dir=tmp_path / "out", progress=False)
    assert json.loads((tmp_path / "out" / "modalities.json").read_text())[0]["name"] == "caption"
    restored, config2 = ml4m.load_converted(tmp_path / "out")
    assert config2 == config
    a, b = nnx.to_pure_dict(nnx.state(model)), nnx.to_pure_dict(nnx.state(restored))
    assert max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b))) == 0


# -- errors -------------------------------------------------------------------------------------

@pytest.fixture
def small_file(tmp_path):
    doms = ["caption", "tok_rgb@224", "tok_depth@224"]
    ref = ref_config(doms, doms[1:])
    path = write(tmp_path, ref)
    return path, load_file(str(path)), ref


def rewrite(path, sd, ref):
    save_file(sd, str(path), metadata={k: str(v) for k, v in ref.items()})
    return path


def test_missing_key(small_file):
    path, sd, ref = small_file
    del sd["decoder.1.cross_attn.kv.weight"]
    with pytest.raises(ml4m.ConversionError, match=r"missing keys.*decoder\.1\.cross_attn\.kv"):
        ml4m.load(rewrite(path, sd, ref))


def test_unexpected_key(small_file):
    path, sd, ref = small_file
    sd["encoder.0.attn.rope.weight"] = np.zeros((2,), np.float32)
    with pytest.raises(ml4m.ConversionError, match=r"unexpected keys.*encoder\.0\.attn\.rope"):
        ml4m.load(rewrite(path, sd, ref))


def test_shape_mismatch(small_file):
    path, sd, ref = small_file
    sd["encoder_embeddings.tok_rgb@224.token_emb.weight"] = np.zeros((8192, 16), np.float32)
    with pytest.raises(ml4m.ConversionError,
                       match=r"tok_rgb@224\.token_emb\.weight: expected \[16384, 16\], "
                             r"got \[8192, 16\]"):
        ml4m.load(rewrite(path, sd, ref))


def test_unknown_modality(small_file):
    path, sd, ref = small_file
    bad = dict(ref, domains_in=ref["domains_in"] + ["tok_lidar@224"])
    with pytest.raises(ml4m.ConversionError, match="tok_lidar@224"):
        ml4m.load(rewrite(path, sd, bad))
    with pytest.raises(ml4m.UnsupportedModality, match="tok_lidar@224"):
        ml4m.reference_spec("tok_lidar@224", is_input=True, is_target=False)


def test_nonzero_norm_bias_buffer_and_unshared_mod_emb(small_file):
    path, sd, ref = small_file
    sd2 = dict(sd, **{"encoder.1.norm2.bias": np.full((16,), 0.5, np.float32)})
    with pytest.raises(ml4m.ConversionError, match=r"encoder\.1\.norm2\.bias: expected all zeros"):
        ml4m.load(rewrite(path, sd2, ref))
    sd3 = dict(sd, **{"decoder_embeddings.tok_rgb@224.mod_emb":
                      sd["decoder_embeddings.tok_rgb@224.mod_emb"] + 1})
    with pytest.raises(ml4m.ConversionError, match="share_modality_embeddings"):
        ml4m.load(rewrite(path, sd3, ref))
    model, config = ml4m.load(path, share_modality_embeddings=False)   # keeps both copies
    assert not config.share_modality_embeddings


def test_unsupported_options_and_bad_inputs(small_file, tmp_path):
    path, sd, ref = small_file
    with pytest.raises(ml4m.ConversionError, match="qk_norm"):
        ml4m.load(path, dict(ref, qk_norm=True))
    with pytest.raises(ml4m.ConversionError, match="file not found"):
        ml4m.load(tmp_path / "nope.safetensors")
    _, config = ml4m.load(path)
    mods = random_mod_dict(ref, np.random.default_rng(0))
    with pytest.raises(ml4m.ConversionError, match="num_encoder_tokens=1"):
        ml4m.mod_dict_to_batch(mods, config, num_encoder_tokens=1)
    with pytest.raises(ml4m.ConversionError, match="tok_clip@224"):
        ml4m.mod_dict_to_batch({**mods, "tok_clip@224": mods["tok_rgb@224"]}, config)
    bad = {k: dict(v) for k, v in mods.items()}
    rgb = bad["tok_rgb@224"]
    rgb["input_mask"], rgb["target_mask"] = rgb["input_mask"].copy(), rgb["target_mask"].copy()
    rgb["input_mask"][:, 100:103], rgb["target_mask"][:, 100:103] = True, False
    rgb["decoder_attention_mask"] = (~rgb["target_mask"]).astype(np.int32)   # causal pattern
    with pytest.raises(ml4m.ConversionError, match="tok_rgb@224.*decoder_attention_mask"):
        ml4m.mod_dict_to_batch(bad, config)


# -- the command --------------------------------------------------------------------------------

def run_cli(*argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.main(parser.parse_args(list(argv)))


def test_cli_convert_and_verify(tmp_path, capsys):
    from conftest import shared_fixture
    fixture = shared_fixture("ml4m_parity")
    rc = run_cli("ml4m", "--checkpoint", str(fixture / "model.safetensors"),
                 "--out", str(tmp_path / "out"), "--verify", str(fixture))
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["passed"]
    assert (tmp_path / "out" / "model_config.json").is_file()
    assert report["cases"]["case1_tok_to_tok"]["decoder/tok_depth@224/logits"] < 1e-4
    # A perturbed weight must fail the check with a non-zero exit status.
    sd = load_file(str(fixture / "model.safetensors"))
    sd["decoder.1.mlp.fc2.weight"] = sd["decoder.1.mlp.fc2.weight"] * 1.01
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad))
    rc = run_cli("ml4m", "--checkpoint", str(bad), "--config", str(fixture / "config.json"),
                 "--verify", str(fixture))
    report = json.loads(capsys.readouterr().out)
    assert rc == 1 and not report["passed"]
    assert any("logits" in f for f in report["failed"])
    assert run_cli("ml4m", "--checkpoint", str(tmp_path / "missing.safetensors"),
                   "--out", str(tmp_path / "x")) == 1

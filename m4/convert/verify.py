"""Run every case of a parity fixture in the ml4m_parity format and compare with the reference.

A fixture folder holds `cases.json` (manifest: cases, modality order, budgets) and one `.npz` per
case with the reference `mod_dict` inputs and outputs indexed by (modality, example, position)
(see the fixture's CASES.md). Quantities compared, as max abs differences:
encoder/<m>/input, encoder/<m>/output, decoder/<m>/input, decoder/<m>/output,
decoder/<m>/logits, loss/mod, loss/token, loss/per_modality/<m> (relative for losses), and the
integer arrays (labels, position rows) exactly.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m4.convert.ml4m_batch import mod_dict_to_batch

# Pass thresholds (float32): the fixture README's recommended tolerances; losses relative.
TOLERANCES = {"input": 1e-5, "output": 1e-4, "logits": 1e-4, "loss_rel": 1e-5}
_FIELDS = ("tensor", "input_mask", "target_mask", "decoder_attention_mask")


def _forward(model, batch):
    @nnx.jit
    def run(model, batch):
        x, e = model.embed_inputs(batch)
        enc_out, enc_emb = model.encode(batch)
        y, ye = model.embed_targets(batch)
        dec_out = model.decode(batch, enc_out, enc_emb)
        return x + e, enc_out, y + ye, dec_out, model.loss(batch, "mod")[1]

    return run(model, {k: jnp.asarray(v) for k, v in batch.items()})


def run_case(model, case_npz, case_meta: dict) -> dict[str, float]:
    """Max abs differences of one case ({quantity: value}); integer mismatches count as inf."""
    cfg = model.config
    data = np.load(case_npz)
    mods = case_meta["modality_order"]
    mod_dict = {m: {f: data[f"inputs/{m}/{f}"] for f in _FIELDS if f"inputs/{m}/{f}" in data}
                for m in mods}
    batch, origin = mod_dict_to_batch(mod_dict, cfg, int(data["num_encoder_tokens"]),
                                      int(data["num_decoder_tokens"]))
    enc_in, enc_out, dec_in, dec_out, losses = jax.device_get(_forward(model, batch))
    diffs: dict[str, float] = {}

    def record(name, value):
        diffs[name] = max(diffs.get(name, 0.0), float(value))

    # -- encoder, by (modality, example, position)
    for m in mods:
        if f"encoder/{m}/input" not in data:
            continue
        ref_in, ref_out = data[f"encoder/{m}/input"], data[f"encoder/{m}/output"]
        here = batch["enc_valid"] & (batch["enc_mod"] == cfg.index(m))
        bi, ni = np.nonzero(here)
        pos = origin.enc_position[bi, ni]
        expected = ~np.isnan(ref_in[..., 0])
        if expected.sum() != len(bi) or not expected[bi, pos].all():
            record(f"encoder/{m}/slots", np.inf)
        record(f"encoder/{m}/input", np.abs(enc_in[bi, ni] - ref_in[bi, pos]).max(initial=0))
        record(f"encoder/{m}/output", np.abs(enc_out[bi, ni] - ref_out[bi, pos]).max(initial=0))
    # -- decoder rows, by (modality, example, query position)
    for m in mods:
        if f"decoder/{m}/logits" not in data:
            continue
        mi = cfg.index(m)
        rows_b, rows_q = data[f"decoder/{m}/batch_index"], data[f"decoder/{m}/query_position"]
        here = batch["dec_valid"] & (batch["dec_mod"] == mi)
        slot = {(b, q): n for b, n in zip(*np.nonzero(here))
                for q in [origin.dec_position[b, n]]}
        if len(slot) != len(rows_b) or any((b, q) not in slot for b, q in zip(rows_b, rows_q)):
            record(f"decoder/{m}/rows", np.inf)
            continue
        if not len(rows_b):
            continue
        nb = np.asarray(rows_b)
        nn_ = np.asarray([slot[(b, q)] for b, q in zip(rows_b, rows_q)])
        record(f"decoder/{m}/input", np.abs(dec_in[nb, nn_] - data[f"decoder/{m}/input"]).max())
        out = dec_out[nb, nn_]
        record(f"decoder/{m}/output", np.abs(out - data[f"decoder/{m}/output"]).max())
        logits = np.asarray(jax.jit(model.logits_for_modality, static_argnums=1)(out, m))
        record(f"decoder/{m}/logits", np.abs(logits - data[f"decoder/{m}/logits"]).max())
        exact = [(batch["dec_targets"][nb, nn_], data[f"decoder/{m}/label"]),
                 (batch["dec_pos"][nb, nn_], data[f"decoder/{m}/pos_emb_row"]),
                 (origin.dec_target_position[nb, nn_], data[f"decoder/{m}/target_position"])]
        record(f"decoder/{m}/integers", 0.0 if all(np.array_equal(a, b) for a, b in exact)
               else np.inf)
    # -- losses (relative)
    def rel(a, b):
        return abs(float(a) - float(b)) / max(abs(float(b)), 1e-12)

    record("loss/mod", rel(losses["loss_mod"], data["loss/mod"]))
    record("loss/token", rel(losses["loss_token"], data["loss/token"]))
    for m in mods:
        key = f"loss/per_modality/{m}"
        if key in data:
            ours = losses.get(f"loss/{m}", 0.0)
            ref = float(data[key])
            record(key, rel(ours, ref) if ref else abs(float(ours)))
    return diffs


def passes(name: str, value: float) -> bool:
    if name.startswith("loss"):
        return value < TOLERANCES["loss_rel"]
    kind = name.rsplit("/", 1)[-1]
    return value < TOLERANCES.get(kind, 0.0) if kind in TOLERANCES else value == 0.0


def verify_fixture(model, fixture_dir) -> dict:
    """{"cases": {case: {quantity: diff}}, "failed": [...], "passed": bool, "tolerances": ...}."""
    fixture = pathlib.Path(fixture_dir)
    manifest_path = fixture / "cases.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{fixture}: no cases.json (not a parity fixture folder)")
    manifest = json.loads(manifest_path.read_text())
    report = {"cases": {}, "failed": [], "tolerances": TOLERANCES}
    for case in manifest["cases"]:
        diffs = run_case(model, fixture / case["file"], case)
        report["cases"][case["name"]] = diffs
        report["failed"] += [f"{case['name']}:{k}" for k, v in diffs.items() if not passes(k, v)]
    report["passed"] = not report["failed"]
    return report

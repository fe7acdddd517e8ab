"""The masked batch the model consumes (BATCH_CONTRACT.md): structure checks and validation.

`check_structure` runs at trace time inside the model (shapes, dtypes, keys: a wrong batch fails
with a message naming the field, not deep inside XLA). `validate_batch` also checks the values
on the host (modality indices, positions, ids) and is meant for data pipelines and tests.
"""

from __future__ import annotations

import numpy as np

ENCODER_KEYS = ("enc_ids", "enc_mod", "enc_pos", "enc_valid")
DECODER_KEYS = ("dec_mod", "dec_pos", "dec_ids_in", "dec_targets", "dec_valid", "dec_attn_valid",
                "dec_seq_index")
BOOL_KEYS = ("enc_valid", "dec_valid", "dec_attn_valid")


class BatchError(ValueError):
    """A batch does not follow BATCH_CONTRACT.md."""


def _kind(dtype) -> str:
    return np.dtype(dtype).kind


def check_structure(batch, config, *, decoder: bool = True) -> tuple[int, int, int]:
    """Keys, ranks, shapes and dtypes. Returns (B, N_in, N_tgt) (N_tgt 0 without decoder)."""
    if not hasattr(batch, "keys"):
        raise BatchError(f"batch: expected a dict of arrays, got {type(batch).__name__}")
    keys = ENCODER_KEYS + (DECODER_KEYS if decoder else ())
    missing = [k for k in keys if k not in batch]
    if missing:
        raise BatchError(f"batch: missing fields {missing} (see BATCH_CONTRACT.md)")
    b, n_in = batch["enc_mod"].shape if batch["enc_mod"].ndim == 2 else (None, None)
    if b is None:
        raise BatchError(f"batch['enc_mod']: expected shape [B, N_in], got "
                         f"{tuple(batch['enc_mod'].shape)}")
    n_tgt = batch["dec_mod"].shape[1] if decoder and batch["dec_mod"].ndim == 2 else 0
    for k in keys:
        want = (b, n_in) if k.startswith("enc_") else (b, n_tgt)
        got = tuple(batch[k].shape)
        if got != want:
            raise BatchError(f"batch[{k!r}]: expected shape {list(want)}, got {list(got)}")
        kind = _kind(batch[k].dtype)
        if k in BOOL_KEYS and kind != "b":
            raise BatchError(f"batch[{k!r}]: expected dtype bool, got {batch[k].dtype}")
        if k not in BOOL_KEYS and kind not in "iu":
            raise BatchError(f"batch[{k!r}]: expected an integer dtype, got {batch[k].dtype}")
    continuous = [s for s in config.modalities if s.input and s.is_continuous]
    if continuous:
        need = max(s.patch_dim for s in continuous)
        if "enc_pixels" not in batch:
            raise BatchError(f"batch: missing 'enc_pixels' (float [B, N_in, {need}]), needed by "
                             f"the continuous input modalities {[s.name for s in continuous]}")
        got = tuple(batch["enc_pixels"].shape)
        if len(got) != 3 or got[:2] != (b, n_in) or got[2] < need:
            raise BatchError(f"batch['enc_pixels']: expected shape [{b}, {n_in}, >= {need}], "
                             f"got {list(got)}")
    if "dec_present" in batch and tuple(batch["dec_present"].shape) != (b, len(config.modalities)):
        raise BatchError(f"batch['dec_present']: expected shape [{b}, {len(config.modalities)}], "
                         f"got {list(batch['dec_present'].shape)}")
    return b, n_in, n_tgt


def validate_batch(batch, config) -> None:
    """Full host-side check of a numpy batch against the config's modality specs."""
    batch = {k: np.asarray(v) for k, v in batch.items()}
    check_structure(batch, config)
    specs = config.modalities
    m_count = len(specs)
    from m4.model.adapters import position_rows   # local import: adapters imports flax

    for side, flag in (("enc", "input"), ("dec", "target")):
        mod = batch[f"{side}_mod"]
        live = batch[f"{side}_valid"] | (batch["dec_attn_valid"] if side == "dec" else False)
        bad = live & ((mod < 0) | (mod >= m_count))
        if bad.any():
            raise BatchError(f"batch['{side}_mod']: modality index out of [0, {m_count}) at "
                             f"{np.argwhere(bad)[0].tolist()}")
        pos = batch[f"{side}_pos"]
        for i, s in enumerate(specs):
            here = live & (mod == i)
            if not here.any():
                continue
            if not getattr(s, flag):
                role = "an input" if side == "enc" else "a target"
                raise BatchError(f"batch['{side}_mod']: modality {s.name!r} is not {role} of "
                                 f"this model")
            limit = position_rows(s)
            p = pos[here]
            if p.min() < 0 or p.max() >= limit:
                raise BatchError(f"batch['{side}_pos']: positions of {s.name!r} must lie in "
                                 f"[0, {limit}), got [{p.min()}, {p.max()}]")
            id_fields = ("enc_ids",) if side == "enc" else ("dec_targets", "dec_ids_in")
            if s.is_token:
                for f in id_fields:
                    if f == "dec_ids_in" and s.kind != "sequence":
                        continue
                    ids = batch[f][here]
                    if ids.min() < 0 or ids.max() >= s.vocab_size:
                        raise BatchError(f"batch[{f!r}]: ids of {s.name!r} must lie in "
                                         f"[0, {s.vocab_size}), got [{ids.min()}, {ids.max()}]")
    if (batch["dec_valid"] & ~batch["dec_attn_valid"]).any():
        raise BatchError("batch: a slot with dec_valid must also have dec_attn_valid")


def random_batch(config, batch_size: int, num_inputs: int, num_targets: int, *, seed: int = 0,
                 fill: float = 1.0) -> dict[str, np.ndarray]:
    """A random batch that follows the contract (for tests and benchmarks, not for training).

    Each example spreads about `fill` x the slot budgets over the input / target modalities at
    random (distinct positions within a modality; sequence targets are a teacher-forced run).
    """
    from m4.model.adapters import position_rows

    rng = np.random.default_rng(seed)
    specs = config.modalities
    ins = [i for i, s in enumerate(specs) if s.input]
    tgts = [i for i, s in enumerate(specs) if s.target and s.is_token]
    p_dim = max([s.patch_dim for s in specs if s.input and s.is_continuous], default=0)
    b, n_in, n_tgt = batch_size, num_inputs, num_targets
    out = {k: np.zeros((b, n_in), np.int32) for k in ("enc_ids", "enc_mod", "enc_pos")}
    out["enc_valid"] = np.zeros((b, n_in), bool)
    for k in ("dec_mod", "dec_pos", "dec_ids_in", "dec_targets", "dec_seq_index"):
        out[k] = np.zeros((b, n_tgt), np.int32)
    out["dec_valid"] = np.zeros((b, n_tgt), bool)
    if p_dim:
        out["enc_pixels"] = rng.standard_normal((b, n_in, p_dim)).astype(np.float32)

    def split(total, mods, cap):
        counts = rng.multinomial(total, np.ones(len(mods)) / len(mods)) if mods else []
        return [min(int(c), cap(m)) for c, m in zip(counts, mods)]

    for e in range(b):
        n = 0
        for m, c in zip(ins, split(int(n_in * fill), ins, lambda m: position_rows(specs[m]))):
            s = specs[m]
            pos = (np.arange(c) if s.kind in ("sequence", "embeddings")
                   else rng.choice(position_rows(s), c, replace=False))
            out["enc_mod"][e, n:n + c], out["enc_pos"][e, n:n + c] = m, pos
            out["enc_ids"][e, n:n + c] = rng.integers(0, max(s.vocab_size, 1), c)
            out["enc_valid"][e, n:n + c] = True
            n += c
        n = 0
        for m, c in zip(tgts, split(int(n_tgt * fill), tgts, lambda m: specs[m].length)):
            s = specs[m]
            seq = s.kind == "sequence"
            pos = np.arange(c) if seq else rng.choice(s.length, c, replace=False)
            ids = rng.integers(0, s.vocab_size, c + 1)
            out["dec_mod"][e, n:n + c], out["dec_pos"][e, n:n + c] = m, pos
            out["dec_targets"][e, n:n + c] = ids[1:]
            out["dec_ids_in"][e, n:n + c] = ids[:-1] if seq else 0
            out["dec_seq_index"][e, n:n + c] = np.arange(c) if seq else 0
            out["dec_valid"][e, n:n + c] = True
            n += c
    out["dec_attn_valid"] = out["dec_valid"].copy()
    return out

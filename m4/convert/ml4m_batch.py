"""Reference `mod_dict` -> m4 packed batch (BATCH_CONTRACT.md).

The reference model takes, per modality, `tensor`, `input_mask` (False = encoder input),
`target_mask` (False = decoder target) and a compressed `decoder_attention_mask`. This builds the
equivalent fixed-shape batch, plus where each slot comes from (modality, example, position), so
results can be compared position by position with the reference.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from m4.convert.errors import ConversionError
from m4.model.adapters import patchify
from m4.model.configs import FourMConfig


@dataclasses.dataclass
class SlotOrigin:
    """Where the slots of a converted batch come from. -1 marks padding."""
    enc_position: np.ndarray      # [B, N_in]  position along the modality axis
    dec_position: np.ndarray      # [B, N_tgt] query position (sequences: t, predicting t + 1)
    dec_target_position: np.ndarray   # [B, N_tgt] position of the predicted token


def _bool(a, name, field):
    a = np.asarray(a)
    if a.dtype != np.bool_:
        raise ConversionError(f"mod_dict[{name!r}][{field!r}]: expected bool, got {a.dtype}")
    return a


def _check_attention_mask(name, kind, target_mask, attn):
    """The two compressed patterns the reference masking produces (the ones m4 represents)."""
    is_tgt = ~target_mask
    if kind == "sequence":
        ok = np.array_equal(attn != 0, is_tgt) and np.all(attn[is_tgt] == 1)
        want = "1 at every target position, 0 elsewhere (causal)"
    else:
        counts = is_tgt.sum(axis=1)
        first = np.where(counts > 0, np.argmax(is_tgt, axis=1), -1)
        expect = np.zeros_like(attn)
        for b in range(attn.shape[0]):
            if first[b] >= 0:
                expect[b, first[b]] = counts[b]
        ok = np.array_equal(attn, expect)
        want = "the number of targets at the first target position (bidirectional)"
    if not ok:
        raise ConversionError(f"mod_dict[{name!r}]['decoder_attention_mask']: expected {want}; "
                              f"other attention patterns cannot be represented")


def mod_dict_to_batch(mod_dict: dict, config: FourMConfig, num_encoder_tokens: int | None = None,
                      num_decoder_tokens: int | None = None, *, check_attention: bool = True
                      ) -> tuple[dict[str, np.ndarray], SlotOrigin]:
    """Packed numpy batch of a reference mod_dict ({modality: {tensor, input_mask,
    target_mask, decoder_attention_mask}}), for the model `config`.

    Slots follow the reference's order (modalities in dict order, positions ascending), padded
    to num_encoder_tokens / num_decoder_tokens (default: the largest count). More valid tokens
    than slots is an error (the reference would drop them silently). `dec_present` marks the
    decoder modalities of the dict, which the reference 'mod' loss averages over.
    """
    if not mod_dict:
        raise ConversionError("mod_dict: empty")
    unknown = [m for m in mod_dict if m not in config.names]
    if unknown:
        raise ConversionError(f"mod_dict: modalities {unknown} are not in the model "
                              f"(model modalities: {list(config.names)})")
    b = None
    enc_rows: list[list[tuple]] = []
    dec_rows: list[list[tuple]] = []
    for name, d in mod_dict.items():
        for field in ("tensor", "input_mask", "target_mask"):
            if field not in d:
                raise ConversionError(f"mod_dict[{name!r}]: missing {field!r}")
        spec = config.spec(name)
        tensor = np.asarray(d["tensor"])
        input_mask = _bool(d["input_mask"], name, "input_mask")
        target_mask = _bool(d["target_mask"], name, "target_mask")
        if b is None:
            b = tensor.shape[0]
            enc_rows = [[] for _ in range(b)]
            dec_rows = [[] for _ in range(b)]
        length = spec.length if spec.kind != "sequence" else input_mask.shape[1]
        if spec.kind in ("image", "pixels", "vectors") and input_mask.shape != (b, spec.length):
            raise ConversionError(f"mod_dict[{name!r}]['input_mask']: expected shape "
                                  f"{[b, spec.length]}, got {list(input_mask.shape)}")
        if target_mask.shape != input_mask.shape or tensor.shape[0] != b:
            raise ConversionError(f"mod_dict[{name!r}]: tensor/masks disagree on shape "
                                  f"({list(tensor.shape)}, {list(input_mask.shape)}, "
                                  f"{list(target_mask.shape)})")
        m = config.index(name)
        if spec.kind == "pixels":
            values = patchify(np.asarray(tensor, np.float32), spec.patch_size, channels_first=True)
        elif spec.kind == "embeddings":
            values = np.asarray(tensor, np.float32)
        else:
            ids = tensor.reshape(b, -1).astype(np.int64)
        # -- encoder slots
        if spec.input:
            for bi in range(b):
                visible = np.flatnonzero(~input_mask[bi])
                for rank, p in enumerate(visible):
                    pos = rank if spec.kind in ("sequence", "embeddings") else p
                    if spec.is_continuous:
                        enc_rows[bi].append((m, pos, 0, p, values[bi, p]))
                    else:
                        enc_rows[bi].append((m, pos, int(ids[bi, p]), p, None))
        # -- decoder slots
        if not spec.target:
            continue
        if check_attention and "decoder_attention_mask" in d:
            _check_attention_mask(name, spec.kind, target_mask,
                                  np.asarray(d["decoder_attention_mask"]))
        for bi in range(b):
            is_tgt = ~target_mask[bi]
            if spec.kind == "sequence":
                rank = np.cumsum(is_tgt) - 1
                for t in range(length - 1):
                    if is_tgt[t] and is_tgt[t + 1]:
                        pos = int(rank[t]) if rank[t] < spec.length else 0
                        dec_rows[bi].append((m, pos, int(ids[bi, t]), int(ids[bi, t + 1]), t,
                                             t, t + 1))
            else:
                for p in np.flatnonzero(is_tgt):
                    dec_rows[bi].append((m, int(p), 0, int(ids[bi, p]), 0, int(p), int(p)))
    n_in = max(len(r) for r in enc_rows)
    n_tgt = max(len(r) for r in dec_rows)
    if num_encoder_tokens is not None:
        if n_in > num_encoder_tokens:
            raise ConversionError(f"num_encoder_tokens={num_encoder_tokens} is smaller than the "
                                  f"{n_in} encoder inputs of an example")
        n_in = int(num_encoder_tokens)
    if num_decoder_tokens is not None:
        if n_tgt > num_decoder_tokens:
            raise ConversionError(f"num_decoder_tokens={num_decoder_tokens} is smaller than the "
                                  f"{n_tgt} decoder targets of an example")
        n_tgt = int(num_decoder_tokens)
    n_in, n_tgt = max(n_in, 1), max(n_tgt, 1)
    cont = [s for s in config.modalities if s.input and s.is_continuous]
    p_dim = max((s.patch_dim for s in cont), default=0)
    batch = {
        "enc_ids": np.zeros((b, n_in), np.int32), "enc_mod": np.zeros((b, n_in), np.int32),
        "enc_pos": np.zeros((b, n_in), np.int32), "enc_valid": np.zeros((b, n_in), bool),
        "dec_mod": np.zeros((b, n_tgt), np.int32), "dec_pos": np.zeros((b, n_tgt), np.int32),
        "dec_ids_in": np.zeros((b, n_tgt), np.int32), "dec_targets": np.zeros((b, n_tgt), np.int32),
        "dec_valid": np.zeros((b, n_tgt), bool), "dec_attn_valid": np.zeros((b, n_tgt), bool),
        "dec_seq_index": np.zeros((b, n_tgt), np.int32),
    }
    if cont:
        batch["enc_pixels"] = np.zeros((b, n_in, p_dim), np.float32)
    origin = SlotOrigin(np.full((b, n_in), -1, np.int32), np.full((b, n_tgt), -1, np.int32),
                        np.full((b, n_tgt), -1, np.int32))
    for bi in range(b):
        for n, (m, pos, tok, p, vec) in enumerate(enc_rows[bi]):
            batch["enc_mod"][bi, n], batch["enc_pos"][bi, n] = m, pos
            batch["enc_ids"][bi, n], batch["enc_valid"][bi, n] = tok, True
            origin.enc_position[bi, n] = p
            if vec is not None:
                batch["enc_pixels"][bi, n, :vec.shape[0]] = vec
        for n, (m, pos, tok_in, tgt, seq, q, tp) in enumerate(dec_rows[bi]):
            batch["dec_mod"][bi, n], batch["dec_pos"][bi, n] = m, pos
            batch["dec_ids_in"][bi, n], batch["dec_targets"][bi, n] = tok_in, tgt
            batch["dec_valid"][bi, n] = batch["dec_attn_valid"][bi, n] = True
            batch["dec_seq_index"][bi, n] = seq
            origin.dec_position[bi, n], origin.dec_target_position[bi, n] = q, tp
    present = np.asarray([s.name in mod_dict and s.target for s in config.modalities])
    batch["dec_present"] = np.tile(present, (b, 1))                       # [B, M]
    return batch, origin

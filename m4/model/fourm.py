"""The 4M encoder-decoder over the packed masked batch (BATCH_CONTRACT.md).

Computes the reference function (apple/ml-4m `FourM.forward`, see REFERENCE_4M.md section 2):
1. encoder slots -> x (token/patch content) and emb (position + modality); padding zeroed;
2. encoder blocks on x + emb, every valid slot attending every valid slot of its example;
3. context = decoder_proj_context(encoder output) + emb (the embeddings are added again);
4. decoder slots: mask token (image-like) or teacher-forced token (sequences) + emb;
   self-attention only within a modality (bidirectional, causal for sequences), cross-attention
   to the valid encoder slots;
5. per-row cross-entropy over the row's own modality vocabulary; per-modality means; the
   reference's 'mod' average (or its 'token' average).

The reference keeps the first num_encoder_tokens valid tokens in concatenation order; here slot
order is free (attention is permutation-equivariant and masks are built from slot metadata), so
the result does not depend on how a batch row is packed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m4.model import logits as logits_lib
from m4.model.adapters import DecoderEmbedding, EncoderEmbedding
from m4.model.batch import check_structure
from m4.model.configs import FourMConfig
from m4.model.layers import (
    DecoderBlock, EncoderBlock, LayerNorm, dot, linear, normal_init, param, run_stacked, stacked,
    uniform_init, xavier_bound,
)
from m4.parallel import batch_shards

LOSS_TYPES = ("mod", "token", "token_mean")


class FourM(nnx.Module):
    def __init__(self, config: FourMConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, FourMConfig):
            raise TypeError(f"FourM: expected a FourMConfig, got {type(config).__name__}")
        self.config = config
        d, m = config.dim, len(config.modalities)
        norm = dict(eps=config.norm_eps, use_bias=config.norm_bias)
        if config.share_modality_embeddings:
            self.mod_emb = param(normal_init(rngs.params(), (m, d)), (None, "embed"))
        else:
            self.enc_mod_emb = param(normal_init(rngs.params(), (m, d)), (None, "embed"))
            self.dec_mod_emb = param(normal_init(rngs.params(), (m, d)), (None, "embed"))
        self.enc_embed = EncoderEmbedding(config, rngs)
        self.encoder = stacked(lambda r: EncoderBlock(config, rngs=r), config.encoder_depth, rngs)
        self.encoder_norm = LayerNorm(d, **norm)
        self.context_proj = param(uniform_init(rngs.params(), (d, d), xavier_bound(d, d)),
                                  ("embed", None))
        self.context_bias = param(jnp.zeros((d,)), ("embed",))
        self.dec_embed = DecoderEmbedding(config, rngs)
        self.decoder = stacked(lambda r: DecoderBlock(config, rngs=r), config.decoder_depth, rngs)
        self.decoder_norm = LayerNorm(d, **norm)

    # -- pieces ---------------------------------------------------------------------------------
    def _mod_emb(self, side: str) -> jax.Array:
        if self.config.share_modality_embeddings:
            return self.mod_emb[...]
        return (self.enc_mod_emb if side == "enc" else self.dec_mod_emb)[...]

    @property
    def _dtype(self):
        return jnp.dtype(self.config.dtype)

    def embed_inputs(self, batch: dict) -> tuple[jax.Array, jax.Array]:
        """Encoder slots -> (x, emb), each [B, N_in, D]; zero on padding slots."""
        check_structure(batch, self.config, decoder=False)
        return self.enc_embed(batch, self._mod_emb("enc"))

    def encode(self, batch: dict) -> tuple[jax.Array, jax.Array]:
        """-> (encoder output after encoder_norm [B, N_in, D], encoder emb [B, N_in, D])."""
        x, emb = self.embed_inputs(batch)
        allowed = batch["enc_valid"][:, None, :]                         # [B, 1, N_in]
        h = run_stacked(self.encoder, x + emb, (allowed,), scan=self.config.scan_layers,
                        remat=self.config.remat)
        return self.encoder_norm(h), emb

    def embed_targets(self, batch: dict) -> tuple[jax.Array, jax.Array]:
        """Decoder slots -> (x, emb), each [B, N_tgt, D]; zero on unused slots."""
        return self.dec_embed(batch, self._mod_emb("dec"))

    def decoder_mask(self, batch: dict) -> jax.Array:
        """[B, N_tgt, N_tgt] bool: query attends key iff same modality, key takes part, and for
        sequences the key does not come later in the sequence."""
        mod, seq = batch["dec_mod"], batch["dec_seq_index"]
        same = mod[:, :, None] == mod[:, None, :]
        causal = jnp.asarray([s.causal for s in self.config.modalities])[mod]     # [B, N]
        ordered = seq[:, None, :] <= seq[:, :, None]
        return same & batch["dec_attn_valid"][:, None, :] & (~causal[:, :, None] | ordered)

    def decoder_context(self, enc_out: jax.Array, enc_emb: jax.Array) -> jax.Array:
        """What the decoder cross-attends to: projected encoder output + encoder emb."""
        context = linear(enc_out, self.context_proj[...], self._dtype)
        return context + self.context_bias[...] + enc_emb

    def decode(self, batch: dict, enc_out: jax.Array, enc_emb: jax.Array) -> jax.Array:
        """-> decoder output after decoder_norm [B, N_tgt, D]."""
        context = self.decoder_context(enc_out, enc_emb)
        y, emb = self.embed_targets(batch)
        cross = batch["enc_valid"][:, None, :]
        h = run_stacked(self.decoder, y + emb, (context, self.decoder_mask(batch), cross),
                        scan=self.config.scan_layers, remat=self.config.remat)
        return self.decoder_norm(h)

    def __call__(self, batch: dict) -> dict[str, jax.Array]:
        check_structure(batch, self.config)
        enc_out, enc_emb = self.encode(batch)
        return {"enc_out": enc_out, "dec_out": self.decode(batch, enc_out, enc_emb)}

    # -- outputs --------------------------------------------------------------------------------
    def logits_for_modality(self, h: jax.Array, modality: str | int) -> jax.Array:
        """Logits of one modality over its full local vocabulary: [..., D] -> [..., V_m]."""
        m = modality if isinstance(modality, int) else self.config.index(modality)
        spec = self.config.modalities[m]
        if not (spec.target and spec.is_token):
            raise ValueError(f"logits_for_modality: {spec.name!r} is not a token target modality")
        start, stop = self.config.vocab.range(m)
        table = self.dec_embed.logits_table()[start:stop]
        return dot("...d,vd->...v", h, table, self._dtype)

    def token_losses(self, batch: dict, dec_out: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Per-slot cross-entropy and argmax hit, each [B, N_tgt] (0 / False on invalid slots)."""
        b, n, d = dec_out.shape
        cfg = self.config
        vocab = cfg.vocab
        args = (dec_out.reshape(b * n, d), batch["dec_targets"].reshape(-1).astype(jnp.int32),
                batch["dec_mod"].reshape(-1).astype(jnp.int32), batch["dec_valid"].reshape(-1),
                self.dec_embed.logits_table(), tuple(map(int, vocab.offsets)),
                tuple(map(int, vocab.sizes)))
        if cfg.logits == "full":
            nll, hit = logits_lib.full_cross_entropy(*args, self._dtype)
        else:
            targets = tuple(i for i, s in enumerate(cfg.modalities) if s.target and s.is_token)
            groups = batch_shards()
            nll, hit = logits_lib.chunked_cross_entropy(
                *args, target_mods=targets, chunk=cfg.logits_chunk, dtype=self._dtype,
                groups=groups if b % groups == 0 else 1)
        return nll.reshape(b, n), hit.reshape(b, n)

    def loss(self, batch: dict, loss_type: str = "mod") -> tuple[jax.Array, dict]:
        """Training loss and metrics (per-modality loss, target count and accuracy).

        loss_type:
        - "mod": mean over the decoder modalities of each one's mean token loss (the reference's
          training loss). The reference counts every decoder modality of its input dict, with
          or without targets: the optional `batch['dec_present']` [B, M] bool says which (a
          modality counts if present in any example); by default every target modality counts.
        - "token": the reference's 'token' loss: per-modality means weighted by
          targets x vocabulary size (it weights by the number of logits).
        - "token_mean": plain mean over all target tokens.
        """
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss: loss_type expected one of {LOSS_TYPES}, got {loss_type!r}")
        out = self(batch)
        nll, hit = self.token_losses(batch, out["dec_out"])
        cfg = self.config
        m = len(cfg.modalities)
        valid = batch["dec_valid"]
        onehot = (batch["dec_mod"][..., None] == jnp.arange(m)) & valid[..., None]   # [B, N, M]
        counts = onehot.sum(axis=(0, 1)).astype(jnp.float32)                          # [M]
        sums = jnp.einsum("bnm,bn->m", onehot.astype(jnp.float32), nll)
        hits = jnp.einsum("bnm,bn->m", onehot.astype(jnp.float32), hit.astype(jnp.float32))
        per_mod = jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), 0.0)
        accuracy = jnp.where(counts > 0, hits / jnp.maximum(counts, 1.0), 0.0)
        is_target = jnp.asarray([s.target and s.is_token for s in cfg.modalities])
        if "dec_present" in batch:      # [B, M]: counted if present in any example
            present = is_target & jnp.any(batch["dec_present"], axis=0)
        else:
            present = is_target
        loss_mod = jnp.sum(jnp.where(present, per_mod, 0.0)) / jnp.maximum(present.sum(), 1)
        weights = counts * jnp.asarray(cfg.vocab.sizes, jnp.float32)
        loss_token = jnp.sum(per_mod * weights) / jnp.maximum(weights.sum(), 1.0)
        loss_token_mean = jnp.sum(sums) / jnp.maximum(counts.sum(), 1.0)
        loss = {"mod": loss_mod, "token": loss_token, "token_mean": loss_token_mean}[loss_type]
        metrics = {"loss": loss, "loss_mod": loss_mod, "loss_token": loss_token,
                   "loss_token_mean": loss_token_mean}
        for i, s in enumerate(cfg.modalities):
            if s.target and s.is_token:
                metrics[f"loss/{s.name}"] = per_mod[i]
                metrics[f"count/{s.name}"] = counts[i]
                metrics[f"accuracy/{s.name}"] = accuracy[i]
        return loss, metrics


def count_params(tree, blocks_only: bool = False) -> int:
    """Number of trainable parameters (nnx.Param) of a model or abstract model.

    blocks_only: the encoder and decoder blocks only (the reference README's counts)."""
    state = nnx.state(tree, nnx.Param)
    if blocks_only:
        state = {k: state[k] for k in ("encoder", "decoder") if k in state}
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))

"""Key/value-cached decoding of a causal sequence target (m4.model.incremental) computes
exactly the rows of the full decoder, for every block variant."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m4.modalities import ModalitySpec
from m4.model import FourM, preset, random_batch
from m4.model import incremental

SPECS = (
    ModalitySpec("rgb", "image", vocab_size=37, grid=(4, 4)),
    ModalitySpec("caption", "sequence", vocab_size=41, length=10, pos_table=12),
)
ROWS = 13                      # more rows than the caption's length: positions past it are 0


def teacher_forced_rows(batch_size: int, rows: int, ids: np.ndarray) -> dict:
    r = np.arange(rows)
    full = lambda x: np.broadcast_to(x, (batch_size, rows)).astype(np.int32)
    return {"dec_mod": full(1), "dec_pos": full(np.where(r < SPECS[1].length, r, 0)),
            "dec_ids_in": ids.astype(np.int32), "dec_targets": full(0),
            "dec_valid": np.ones((batch_size, rows), bool),
            "dec_attn_valid": np.ones((batch_size, rows), bool), "dec_seq_index": full(r)}


@pytest.mark.parametrize("variant", ["swiglu_nobias", "gelu"])
def test_cached_rows_equal_the_full_decoder(variant):
    config = preset("tiny", SPECS, variant, dim=24, num_heads=3, encoder_depth=2,
                    decoder_depth=3)
    model = FourM(config, rngs=nnx.Rngs(3))
    b = 3
    enc = {k: v for k, v in random_batch(config, b, 9, 4, seed=2, fill=0.7).items()
           if k.startswith("enc_")}
    ids = np.random.default_rng(0).integers(0, 41, (b, ROWS))
    batch = {**enc, **teacher_forced_rows(b, ROWS, ids)}

    @jax.jit
    def full(batch):
        enc_out, enc_emb = model.encode(batch)
        return model.decode(batch, enc_out, enc_emb)

    @jax.jit
    def cached(batch):
        enc_out, enc_emb = model.encode(batch)
        cache = incremental.start(model, enc_out, enc_emb, batch["enc_valid"], ROWS)
        outs = []
        for i in range(ROWS):
            h, cache = incremental.step(model, cache, batch["dec_ids_in"][:, i], jnp.int32(i), 1,
                                        batch["dec_pos"][:, i])
            outs.append(h)
        return jnp.stack(outs, 1)

    want, got = full(batch), cached(batch)
    assert got.shape == want.shape == (b, ROWS, 24)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    # A later token changes no earlier row (what makes the cache valid), and does change its own.
    changed = ids.copy()
    changed[:, 7] = (changed[:, 7] + 1) % 41
    other = full({**batch, **teacher_forced_rows(b, ROWS, changed)})
    np.testing.assert_allclose(other[:, :7], want[:, :7], rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(other[:, 7:]) - np.asarray(want[:, 7:])).max() > 1e-4

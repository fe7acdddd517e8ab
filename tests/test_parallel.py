"""Logical axis rules, and the model on a (2, 2, 2) mesh of 8 fake CPU devices."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from jax.sharding import PartitionSpec as P

from m4.parallel import LOGICAL_RULES, logical_to_spec, make_mesh


def test_rules_table():
    assert logical_to_spec(("batch", "length", "embed")) == P(("data", "fsdp"))
    assert logical_to_spec(("vocab", "embed")) == P("tensor", "fsdp")
    assert logical_to_spec(("layers", "embed", None, "heads", "kv")) == P(None, "fsdp", None,
                                                                          "tensor")
    assert logical_to_spec(("layers", "mlp", "embed")) == P(None, "tensor", "fsdp")
    # a mesh axis is used once per array; sizes that do not divide stay replicated
    assert logical_to_spec(("embed", "embed")) == P("fsdp")
    mesh_shape = {"data": 2, "fsdp": 2, "tensor": 2}
    assert logical_to_spec(("vocab", "embed"), shape=(7, 8), mesh_shape=mesh_shape) == P(
        None, "fsdp")
    assert logical_to_spec(("batch",), shape=(2,), mesh_shape=mesh_shape) == P("data")
    with pytest.raises(KeyError, match="'width'"):
        logical_to_spec(("width",))
    assert dict(LOGICAL_RULES)["batch"] == ("data", "fsdp")


def test_make_mesh_checks_the_device_count():
    with pytest.raises(ValueError, match="number of devices"):
        make_mesh(2, 2, 2)


SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    from m4.modalities import ModalitySpec
    from m4.model import FourM, preset, random_batch
    from m4.parallel import create_sharded, make_mesh, state_specs

    specs = (ModalitySpec("rgb", "image", vocab_size=38, grid=(4, 4)),
             ModalitySpec("caption", "sequence", vocab_size=42, length=10, pos_table=12),
             ModalitySpec("pix", "pixels", patch_dim=12, patch_size=2, grid=(4, 4),
                          target=False))
    cfg = preset("tiny", specs, dim=48, num_heads=4, encoder_depth=2, decoder_depth=2,
                 logits_chunk=8)
    batch = {k: jnp.asarray(v) for k, v in random_batch(cfg, 8, 16, 12, seed=3).items()}

    def step(model, batch):
        def f(m):
            loss, metrics = m.loss(batch, "mod")
            return loss, (metrics, m(batch))
        (loss, (metrics, out)), grads = nnx.value_and_grad(f, has_aux=True)(model)
        return metrics, out, nnx.to_pure_dict(grads)

    single = FourM(cfg, rngs=nnx.Rngs(0))
    ref = jax.device_get(nnx.jit(step)(single, batch))

    mesh = make_mesh(2, 2, 2)
    model = create_sharded(lambda: FourM(cfg, rngs=nnx.Rngs(0)), mesh)
    with jax.set_mesh(mesh):
        data = NamedSharding(mesh, P(("data", "fsdp")))
        sharded_batch = {k: jax.device_put(v, data if v.ndim else NamedSharding(mesh, P()))
                         for k, v in batch.items()}
        got = jax.device_get(nnx.jit(step)(model, sharded_batch))
    diff = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), ref, got)
    state = nnx.state(model)
    as_list = lambda spec: [list(a) if isinstance(a, tuple) else a for a in spec]
    specs = {"/".join(map(str, k)): as_list(v.get_value().sharding.spec)
             for k, v in nnx.to_flat_state(state)}
    logical = {"/".join(map(str, k)): as_list(v)
               for k, v in nnx.to_flat_state(state_specs(state, mesh))}

    # Conversion straight onto the mesh: every shard read from the file equals the 1-device load.
    import sys
    from m4.convert import ml4m
    from m4.convert.ml4m_synthetic import write_reference_checkpoint
    doms = ["rgb@224", "caption", "tok_rgb@224", "tok_depth@224"]
    ref = dict(act_layer="SiLU", decoder_depth=1, dim=16, domains_in=doms, domains_out=doms[1:],
               encoder_depth=1, gated_mlp=True, image_size=224, mlp_bias=False, mlp_ratio=4.0,
               norm_bias=False, num_heads=2, patch_size=16, proj_bias=False, qkv_bias=False)
    path = sys.argv[1] + "/model.safetensors"
    write_reference_checkpoint(path, ml4m.model_config(ref))
    one, _ = ml4m.load(path)
    meshed, _ = ml4m.load(path, mesh=mesh)
    a, b = nnx.to_pure_dict(nnx.state(one)), nnx.to_pure_dict(nnx.state(meshed))
    convert_diff = max(jax.tree.leaves(jax.tree.map(
        lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a, b)))
    table = meshed.dec_embed.to_logits.get_value()
    print(json.dumps({"max_diff": max(jax.tree.leaves(diff)), "specs": specs,
                      "logical": logical, "convert_diff": convert_diff,
                      "convert_spec": as_list(table.sharding.spec),
                      "convert_shards": len(table.addressable_shards)}))
""")

GOLDEN = {
    "enc_embed/token_emb": ["tensor", "fsdp"],
    "dec_embed/to_logits": ["tensor", "fsdp"],
    "encoder/attn/qkv": [None, "fsdp", None, "tensor"],
    "encoder/attn/proj": [None, "tensor", None, "fsdp"],
    "decoder/cross_attn/q": [None, "fsdp", "tensor"],
    "encoder/mlp/fc1": [None, "fsdp", "tensor"],
    "decoder/mlp/fc2": [None, "tensor", "fsdp"],
    "encoder/norm1/scale": [None, "fsdp"],
    "mod_emb": [None, "fsdp"],
    "dec_embed/mask_token": ["fsdp"],
    "context_proj": ["fsdp"],
    "enc_embed/proj/0/kernel": [None, "fsdp"],
    "enc_embed/positions/fixed": [None, "fsdp"],
}


def test_mesh_2x2x2_matches_single_device_and_golden_shardings(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["max_diff"] < 2e-5
    for path, spec in GOLDEN.items():
        assert result["specs"][path] == spec, path
        assert result["logical"][path] == spec, path
    # the converter placed the reference tensors shard by shard, exactly
    assert result["convert_diff"] == 0.0
    assert result["convert_spec"] == ["tensor", "fsdp"] and result["convert_shards"] == 8

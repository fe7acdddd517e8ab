"""Checkpointer: round trip, keep-N, extra state, resharding restore, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m4.train.checkpoint import Checkpointer, CheckpointError, abstract_like


def _state(seed: int):
    rng = np.random.default_rng(seed)
    return {
        "params": {"w": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32),
                   "b": jnp.asarray(rng.normal(size=(5,)), jnp.bfloat16)},
        "step": jnp.asarray(seed, jnp.int32),
        "counts": jnp.asarray(rng.integers(0, 9, size=(7,)), jnp.int32),
    }


def test_roundtrip_keep_n_and_extra(tmp_path):
    with Checkpointer(tmp_path / "ckpt", max_to_keep=2) as ckpt:
        for step in (1, 2, 3):
            assert ckpt.save(step, _state(step), {"data_position": step * 10})
        ckpt.wait()
        assert ckpt.all_steps() == [2, 3]
        assert ckpt.latest_step() == 3
        state, extra = ckpt.restore(abstract_like(_state(0)))
    assert extra == {"data_position": 30}
    expected = _state(3)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(expected)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_restore_specific_step_and_errors(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt", max_to_keep=3, async_save=False)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        ckpt.restore(abstract_like(_state(0)))
    ckpt.save(4, _state(4))
    ckpt.save(5, _state(5))
    state, _ = ckpt.restore(abstract_like(_state(0)), step=4)
    assert int(state["step"]) == 4
    with pytest.raises(CheckpointError, match=r"step 9 not found .*\[4, 5\]"):
        ckpt.restore(abstract_like(_state(0)), step=9)
    wrong = {"params": {"w": jax.ShapeDtypeStruct((3, 5), jnp.float32)}}
    with pytest.raises(CheckpointError, match="does not match"):
        ckpt.restore(wrong, step=5)
    ckpt.close()


def test_save_interval_and_force(tmp_path):
    with Checkpointer(tmp_path / "c", save_interval_steps=10) as ckpt:
        assert ckpt.save(10, _state(1))
        assert not ckpt.save(13, _state(1))
        assert ckpt.save(13, _state(1), force=True)
        ckpt.wait()
        assert ckpt.all_steps() == [10, 13]


def test_resume_ignores_partial_save(tmp_path):
    """A save interrupted before its rename leaves a temporary directory, never a step."""
    with Checkpointer(tmp_path / "c", async_save=False) as ckpt:
        ckpt.save(1, _state(1))
    (tmp_path / "c" / "2.orbax-checkpoint-tmp-123").mkdir()
    with Checkpointer(tmp_path / "c") as ckpt:
        assert ckpt.all_steps() == [1]
        state, _ = ckpt.restore(abstract_like(_state(0)))
        assert int(state["step"]) == 1


_RESHARD = textwrap.dedent("""
    import sys, jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from m4.train.checkpoint import Checkpointer
    assert jax.device_count() == 4
    mesh_a = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    mesh_b = jax.make_mesh((2, 2), ("data", "model"),
                           axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    x = jnp.arange(8 * 6, dtype=jnp.float32).reshape(8, 6)
    state = {"x": jax.device_put(x, NamedSharding(mesh_a, P("data", None)))}
    with Checkpointer(sys.argv[1]) as ckpt:
        ckpt.save(1, state)
        ckpt.wait()
        target = NamedSharding(mesh_b, P("model", "data"))
        abstract = {"x": jax.ShapeDtypeStruct((8, 6), jnp.float32, sharding=target)}
        restored, _ = ckpt.restore(abstract)
    assert restored["x"].sharding == target, restored["x"].sharding
    np.testing.assert_array_equal(np.asarray(restored["x"]), np.asarray(x))
    print("OK")
""")


def test_restore_onto_a_different_mesh(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", _RESHARD, str(tmp_path / "ckpt")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout

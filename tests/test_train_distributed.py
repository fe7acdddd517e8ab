"""Training across devices and processes, each in subprocesses (device count is per process)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from token_shards_fixture import write_token_shards

TESTS = REPO_ROOT / "tests"


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(TESTS), **extra)
    env.pop("XLA_FLAGS", None)
    return env


def test_train_step_on_mesh_222_matches_one_device():
    result = subprocess.run(
        [sys.executable, str(TESTS / "mesh_train_worker.py")], cwd=REPO_ROOT, timeout=600,
        capture_output=True, text=True,
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"))
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(out["loss_mesh"], out["loss_single"], rtol=1e-5)
    assert out["max_param_diff"] < 1e-5
    # Golden shardings of the rules table: embeddings (vocab->tensor, embed->fsdp), attention
    # (embed->fsdp, heads->tensor), MLP hidden 85 is not divisible by tensor=2, so replicated.
    assert out["specs"] == {
        "['enc_embed']['token_emb'].value": "P('tensor', 'fsdp')",
        "['encoder']['attn']['qkv'].value": "P(None, 'fsdp', None, 'tensor')",
        "['encoder']['mlp']['fc1'].value": "P(None, 'fsdp')",
        "['mod_emb'].value": "P(None, 'fsdp')",
    }
    # Optimizer moments are sharded like their parameters (not all replicated).
    assert "P('tensor', 'fsdp')" in out["opt_specs"]
    assert out["batch_spec"] == "P(('data', 'fsdp'),)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_checkpoint_and_restore_on_one_device(tmp_path):
    token_dir = write_token_shards(tmp_path / "tokens")
    workdir = tmp_path / "run"
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen(
        [sys.executable, str(TESTS / "distributed_train_worker.py"), coordinator, str(i),
         str(token_dir), str(workdir)], cwd=REPO_ROOT, env=_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=600))
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    summary = json.loads(outputs[0][0][outputs[0][0].index("{"):])
    assert summary["step"] == 6 and summary["compilations"] == 1
    assert "\"step\"" not in outputs[1][0]   # only process 0 reports the summary

    # One process, one device: restore the parameters the two processes wrote.
    check = subprocess.run([sys.executable, "-c", (
        "import sys, jax; from m4.train import model_io\n"
        f"m = model_io.load_model({str(workdir)!r})\n"
        "import numpy as np; from flax import nnx\n"
        "leaves = jax.tree.leaves(nnx.state(m, nnx.Param))\n"
        "assert jax.device_count() == 1\n"
        "assert all(np.isfinite(np.asarray(x)).all() for x in leaves)\n"
        "print(len(leaves))")], cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
        timeout=300)
    assert check.returncode == 0, check.stderr[-3000:]
    assert int(check.stdout.strip()) > 10

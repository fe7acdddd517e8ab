"""Run in a subprocess with 8 fake CPU devices: one train step on mesh (2, 2, 2) vs one device.

Prints one JSON line: loss on each mesh, max parameter difference after the step, and the
PartitionSpecs of a few parameters and of the optimizer moments.
"""

import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from m4 import parallel  # noqa: E402
from m4.data.masking import Masker, Mixture, collate  # noqa: E402
from m4.data.span_masking import SentinelSpec  # noqa: E402
from m4.model.configs import preset  # noqa: E402
from m4.model.fourm import FourM  # noqa: E402
from m4.train import step as step_lib  # noqa: E402
from m4.train.optimizer import OptimizerConfig, make_optimizer  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from token_shards_fixture import SPECS, TEXT  # noqa: E402


def main():
    assert jax.device_count() == 8, jax.devices()
    cfg = preset("tiny", SPECS, dim=32, encoder_depth=2, decoder_depth=2, num_heads=4)
    tx = make_optimizer(OptimizerConfig(base_lr=1e-3, global_batch=256, total_steps=10))
    mixture = Mixture.from_config({"name": "t", "modalities": {
        s.name: {"input_alphas": [1.0], "target_alphas": [1.0]} for s in SPECS}})
    masker = Masker(SPECS, mixture, input_tokens=12, target_tokens=12, sentinels=SentinelSpec(**TEXT))
    rng = np.random.default_rng(0)
    first_word = TEXT["first_sentinel_id"] + TEXT["num_sentinels"]
    samples = [{"rgb": rng.integers(0, 32, 16), "depth": rng.integers(0, 16, 16),
                "caption": rng.integers(first_word, 64, 6)} for _ in range(8)]
    batch = collate([masker(s, rng) for s in samples])

    out = {}
    for name, mesh in (("single", parallel.make_mesh(devices=jax.devices()[:1])),
                       ("mesh222", parallel.make_mesh(2, 2, 2))):
        model, _, shardings = step_lib.abstract_train_state(
            lambda: FourM(cfg, rngs=nnx.Rngs(0)), tx, mesh)
        state = step_lib.init_train_state(model, tx, shardings, mesh)
        train_step = step_lib.make_train_step(model, tx, shardings, mesh)
        state, metrics = train_step(state, step_lib.global_batch(batch, mesh))
        out[name] = {"loss": float(metrics["loss"]),
                     "params": [np.asarray(x) for x in jax.tree.leaves(state["params"])]}
        if name == "mesh222":
            flat = {jax.tree_util.keystr(p): str(x.sharding.spec)
                    for p, x in jax.tree_util.tree_leaves_with_path(state["params"])}
            out["specs"] = {k: v for k, v in flat.items()
                            if any(s in k for s in ("['encoder']['mlp']['fc1']", "['enc_embed']",
                                                    "['encoder']['attn']['qkv']", "['mod_emb']"))}
            opt_specs = {str(x.sharding.spec) for x in jax.tree.leaves(state["opt"])}
            out["opt_specs"] = sorted(opt_specs)
            out["batch_spec"] = str(step_lib.batch_sharding(mesh).spec)
    diff = max(float(np.max(np.abs(a - b)))
               for a, b in zip(out["single"]["params"], out["mesh222"]["params"]))
    print(json.dumps({"loss_single": out["single"]["loss"], "loss_mesh": out["mesh222"]["loss"],
                      "max_param_diff": diff, "specs": out["specs"],
                      "opt_specs": out["opt_specs"], "batch_spec": out["batch_spec"]}))


if __name__ == "__main__":
    main()

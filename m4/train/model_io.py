"""A trained model on disk, and loading it back for generation, evaluation or fine-tuning.

One layout serves `m4 train` workdirs and converted reference checkpoints:
  DIR/model_config.json            the FourMConfig (modality specs included)
  DIR/checkpoints/<step>/state     orbax pytree holding at least {"params": ...}
                                   (a training run also holds "step", "rest" and "opt")
Loading reads only the parameters (orbax partial restore), placed directly with the shardings of
the target mesh, so neither the optimizer state nor a full host copy is ever materialised.
"""

from __future__ import annotations

import json
import pathlib

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from m4 import parallel
from m4.model.configs import FourMConfig
from m4.model.fourm import FourM
from m4.train.checkpoint import Checkpointer

MODEL_CONFIG_FILE = "model_config.json"


class ModelLoadError(ValueError):
    pass


def read_model_config(directory: str | pathlib.Path) -> FourMConfig:
    path = pathlib.Path(directory) / MODEL_CONFIG_FILE
    if not path.is_file():
        raise ModelLoadError(f"{directory}: no {MODEL_CONFIG_FILE}; expected an `m4 train` workdir "
                             f"or an `m4 convert` output")
    return FourMConfig.from_dict(json.loads(path.read_text()))


def save_model(directory: str | pathlib.Path, model: FourM, *, step: int = 0) -> pathlib.Path:
    """Writes a model (config + parameters) in the layout above; returns the directory."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=1))
    with Checkpointer(directory / "checkpoints", max_to_keep=None, async_save=False) as ckpt:
        ckpt.save(step, {"params": nnx.state(model, nnx.Param)}, force=True)
    return directory


def load_model(directory: str | pathlib.Path, *, step: int | None = None,
               mesh: Mesh | None = None, config: FourMConfig | None = None) -> FourM:
    """The model of `directory` at `step` (default: latest), sharded on `mesh` (default: 1 device).

    `config` may override how the model computes (dtype, scan, remat); its modalities and sizes
    must match the saved ones.
    """
    # Absolute: orbax refuses relative checkpoint paths (`m4 eval --checkpoint runs/demo/model`).
    directory = pathlib.Path(directory).absolute()
    saved = read_model_config(directory)
    if config is None:
        config = saved
    elif config.modalities != saved.modalities or config.dim != saved.dim:
        raise ModelLoadError(f"{directory}: the given config does not match the saved model "
                             f"(modalities or dim differ)")
    mesh = mesh or parallel.make_mesh(devices=jax.devices()[:1])
    steps = Checkpointer(directory / "checkpoints").all_steps()
    if not steps:
        raise ModelLoadError(f"{directory}/checkpoints holds no checkpoint")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ModelLoadError(f"{directory}: no checkpoint at step {step}; present: {steps}")

    def make():
        return FourM(config, rngs=nnx.Rngs(0))

    graphdef, params, _ = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
    # Non-parameter variables (the fixed sin-cos position tables) are not in the checkpoint:
    # compute them. Under jit the parameter initialisers are dead code and never run.
    with jax.set_mesh(mesh):
        rest = jax.jit(lambda: nnx.split(make(), nnx.Param, ...)[2])()
    variables = dict(nnx.to_flat_state(params))                    # path -> abstract Variable
    shardings = dict(nnx.to_flat_state(parallel.state_shardings(params, mesh)))
    # Orbax stores each nnx Variable as {"value": array}: the template has the same nesting.
    target: dict = {}
    for key_path, variable in variables.items():
        node = target
        for key in key_path[:-1]:
            node = node.setdefault(str(key), {})
        node[str(key_path[-1])] = {"value": jax.ShapeDtypeStruct(
            variable.shape, variable.dtype, sharding=shardings[key_path])}
    item = {"params": target}
    restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), item)
    path = directory / "checkpoints" / str(step) / "state"
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            path, args=ocp.args.PyTreeRestore(item, restore_args=restore_args,
                                              partial_restore=True))
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise ModelLoadError(f"{path}: parameters do not match {MODEL_CONFIG_FILE}: {e}") from e
    for key_path, variable in variables.items():
        node = restored["params"]
        for key in key_path:
            node = node[str(key)]
        variable.set_value(node["value"])
    return nnx.merge(graphdef, params, rest)

"""The compiled training step: a pure `jax.jit` over split NNX state with explicit shardings.

The train state is a plain dict pytree `{"step", "params", "rest", "opt"}`:
- `params`: the model's `nnx.Param` state (float32 master weights), sharded by logical axes;
- `rest`:   every other model variable (none in FourM today, kept so modules may add some);
- `opt`:    the optax state, sharded like the parameters it mirrors.
The module itself never enters jit: `nnx.merge(graphdef, params, rest)` inside the traced function
rebuilds it, which avoids NNX's Python-side graph bookkeeping on every call (STYLE.md).
"""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from m4 import parallel
from m4.train import sparse_rows

TrainState = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Model:
    """What the step needs to rebuild the module: its graph definition and how to make it."""

    graphdef: nnx.GraphDef
    make: Callable[[], nnx.Module]


def _split(module: nnx.Module):
    return nnx.split(module, nnx.Param, ...)


def abstract_train_state(make_module: Callable[[], nnx.Module], tx: optax.GradientTransformation,
                         mesh: Mesh) -> tuple[Model, TrainState, Any]:
    """Shapes and shardings of the train state, without allocating it. Optimizer moments are
    sharded like the parameters they mirror; scalars are replicated.

    Returns (model, abstract state with shardings attached, shardings tree).
    """
    graphdef, abs_params, abs_rest = _split(nnx.eval_shape(make_module))
    param_sh = _full_tree(abs_params, parallel.state_shardings(abs_params, mesh))
    rest_sh = _full_tree(abs_rest, parallel.state_shardings(abs_rest, mesh))
    replicated = NamedSharding(mesh, PartitionSpec())

    abs_opt = jax.eval_shape(tx.init, abs_params)
    opt_sh = optax.tree_map_params(tx, lambda _, sh: sh, abs_opt, param_sh,
                                   transform_non_params=lambda _: replicated)
    shardings = {"step": replicated, "params": param_sh, "rest": rest_sh, "opt": opt_sh}
    abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abs_params,
                "rest": abs_rest, "opt": abs_opt}
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return Model(graphdef, make_module), abstract, shardings


def _full_tree(abstract, prefix):
    """A sharding per array leaf, in the full structure of `abstract` (state_shardings gives one
    per nnx Variable; each Variable holds exactly one array)."""
    return jax.tree.unflatten(jax.tree.structure(abstract), jax.tree.leaves(prefix))


def init_train_state(model: Model, tx: optax.GradientTransformation, shardings,
                     mesh: Mesh) -> TrainState:
    """The initial train state, born sharded (never materialised whole on one device)."""
    def init():
        _, params, rest = _split(model.make())
        return {"step": jnp.zeros((), jnp.int32), "params": params, "rest": rest,
                "opt": tx.init(params)}

    with jax.set_mesh(mesh):
        return jax.jit(init, out_shardings=shardings)()


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch arrays are split over ('data', 'fsdp') along their leading dimension."""
    return NamedSharding(mesh, PartitionSpec(parallel.BATCH_AXES))


def make_train_step(model: Model, tx: optax.GradientTransformation, shardings, mesh: Mesh, *,
                    loss_type: str = "mod", learning_rate: optax.Schedule | None = None):
    """The jitted step `(state, batch) -> (state, metrics)`; the input state is donated."""

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        # The token tables' gradients come as looked-up rows (m4.train.sparse_rows).
        probe = nnx.merge(model.graphdef, state["params"], state["rest"])
        index = sparse_rows.plan(probe, batch)

        def loss_fn(params, deltas):
            module = nnx.merge(model.graphdef, params, state["rest"])
            return module.loss(dict(batch, **deltas), loss_type)

        deltas = sparse_rows.zero_deltas(index, probe.config.dim)
        (_, metrics), (grads, delta_grads) = jax.value_and_grad(
            loss_fn, argnums=(0, 1), has_aux=True)(state["params"], deltas)
        rows = sparse_rows.by_table(index, delta_grads)
        if hasattr(tx, "apply_gradients"):
            # The fused optimizer (m4.train.optimizer) writes the new parameters directly and
            # hands back the gradient norm it computed anyway: one pass over the parameters.
            params, opt, grad_norm = tx.apply_gradients(grads, state["opt"], state["params"],
                                                        rows=rows)
        else:
            grads = sparse_rows.densify(grads, rows)
            updates, opt = tx.update(grads, state["opt"], state["params"])
            params = optax.apply_updates(state["params"], updates)
            grad_norm = optax.tree.norm(grads)
        metrics = dict(metrics, grad_norm=grad_norm, skipped_steps=opt.total_notfinite)
        if learning_rate is not None:
            metrics["learning_rate"] = learning_rate(state["step"])
        new_state = {"step": state["step"] + 1, "params": params, "rest": state["rest"], "opt": opt}
        return new_state, metrics

    data = batch_sharding(mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(step, in_shardings=(shardings, data), out_shardings=(shardings, replicated),
                     donate_argnums=0)
    compiled = []

    def run(state, batch):
        with jax.set_mesh(mesh):
            if not compiled:
                # Compile ahead of the first step (jit reuses this executable) and hand the
                # compiler's freed heap back before the step allocates its buffers.
                compiled.append(jitted.lower(state, batch).compile())
                release_freed_memory()
            return jitted(state, batch)

    run.jitted = jitted
    return run


def release_freed_memory() -> None:
    """Returns the C heap's free pages to the OS (glibc `malloc_trim`; a no-op elsewhere).

    Compiling the train step leaves ~0.35 GB of freed but still mapped heap behind (tiny model,
    CPU): without this it adds to the peak resident memory of every run."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def make_eval_step(model: Model, shardings, mesh: Mesh, *, loss_type: str = "mod"):
    """The jitted evaluation `(state, batch) -> metrics` (no update, nothing donated)."""

    def evaluate(state: TrainState, batch: dict) -> dict:
        module = nnx.merge(model.graphdef, state["params"], state["rest"])
        return module.loss(batch, loss_type)[1]

    data = batch_sharding(mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(evaluate, in_shardings=(shardings, data), out_shardings=replicated)

    def run(state, batch):
        with jax.set_mesh(mesh):
            return jitted(state, batch)

    run.jitted = jitted
    return run


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Host-local numpy batch -> global jax arrays sharded over the batch axes.

    Each process passes its own slice; `jax.make_array_from_process_local_data` stitches the
    global array (on one process this is a sharded device_put).
    """
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}

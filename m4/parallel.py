"""Device mesh, logical axis rules and sharding helpers.

Every parameter carries logical axis names in its `out_sharding` metadata (e.g. ("vocab",
"embed")); activations are constrained with `constrain(x, ("batch", "length", "embed"))`. One
rules table maps logical names to the mesh axes ('data', 'fsdp', 'tensor'). A logical name whose
mesh axes are already used by an earlier dimension of the same array is left unsharded, so one
table serves parameters (embed -> fsdp) and activations (batch -> data+fsdp, embed -> none).

Meshes use `AxisType.Auto` on every axis (named explicitly: jax.make_mesh's default changed to
Explicit): XLA's partitioner propagates shardings from the parameter placements and the
constraints, so the model code never carries sharding types through every op.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical name -> mesh axis, tuple of mesh axes, or None (replicated).
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("length", None),
    ("kv", None),
    ("layers", None),
)


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh with Auto axis types."""
    shape = (int(data), int(fsdp), int(tensor))
    if min(shape) < 1:
        raise ValueError(f"make_mesh: axis sizes must be >= 1, got data={data}, fsdp={fsdp}, "
                         f"tensor={tensor}")
    devices = list(jax.devices() if devices is None else devices)
    need = int(np.prod(shape))
    if need != len(devices):
        raise ValueError(f"make_mesh: data*fsdp*tensor = {need} must equal the number of devices "
                         f"({len(devices)})")
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _rules_dict(rules) -> dict[str, tuple[str, ...]]:
    out = {}
    for name, axes in rules:
        if axes is None:
            axes = ()
        elif isinstance(axes, str):
            axes = (axes,)
        out[name] = tuple(axes)
    return out


def logical_to_spec(names: Sequence[str | None], rules=LOGICAL_RULES, *,
                    shape: Sequence[int] | None = None,
                    mesh_shape: dict[str, int] | None = None) -> PartitionSpec:
    """PartitionSpec of an array with logical axis `names`.

    A mesh axis is used at most once per array (first dimension wins). With `shape` and
    `mesh_shape`, mesh axes that do not divide a dimension are dropped (that dimension stays
    replicated on them) instead of failing at placement time.
    """
    table = _rules_dict(rules)
    used: set[str] = set()
    spec = []
    for i, name in enumerate(names):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no rule (known: {sorted(table)})")
        axes = [a for a in table[name] if a not in used]
        if mesh_shape is not None:
            axes = [a for a in axes if a in mesh_shape]
            if shape is not None:
                kept, size = [], 1
                for a in axes:
                    if shape[i] % (size * mesh_shape[a]) == 0:
                        kept.append(a)
                        size *= mesh_shape[a]
                axes = kept
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def _mesh_shape(mesh) -> dict[str, int]:
    return dict(zip(mesh.axis_names, mesh.axis_sizes))


def current_mesh():
    """The mesh set with `jax.set_mesh`, or None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None
    return mesh


def constrain(x: jax.Array, names: Sequence[str | None], rules=LOGICAL_RULES) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside a mesh context."""
    mesh = current_mesh()
    if mesh is None:
        return x
    spec = logical_to_spec(names, rules, shape=x.shape, mesh_shape=_mesh_shape(mesh))
    return jax.lax.with_sharding_constraint(x, spec)


def batch_shards() -> int:
    """Number of shards of the batch dimension under the current mesh (1 without a mesh)."""
    mesh = current_mesh()
    if mesh is None:
        return 1
    shape = _mesh_shape(mesh)
    return int(np.prod([shape.get(a, 1) for a in BATCH_AXES]))


def _names_of(v: nnx.Variable, ndim: int) -> tuple:
    names = v.get_metadata().get("out_sharding") or ()
    names = tuple(names)
    if len(names) != ndim:
        raise ValueError(f"variable of rank {ndim} has logical axes {names} of another rank")
    return names


def state_specs(state, mesh=None, rules=LOGICAL_RULES):
    """PartitionSpec for every Variable of an nnx State (same tree structure, Variable leaves
    replaced by their spec)."""
    mesh_shape = _mesh_shape(mesh) if mesh is not None else None

    def spec(v):
        value = v.get_value() if hasattr(v, "get_value") else v.value
        names = _names_of(v, len(value.shape))
        return logical_to_spec(names, rules, shape=value.shape, mesh_shape=mesh_shape)

    return jax.tree.map(spec, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_shardings(state, mesh: Mesh, rules=LOGICAL_RULES):
    """NamedSharding for every Variable of an nnx State."""
    specs = state_specs(state, mesh, rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def create_sharded(make_module, mesh: Mesh, rules=LOGICAL_RULES):
    """Builds an nnx module with its state born sharded on `mesh` (no full copy on one device).

    `make_module()` builds the module (e.g. `lambda: FourM(config, rngs=nnx.Rngs(0))`).
    """
    abstract = nnx.eval_shape(make_module)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh, rules)

    def init():
        return nnx.state(make_module())

    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def shard_module(module, mesh: Mesh, rules=LOGICAL_RULES):
    """Moves an existing module's state onto `mesh` by its logical axes (in place)."""
    state = nnx.state(module)
    shardings = state_shardings(state, mesh, rules)
    nnx.update(module, jax.device_put(state, shardings))
    return module

"""Checkpoints: one small wrapper over orbax's CheckpointManager.

Used by the tokenizer trainer and the model trainer alike. What it adds to orbax:
- a fixed layout, `<dir>/<step>/{state,extra}`: `state` is any pytree of arrays (params, optimizer
  state, statistics), `extra` a JSON-able dict (data iterator position, config hash, wall time);
- restore onto an *abstract* state (`jax.ShapeDtypeStruct`s that carry their sharding), so a run
  resumes directly into the sharding of the current mesh, which may differ from the one it was saved
  with;
- a clear error, naming the directory and the steps present, instead of orbax internals.

Saves are asynchronous (orbax writes in a background thread into a temporary directory and renames
it when complete, so a crash mid-save never leaves a checkpoint that looks whole). Call `wait()` (or
`close()`) before reading a checkpoint back or exiting.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


class CheckpointError(ValueError):
    pass


def abstract_like(state: PyTree) -> PyTree:
    """The abstract twin of a concrete state: shapes, dtypes and shardings, no data."""

    def to_abstract(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        x = np.asarray(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype)

    return jax.tree.map(to_abstract, state)


class Checkpointer:
    """Keeps the last `max_to_keep` checkpoints of a run under `directory`.

    `save_interval_steps` makes `save` a no-op on other steps unless `force=True` (the final step
    of a run is always saved with force).
    """

    def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 3,
                 save_interval_steps: int = 1, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        # The interval is applied here, not by orbax: orbax also saves the first step it sees,
        # which would make a run's first checkpoint land on an arbitrary step.
        self.save_interval_steps = max(1, int(save_interval_steps))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            # A run killed mid-save leaves a temporary directory behind; remove it on restart.
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "extra"))

    # ---------------------------------------------------------------------------------- queries
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    # ------------------------------------------------------------------------------------ save
    def save(self, step: int, state: PyTree, extra: dict | None = None, *,
             force: bool = False) -> bool:
        """Starts saving `state` (and `extra`) as `step`; returns whether a save was started.

        Without `force`, only steps that are multiples of `save_interval_steps` are saved."""
        if not force and step % self.save_interval_steps:
            return False
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            extra=ocp.args.JsonSave(dict(extra or {})),
        )
        return bool(self._manager.save(int(step), args=args, force=force))

    # --------------------------------------------------------------------------------- restore
    def restore(self, abstract_state: PyTree, step: int | None = None) -> tuple[PyTree, dict]:
        """Restores `step` (default: the latest) onto `abstract_state`; returns (state, extra).

        `abstract_state` gives the structure, dtypes and target shardings (see `abstract_like`,
        or `jax.eval_shape` of the init function with shardings attached).
        """
        self.wait()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise CheckpointError(f"no checkpoint to restore in {self.directory}")
            step = steps[-1]
        if step not in steps:
            raise CheckpointError(
                f"checkpoint step {step} not found in {self.directory}; present: {steps}")
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            extra=ocp.args.JsonRestore(),
        )
        try:
            restored = self._manager.restore(step, args=args)
        except (ValueError, KeyError) as e:
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} does not match the expected state structure "
                f"(was it written by a different config?): {e}") from e
        return restored["state"], dict(restored["extra"] or {})

    # -------------------------------------------------------------------------------- lifetime
    def wait(self) -> None:
        """Blocks until any asynchronous save has been committed to disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

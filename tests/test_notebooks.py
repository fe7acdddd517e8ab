"""Every notebook in notebooks/ runs top to bottom (nbclient, a real kernel) on a tiny random
model with tiny trained tokenizers, shows its pictures inline, and is committed without outputs.

The kernel gets the tiny settings through the notebooks' environment variables (M4_CHECKPOINT,
M4_TOKENIZERS, M4_STEPS, ...) and inherits the suite's JAX compilation cache (conftest.py).
"""

from __future__ import annotations

import os
import pathlib

import nbformat
import pytest
from flax import nnx
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from m4.model import FourM, preset
from m4.pretokenize import find_tokenizers, modality_spec
from m4.train.model_io import save_model

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
# Generous per cell: a cold compilation cache on a loaded 2-core machine is slow; a hang still
# fails.
CELL_TIMEOUT_S = 600
# Committed notebooks stay small: text and code only.
MAX_NOTEBOOK_BYTES = 40_000


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_tokenizers, tmp_path_factory) -> pathlib.Path:
    """A random-init tiny FourM over the tiny tokenizers' modalities, saved as `m4 train` does."""
    specs = [modality_spec(tok) for tok in find_tokenizers(tiny_tokenizers).values()]
    config = preset("tiny", specs, dim=32, num_heads=2, encoder_depth=2, decoder_depth=2)
    return save_model(tmp_path_factory.mktemp("notebook_model") / "model",
                      FourM(config, rngs=nnx.Rngs(0)))


def tiny_env(checkpoint: pathlib.Path, tokenizers: pathlib.Path) -> dict[str, str]:
    return dict(os.environ, M4_CHECKPOINT=str(checkpoint), M4_TOKENIZERS=str(tokenizers),
                M4_STEPS="2", M4_CAPTION_TOKENS="8", M4_SAMPLES="2", M4_SEED="0")


def execute(path: pathlib.Path, env: dict[str, str]) -> nbformat.NotebookNode:
    """Runs the notebook in a fresh kernel with `env`, from its own directory (as Jupyter does);
    raises CellExecutionError at the first failing cell."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=env)
    return nb


def images_shown(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {})
               for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOKS_DIR}"
    assert NOTEBOOKS_DIR / "any_to_any.ipynb" in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, tiny_checkpoint, tiny_tokenizers):
    nb = execute(path, tiny_env(tiny_checkpoint, tiny_tokenizers))
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors
    # Each generation section draws its pictures inline (not only text).
    assert images_shown(nb) >= 4, f"{path.name}: only {images_shown(nb)} images shown"


def test_any_to_any_without_checkpoint_asks_for_make_demo(tmp_path):
    env = tiny_env(tmp_path / "no_model", tmp_path / "no_tokenizers")
    with pytest.raises(CellExecutionError) as failure:
        execute(NOTEBOOKS_DIR / "any_to_any.ipynb", env)
    message = str(failure.value)
    assert "FileNotFoundError" in message and "make demo" in message
    assert str(tmp_path / "no_model") in message


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path):
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{path.name}: {path.stat().st_size} bytes"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert (cell.outputs == [] and cell.execution_count is None
                    and "execution" not in cell.metadata), (
                f"{path.name} cell {i}: clear its outputs before committing")

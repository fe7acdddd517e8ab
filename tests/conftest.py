"""Shared test helpers.

Fixtures from ../shared/fixtures: a test that needs one skips with a clear reason when it is
absent, except under CI (CI=true), where a missing fixture is a failure.
"""

from __future__ import annotations

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# A persistent XLA compilation cache shared by every test and the subprocesses they start:
# the suite compiles many identical small programs, and a cache hit costs a fraction of a compile.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO_ROOT / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


def shared_fixture(name: str) -> pathlib.Path:
    path = SHARED_FIXTURES / name
    if not path.exists():
        message = f"shared fixture {name!r} not found at {path}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (required under CI)")
        pytest.skip(message)
    return path


TINY_TOKENIZER_MODALITIES = ("rgb", "depth", "semseg", "poses", "caption")


@pytest.fixture(scope="session")
def tiny_tokenizers(tmp_path_factory):
    """Tiny trained tokenizers (rgb, depth, semseg, poses, caption; 32x32 scenes), one artifact
    directory per modality under the returned directory. Trained once per test session."""
    from m4.config import load_config
    from m4.tokenizers.train import train

    root = tmp_path_factory.mktemp("tiny_tokenizers")
    cache = tmp_path_factory.mktemp("tiny_tokenizer_scenes")
    for modality in TINY_TOKENIZER_MODALITIES:
        config = load_config(str(REPO_ROOT / "tokenizers" / f"{modality}.py") + ":tiny",
                             [f"data.cache_dir={cache}"])
        workdir = tmp_path_factory.mktemp(f"train_{modality}")
        artifact = train(config, workdir, progress=False)
        artifact.rename(root / modality)
    return root

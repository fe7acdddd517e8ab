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

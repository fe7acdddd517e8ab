"""The "auto" compute dtype: bfloat16 only where the hardware has bf16 dot instructions."""

import pytest

from m4 import precision
from m4.model.configs import DTYPES


def test_accelerators_compute_in_bfloat16():
    assert precision.fast_compute_dtype("gpu") == "bfloat16"
    assert precision.fast_compute_dtype("tpu") == "bfloat16"


@pytest.mark.parametrize("flags, expected", [([], "float32"), (["avx512_bf16"], "bfloat16"),
                                             (["amx_bf16", "avx512_bf16"], "bfloat16")])
def test_cpu_follows_its_bf16_instructions(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_features",
                        lambda: {"model": "test", "bf16_dot_instructions": flags})
    assert precision.fast_compute_dtype("cpu") == expected
    assert precision.resolve_dtype("auto") in DTYPES


def test_explicit_dtypes_pass_through():
    assert precision.resolve_dtype("float32") == "float32"
    assert precision.resolve_dtype("bfloat16") == "bfloat16"
    assert precision.resolve_dtype(None) is None


def test_this_machine_reports_its_features():
    features = precision.cpu_features()
    assert set(features) == {"model", "bf16_dot_instructions"}
    assert precision.fast_compute_dtype() in DTYPES


def test_train_config_auto_dtype_is_made_concrete(monkeypatch):
    from m4.config import load_config
    from m4.modalities import ModalitySpec
    from m4.train.loop import model_config

    monkeypatch.setattr(precision, "cpu_features",
                        lambda: {"model": "test", "bf16_dot_instructions": ["amx_bf16"]})
    config = load_config("experiments/demo.py:test", ["--config.model.dtype=auto"])
    specs = (ModalitySpec("rgb", "image", vocab_size=32, grid=(4, 4)),)
    assert model_config(config, specs).dtype == "bfloat16"

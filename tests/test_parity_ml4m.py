"""The imported reference checkpoint reproduces the reference outputs of the ml4m_parity fixture.

Tolerances (float32): inputs 1e-5, encoder/decoder outputs and logits 1e-4 max abs, losses
('mod', 'token', per modality) 1e-5 relative; integer arrays exact.
"""

import json

import pytest
from conftest import shared_fixture

from m4.convert import ml4m
from m4.convert.verify import TOLERANCES, verify_fixture


@pytest.fixture(scope="module")
def fixture_dir():
    return shared_fixture("ml4m_parity")


def _check(report):
    assert report["passed"], json.dumps(report["failed"])
    flat = {f"{c}:{k}": v for c, d in report["cases"].items() for k, v in d.items()}
    # Every quantity of the fixture was compared (2 cases; logits of every non-empty modality).
    assert sum(k.endswith("/logits") for k in flat) == 4
    assert sum(k.endswith("/output") and ":encoder/" in k for k in flat) == 5
    assert sum(":loss/" in k for k in flat) == 11
    worst = {q: max(v for k, v in flat.items() if k.endswith(q))
             for q in ("/input", "/output", "/logits")}
    assert worst["/input"] < TOLERANCES["input"]
    assert worst["/output"] < TOLERANCES["output"]
    assert worst["/logits"] < TOLERANCES["logits"]
    return worst


def test_fixture_parity(fixture_dir):
    model, config = ml4m.load(fixture_dir / "model.safetensors")
    assert config.share_modality_embeddings and not config.tie_logits
    worst = _check(verify_fixture(model, fixture_dir))
    print("max abs diffs:", worst)


def test_fixture_parity_with_config_json_and_other_code_paths(fixture_dir):
    # config.json instead of the metadata; unrolled layers, full-vocabulary loss.
    model, _ = ml4m.load(fixture_dir / "model.safetensors", fixture_dir / "config.json",
                         scan_layers=False, logits="full")
    _check(verify_fixture(model, fixture_dir))


def test_sincos_tables_equal_the_reference_buffers(fixture_dir):
    import numpy as np
    from safetensors.numpy import load_file

    from m4.model.layers import sincos_1d, sincos_2d

    sd = load_file(str(fixture_dir / "model.safetensors"))
    np.testing.assert_allclose(sincos_2d(14, 14, 16),
                               sd["encoder_embeddings.tok_rgb@224.pos_emb"][0], atol=1e-6)
    # float32 sin/cos of arguments up to 511 differ between libraries by a few ulp of 511.
    np.testing.assert_allclose(sincos_1d(512, 16),
                               sd["decoder_embeddings.caption.pos_emb"][0], atol=1e-4)
    np.testing.assert_allclose(sincos_1d(512, 16)[:64],
                               sd["decoder_embeddings.caption.pos_emb"][0, :64], atol=1e-6)

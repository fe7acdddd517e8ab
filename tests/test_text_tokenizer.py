"""The caption tokenizer: SentencePiece with reserved ids and sentinels, exact round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

import m4.tokenizers as tokenizers
from m4.config import load_config
from m4.data import scenes
from m4.tokenizers import artifact, text
from m4.tokenizers.train import train


@pytest.fixture(scope="module")
def captions():
    data = scenes.render_batch(0, range(120), scenes.SceneConfig(resolution=32))
    return data["caption"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    cfg = load_config("tokenizers/caption.py:tiny",
                      [f"data.cache_dir={tmp_path_factory.mktemp('cache')}"])
    return tokenizers.load(train(cfg, tmp_path_factory.mktemp("tok_caption"), progress=False))


def test_special_ids_and_sentinels(tok):
    assert tok.special_ids == {"pad": 0, "unk": 1, "sos": 2, "eos": 3, "sentinel_start": 4,
                               "num_sentinels": 128}
    assert tok.num_sentinels >= 100
    assert tok.sentinel_id(0) == 4 and tok.sentinel_id(127) == 131
    # A sentinel written in text is one token with its reserved id.
    ids = tok.piece_ids("a [S_5] b [S_127]")
    assert 9 in ids and 131 in ids
    assert tok.decode(np.asarray([[tok.sentinel_id(1), 3]]))[0] == "[S_1]"
    with pytest.raises(ValueError, match="sentinel index"):
        tok.sentinel_id(128)


def test_encode_layout_eos_and_padding(tok):
    out = tok.encode(["a red box at the front left.", "a blue sphere"])
    assert out.dtype == np.int32 and out.shape == (2, 128)
    for row in out:
        n = int((row != 0).sum())
        assert row[n - 1] == 3 and (row[n:] == 0).all() and 3 not in row[:n - 1]


def test_roundtrip_exact_on_held_out_captions(tok):
    held_out = scenes.render_batch(77, range(40), scenes.SceneConfig(resolution=32))["caption"]
    assert tok.decode(tok.encode(held_out)) == held_out


@pytest.mark.parametrize("s", ["  two  leading and trailing  ", "Ünïcödé ✓ 12345 zebra!",
                               "tab\tand\nnewline", "x"])
def test_roundtrip_exact_on_unseen_text(tok, s):
    assert tok.decode(tok.encode([s])) == [s]


def test_decode_stops_at_eos_and_skips_padding(tok):
    ids = tok.piece_ids("a red box")
    row = np.asarray([ids + [3] + ids + [0, 0]])
    assert tok.decode(row) == ["a red box"]


def test_refuses_long_text_and_bad_input(tok):
    with pytest.raises(tokenizers.TokenizerInputError, match=r"input\[1\] length.*at most 127"):
        tok.encode(["short", "word " * 400])
    with pytest.raises(tokenizers.TokenizerInputError, match="single str"):
        tok.encode("a caption")
    with pytest.raises(tokenizers.TokenizerInputError, match=r"input\[0\].*str"):
        tok.encode([3])
    with pytest.raises(tokenizers.TokenizerInputError, match="ids"):
        tok.decode(np.asarray([[tok.vocab_size]]))


def test_artifact_roundtrip(tok, tmp_path):
    spec = json.loads((tok.path / "spec.json").read_text())
    assert spec["kind"] == "text" and spec["vocab_size"] == tok.vocab_size
    assert (tok.path / "tokenizer.model").exists()
    again = tokenizers.load(tok.path)
    assert again.encode(["a green box"]).tolist() == tok.encode(["a green box"]).tolist()
    for f in tok.path.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    config = (tmp_path / "config.json").read_text()
    assert '"max_len": 128' in config
    (tmp_path / "config.json").write_text(config.replace('"max_len": 128', '"max_len": 200'))
    with pytest.raises(artifact.ArtifactError, match="content hash"):
        tokenizers.load(tmp_path)


def test_train_sentencepiece_requires_100_sentinels(captions):
    with pytest.raises(ValueError, match="num_sentinels must be >= 100"):
        text.train_sentencepiece(captions, vocab_size=500, num_sentinels=50)

"""The reference's WordPiece caption tokenizer (HuggingFace JSON) behind m4's text interface.

The JSON is built here with the reference's recipe (BERT normaliser with lowercase, BERT
pre-tokenizer, WordPiece with "##", special tokens [PAD] [UNK] [SOS] [EOS] [S_0]..[S_199] in that
order) and trained on captions of rendered scenes, so no file is downloaded.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

hf = pytest.importorskip("tokenizers")

import m4.tokenizers as m4_tokenizers  # noqa: E402
from m4.data import scenes  # noqa: E402
from m4.data.span_masking import SentinelSpec  # noqa: E402
from m4.pretokenize import text_sentinels  # noqa: E402
from m4.tokenizers.spec import TokenizerInputError  # noqa: E402
from m4.tokenizers.wordpiece import (WordPieceLayoutError, WordPieceTokenizer,  # noqa: E402
                                     load_wordpiece)

NUM_SENTINELS = 200
MAX_LEN = 96
SCENES = scenes.SceneConfig(resolution=32)   # captions only: a small render is enough


def _captions(seed: int, n: int) -> list[str]:
    return scenes.render_batch(seed, range(n), SCENES)["caption"]


def _reference_layout_tokenizer(captions: list[str], vocab_size: int = 400):
    tok = hf.Tokenizer(hf.models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = hf.normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = hf.pre_tokenizers.BertPreTokenizer()
    tok.decoder = hf.decoders.WordPiece(prefix="##")
    sentinels = [hf.AddedToken(f"[S_{i}]", single_word=True, normalized=False)
                 for i in range(NUM_SENTINELS)]
    trainer = hf.trainers.WordPieceTrainer(
        vocab_size=vocab_size, continuing_subword_prefix="##", show_progress=False,
        special_tokens=["[PAD]", "[UNK]", "[SOS]", "[EOS]", *sentinels])
    tok.train_from_iterator(captions, trainer=trainer)
    return tok


@pytest.fixture(scope="module")
def reference_json(tmp_path_factory):
    """(path of the reference-layout JSON, its HF tokenizer)."""
    hf_tok = _reference_layout_tokenizer(_captions(0, 240))
    path = tmp_path_factory.mktemp("wordpiece") / "text_tokenizer_wordpiece.json"
    hf_tok.save(str(path))
    return path, hf_tok


@pytest.fixture(scope="module")
def tok(reference_json) -> WordPieceTokenizer:
    return load_wordpiece(reference_json[0], max_len=MAX_LEN)


def _edited_json(reference_json, tmp_path, edit) -> str:
    text = reference_json[0].read_text()
    out = tmp_path / "edited.json"
    out.write_text(edit(text))
    return str(out)


# ------------------------------------------------------------------------------- special ids
def test_special_ids_are_read_from_the_file(tok, reference_json):
    hf_tok = reference_json[1]
    assert tok.special_ids == {"pad": 0, "unk": 1, "sos": 2, "eos": 3, "sentinel_start": 4,
                               "num_sentinels": NUM_SENTINELS}
    assert [hf_tok.id_to_token(i) for i in range(4)] == ["[PAD]", "[UNK]", "[SOS]", "[EOS]"]
    assert tok.sentinel_id(0) == 4 and tok.sentinel_id(199) == 203
    assert hf_tok.token_to_id("[S_199]") == 203
    with pytest.raises(ValueError, match="sentinel index"):
        tok.sentinel_id(NUM_SENTINELS)
    # Span masking sees exactly the reference's sentinel layout.
    assert text_sentinels(tok) == SentinelSpec.reference()
    assert tok.vocab_size == hf_tok.get_vocab_size() == tok.spec.vocab_size
    assert tok.token_shape == (MAX_LEN,) and tok.modality == "caption"
    assert tok.spec.kind == "text" and len(tok.spec.content_hash) == 64


# ------------------------------------------------------------------------------------ encode
def test_encode_layout_ids_then_eos_then_pad(tok, reference_json):
    texts = ["A large red sphere at the front left.", "a small blue box"]
    ids = tok.encode(texts)
    assert ids.dtype == np.int32 and ids.shape == (2, MAX_LEN)
    for row, text in zip(ids, texts):
        pieces = reference_json[1].encode(text).ids
        assert pieces and 0 not in pieces and 3 not in pieces
        n = len(pieces)
        assert row[:n].tolist() == pieces == tok.piece_ids(text)
        assert row[n] == 3                                     # [EOS]
        assert (row[n + 1:] == 0).all()                        # [PAD]


def test_round_trip_of_held_out_captions_is_the_lowercased_text(tok):
    captions = _captions(1, 40)                                # not seen in training
    decoded = tok.decode(tok.encode(captions))
    assert decoded == [c.lower() for c in captions]
    assert tok.decode(tok.encode(["A Large RED Sphere."])) == ["a large red sphere."]


def test_continuation_pieces_are_joined_into_words(tok, reference_json):
    word = "greenish"                                          # not a caption word
    pieces = reference_json[1].encode(word).tokens
    assert len(pieces) > 1 and all(p.startswith("##") for p in pieces[1:])
    assert tok.decode(tok.encode([f"a {word} here"])) == [f"a {word} here"]


def test_decoder_is_the_wordpiece_one(reference_json, tmp_path):
    def with_decoder(decoder):
        def edit(text):
            data = json.loads(text)
            data["decoder"] = decoder
            return json.dumps(data)
        return edit

    # A file saved without a decoder gets the reference's, so "##" pieces still join.
    bare = load_wordpiece(_edited_json(reference_json, tmp_path, with_decoder(None)))
    assert bare.decode(bare.encode(["a greenish box"])) == ["a greenish box"]
    other = _edited_json(reference_json, tmp_path, with_decoder(
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
         "use_regex": True}))
    with pytest.raises(WordPieceLayoutError, match="expected a 'WordPiece' decoder.*ByteLevel"):
        load_wordpiece(other)


def test_sentinels_in_text_map_to_sentinel_ids_and_back(tok):
    ids = tok.encode(["a red [S_1] sphere", "[S_0] box [S_199]"])
    first = tok.piece_ids("a red sphere")
    assert ids[0, :4].tolist() == [first[0], first[1], tok.sentinel_id(1), first[2]]
    assert ids[1, 0] == tok.sentinel_id(0) and tok.sentinel_id(199) in ids[1].tolist()
    assert tok.decode(ids) == ["a red [S_1] sphere", "[S_0] box [S_199]"]


def test_decode_stops_at_eos_and_skips_pad(tok):
    a, red, sphere, box = (tok.piece_ids(w)[0] for w in ("a", "red", "sphere", "box"))
    rows = np.asarray([[a, 0, red, sphere, 3, box, box, 0],
                       [2, tok.sentinel_id(3), box, 0, 0, 0, 0, 0]])   # [SOS] skipped too
    assert tok.decode(rows) == ["a red sphere", "[S_3] box"]
    with pytest.raises(TokenizerInputError, match="expected values in"):
        tok.decode(np.asarray([[tok.vocab_size]]))
    with pytest.raises(TokenizerInputError, match=r"integer ids \[B, L\]"):
        tok.decode(np.asarray([a, red]))


def test_bad_text_input_is_refused(tok):
    with pytest.raises(TokenizerInputError, match="single str"):
        tok.encode("a red sphere")
    with pytest.raises(TokenizerInputError, match=r"input\[1\] length: expected at most 95"):
        tok.encode(["a box", "a red sphere " * 40])
    with pytest.raises(TokenizerInputError, match=r"input\[0\].*control tokens.*\[EOS\]"):
        tok.encode(["a red [EOS] sphere"])
    with pytest.raises(TokenizerInputError, match=r"input\[0\]: expected str"):
        tok.encode([3])


# ------------------------------------------------------------------------------ m4 loading
def test_m4_tokenizers_load_accepts_the_json(tok, reference_json):
    loaded = m4_tokenizers.load(reference_json[0])
    assert isinstance(loaded, WordPieceTokenizer)
    assert loaded.spec.content_hash == load_wordpiece(reference_json[0]).spec.content_hash
    assert loaded.token_shape == (256,)                        # the reference caption length
    text = ["a small green person at the back right."]
    assert loaded.encode(text)[0, :MAX_LEN].tolist() == tok.encode(text)[0].tolist()


def test_json_without_the_reference_layout_is_refused(reference_json, tmp_path):
    no_sos = _edited_json(reference_json, tmp_path, lambda t: t.replace('"[SOS]"', '"[BOS]"'))
    with pytest.raises(WordPieceLayoutError, match=r"\[SOS\]: expected id 2.*missing"):
        load_wordpiece(no_sos)
    no_s1 = _edited_json(reference_json, tmp_path, lambda t: t.replace('"[S_1]"', '"[X_1]"'))
    with pytest.raises(WordPieceLayoutError, match=r"sentinels: .*found 1; \[S_1\] is missing"):
        load_wordpiece(no_s1)
    # Specials in another order (BERT's usual [UNK] first) are refused, never re-mapped.
    swapped = hf.Tokenizer(hf.models.WordPiece(
        {"[UNK]": 0, "[PAD]": 1, "[SOS]": 2, "[EOS]": 3, "a": 4}, unk_token="[UNK]"))
    (tmp_path / "swapped.json").write_text(swapped.to_str())
    with pytest.raises(WordPieceLayoutError, match=r"\[PAD\]: expected id 0.*received 1"):
        m4_tokenizers.load(tmp_path / "swapped.json")
    bpe = tmp_path / "bpe.json"
    bpe.write_text(hf.Tokenizer(hf.models.BPE()).to_str())
    with pytest.raises(WordPieceLayoutError, match="expected .*'WordPiece' model, received 'BPE'"):
        m4_tokenizers.load(bpe)
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(WordPieceLayoutError, match="received None"):
        load_wordpiece(tmp_path / "other.json")


def test_missing_tokenizers_package_says_how_to_install(reference_json, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)       # `import tokenizers` now fails
    with pytest.raises(ImportError, match=r"pip install 'm4\[hf\]'"):
        load_wordpiece(reference_json[0])
    with pytest.raises(ImportError, match=r"pip install 'm4\[hf\]'"):
        m4_tokenizers.load(reference_json[0])

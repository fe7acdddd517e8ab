"""The reference's WordPiece text tokenizer (a HuggingFace `tokenizers` JSON) as a caption tokenizer.

    tok = load_wordpiece("text_tokenizer_4m_wordpiece_30k.json")   # or m4.tokenizers.load(path)
    ids = tok.encode(["A red [S_1] sphere."])    # int32 [1, 256]: ids, [EOS], then [PAD]s
    tok.decode(ids)                              # ["a red [S_1] sphere."]

A model converted from the reference reads and writes text with this vocabulary. The interface is
that of `text.TextTokenizer` (encode / decode / special_ids / sentinel_id / piece_ids / spec /
vocab_size / token_shape / modality), so pre-tokenization, span masking and generation take either.

Id layout, read from the file and checked (REFERENCE_4M.md 3.4):
    0 [PAD]   1 [UNK]   2 [SOS]   3 [EOS]   4.. [S_0] .. [S_{n-1}]  (n = 200 in the reference)
    then whatever the file adds (coordinate tokens, class names, learned pieces).
The text is normalised by the file's own normaliser (BERT, lowercase), so decode(encode(text)) is
the lowercased text with the reference's spacing rules, not the text itself.

`tokenizers` is an optional dependency: pip install 'm4[hf]'.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Sequence

import numpy as np

from m4.tokenizers.spec import PreprocessSpec, TokenizerInputError
from m4.tokenizers.text import text_rows

# The reference's special tokens, in id order; the sentinels follow them.
CONTROL_TOKENS = ("[PAD]", "[UNK]", "[SOS]", "[EOS]")
MIN_SENTINELS = 3   # [S_0] (reserved), [S_1] (first mask) and a closing one: SentinelSpec needs 2
INSTALL_HINT = "pip install 'm4[hf]'  (or: pip install 'tokenizers>=0.15')"


class WordPieceLayoutError(ValueError):
    """A tokenizer JSON that is not a WordPiece tokenizer with the reference's special ids."""


def sentinel_piece(i: int) -> str:
    return f"[S_{i}]"


def _import_tokenizers():
    """The `tokenizers` package, imported only when a WordPiece file is actually loaded."""
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError(f"loading a WordPiece tokenizer needs the HuggingFace `tokenizers` "
                          f"package, which is not installed: {INSTALL_HINT}") from e
    return tokenizers


def is_wordpiece_json(path: str | pathlib.Path) -> bool:
    """True if `path` is a .json file holding a HuggingFace tokenizer with a WordPiece model."""
    path = pathlib.Path(path)
    if path.suffix != ".json" or not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    model = data.get("model") if isinstance(data, dict) else None
    return isinstance(model, dict) and model.get("type") == "WordPiece"


def load_wordpiece(json_path: str | pathlib.Path, *, modality: str = "caption",
                   max_len: int = 256, resolution: int = 224) -> "WordPieceTokenizer":
    """Loads a HuggingFace WordPiece tokenizer JSON with the reference's special-id layout.

    max_len: tokens per example including [EOS] (the reference's caption `max_tokens` is 256).
    resolution: the image side of the data it goes with (only recorded in the spec).
    """
    path = pathlib.Path(json_path)
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
        raise ValueError(f"load_wordpiece: max_len: expected an int >= 2 (ids plus [EOS]), "
                         f"received {max_len!r}")
    if not path.is_file():
        raise FileNotFoundError(f"load_wordpiece: {path}: no such file")
    payload = path.read_bytes()
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WordPieceLayoutError(f"{path}: not a JSON file ({e})") from None
    model = data.get("model") if isinstance(data, dict) else None
    model_type = model.get("type") if isinstance(model, dict) else None
    if model_type != "WordPiece":
        raise WordPieceLayoutError(f"{path}: model type: expected a HuggingFace tokenizer JSON "
                                   f"with a 'WordPiece' model, received {model_type!r}")
    tokenizers = _import_tokenizers()
    try:
        hf = tokenizers.Tokenizer.from_str(payload.decode())
    except Exception as e:  # the Rust side raises a plain Exception for malformed files
        raise WordPieceLayoutError(f"{path}: the tokenizers package cannot read it: {e}") from e
    _ensure_wordpiece_decoder(hf, data.get("decoder"), model, tokenizers, path)
    num_sentinels = _check_layout(hf, path)
    vocab_size = hf.get_vocab_size(with_added_tokens=True)
    spec = PreprocessSpec(
        modality=modality, kind="text", dtype="str", shape=(), normalization="text",
        resolution=resolution, vocab_size=vocab_size, token_shape=(max_len,),
        norm_params={"pad_id": 0, "unk_id": 1, "sos_id": 2, "eos_id": 3, "sentinel_start": 4,
                     "num_sentinels": num_sentinels, "tokenizer": "wordpiece",
                     "source": path.name},
        description=f"WordPiece ({vocab_size} ids) from {path.name}")
    spec = dataclasses.replace(spec, content_hash=_content_hash(payload, spec))
    return WordPieceTokenizer(hf, spec, path)


def _ensure_wordpiece_decoder(hf, decoder: dict | None, model: dict, tokenizers,
                              path: pathlib.Path) -> None:
    """decode must glue "##" pieces back onto words, as the reference's WordPiece decoder does."""
    if decoder is None:  # a bare file: give it the decoder the reference trains with
        prefix = model.get("continuing_subword_prefix") or "##"
        hf.decoder = tokenizers.decoders.WordPiece(prefix=prefix, cleanup=True)
        return
    kind = decoder.get("type") if isinstance(decoder, dict) else None
    if kind != "WordPiece":
        raise WordPieceLayoutError(f"{path}: decoder: expected a 'WordPiece' decoder (joins "
                                   f"'##' pieces into words), received {kind!r}")


def _check_layout(hf, path: pathlib.Path) -> int:
    """Checks [PAD] [UNK] [SOS] [EOS] at 0..3 and [S_0].. from 4; returns the sentinel count."""
    vocab = hf.get_vocab(with_added_tokens=True)
    for want_id, token in enumerate(CONTROL_TOKENS):
        got = vocab.get(token)
        if got != want_id:
            raise WordPieceLayoutError(
                f"{path}: special token {token}: expected id {want_id} (the reference layout "
                f"[PAD]=0 [UNK]=1 [SOS]=2 [EOS]=3 [S_0]=4..), received "
                f"{'none (missing)' if got is None else got}")
    n = 0
    while vocab.get(sentinel_piece(n)) == len(CONTROL_TOKENS) + n:
        n += 1
    if n < MIN_SENTINELS:
        got = vocab.get(sentinel_piece(n))
        raise WordPieceLayoutError(
            f"{path}: sentinels: expected [S_0], [S_1], ... at consecutive ids from "
            f"{len(CONTROL_TOKENS)} (at least {MIN_SENTINELS}), found {n}; {sentinel_piece(n)} "
            f"is {'missing' if got is None else f'at id {got}'}")
    stray = sorted(t for t in vocab if t.startswith("[S_") and t.endswith("]")
                   and t[3:-1].isdigit() and int(t[3:-1]) >= n)
    if stray:
        raise WordPieceLayoutError(
            f"{path}: sentinels: expected [S_0]..[S_{n - 1}] followed by no other [S_i], but "
            f"{stray[:3]} sit elsewhere (ids {[vocab[t] for t in stray[:3]]})")
    # Typed sentinels must stay whole ("a [S_1] b"), which only added tokens do.
    added = hf.get_added_tokens_decoder()
    for i in (0, n - 1):
        sid = len(CONTROL_TOKENS) + i
        if sid not in added:
            raise WordPieceLayoutError(
                f"{path}: sentinel {sentinel_piece(i)} (id {sid}): expected an added token, so "
                f"that '[S_i]' in text maps to its id; it is only a vocabulary piece")
    return n


def _content_hash(payload: bytes, spec: PreprocessSpec) -> str:
    """sha256 of the JSON bytes and the spec: names this tokenizer in shard manifests."""
    h = hashlib.sha256()
    for part in (payload, spec.canonical_json().encode()):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


class WordPieceTokenizer:
    """A HuggingFace WordPiece tokenizer behind m4's caption tokenizer interface."""

    PAD_ID, UNK_ID, SOS_ID, EOS_ID, SENTINEL_START = 0, 1, 2, 3, 4

    def __init__(self, hf_tokenizer, spec: PreprocessSpec, path: pathlib.Path | None = None):
        self._hf = hf_tokenizer
        self.spec = spec
        self.config = None          # no m4 training config: it was trained by the reference
        self.path = path
        self.modality = spec.modality
        self.max_len = spec.token_shape[0]
        self.token_shape = spec.token_shape
        self.vocab_size = spec.vocab_size
        self.num_sentinels = int(spec.norm_params["num_sentinels"])

    # ------------------------------------------------------------------------------ ids
    def sentinel_id(self, i: int) -> int:
        if not 0 <= i < self.num_sentinels:
            raise ValueError(f"sentinel index must be in [0, {self.num_sentinels}), got {i}")
        return self.SENTINEL_START + i

    @property
    def special_ids(self) -> dict[str, int]:
        return {"pad": self.PAD_ID, "unk": self.UNK_ID, "sos": self.SOS_ID, "eos": self.EOS_ID,
                "sentinel_start": self.SENTINEL_START, "num_sentinels": self.num_sentinels}

    def piece_ids(self, text: str) -> list[int]:
        """The ids of one text, without [EOS] or padding."""
        # One text at a time, never encode_batch: the batch path starts a thread pool, and a
        # process that forks afterwards (data loader workers) gets its parallelism disabled.
        return self._hf.encode(text, add_special_tokens=False).ids

    # ---------------------------------------------------------------------- encode / decode
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> int32 [B, max_len]: ids, [EOS], then [PAD] up to max_len."""
        name = f"{self.modality} tokenizer"
        if isinstance(texts, str):
            raise TokenizerInputError(f"{name}: input: expected a batch (list) of strings, "
                                      f"received a single str; wrap it: [text]")
        texts = list(texts)
        if not texts:
            raise TokenizerInputError(f"{name}: input: expected B >= 1 texts, received 0")
        out = np.full((len(texts), self.max_len), self.PAD_ID, np.int32)   # [B, max_len]
        control = {self.PAD_ID: "[PAD]", self.SOS_ID: "[SOS]", self.EOS_ID: "[EOS]"}
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TokenizerInputError(f"{name}: input[{i}]: expected str, received "
                                          f"{type(text).__name__}")
            ids = self.piece_ids(text)
            typed = sorted({control[t] for t in ids if t in control})
            if typed:  # a literal "[EOS]" in a caption would end it early when decoded
                raise TokenizerInputError(f"{name}: input[{i}]: expected text without the "
                                          f"control tokens {list(control.values())}, received "
                                          f"text containing {typed}")
            if len(ids) + 1 > self.max_len:
                raise TokenizerInputError(
                    f"{name}: input[{i}] length: expected at most {self.max_len - 1} tokens "
                    f"(max_len {self.max_len} minus [EOS]), received {len(ids)} tokens "
                    f"({len(text)} characters)")
            out[i, :len(ids)] = ids
            out[i, len(ids)] = self.EOS_ID
        return out

    def decode(self, tokens) -> list[str]:
        """int [B, L] ids -> texts: stops at [EOS], skips [PAD] and [SOS], joins "##" pieces,
        writes sentinels as "[S_i]" (and [UNK] as "[UNK]")."""
        rows = text_rows(tokens, self.modality, self.vocab_size, eos=self.EOS_ID,
                         skip=(self.PAD_ID, self.SOS_ID))
        # skip_special_tokens=False keeps sentinels, [UNK] and the reference's coordinate and
        # class tokens in the text; [PAD]/[SOS] are already removed.
        return [self._hf.decode(row, skip_special_tokens=False) for row in rows]

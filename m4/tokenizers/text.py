"""The caption tokenizer: SentencePiece trained on the dataset's captions.

Id layout (mirrors the reference's WordPiece layout, REFERENCE_4M.md 3.4, so that span masking
code reads the same):
    0 [PAD]   1 [UNK]   2 [SOS]   3 [EOS]   4.. [S_0] .. [S_{n-1}]  (n = num_sentinels >= 100)
    then the learned pieces, then the 256 byte pieces (byte fallback).
Byte fallback means no character is ever unknown, and the normaliser is the identity with
whitespace kept as is, so decode(encode(text)) == text for any text (the round-trip test).

`encode(texts)` -> int32 [B, max_len]: the ids of each text, then [EOS], then [PAD]s. A text that
does not fit is refused (never truncated silently). `decode(tokens)` stops at the first [EOS],
skips [PAD] and writes sentinels as "[S_i]".
"""

from __future__ import annotations

import io
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from m4.tokenizers.spec import PreprocessSpec, TokenizerInputError

PAD_ID, UNK_ID, SOS_ID, EOS_ID = 0, 1, 2, 3
SENTINEL_START = 4
MODEL_FILE = "tokenizer.model"


def sentinel_piece(i: int) -> str:
    return f"[S_{i}]"


def train_sentencepiece(texts: Iterable[str], *, vocab_size: int, num_sentinels: int,
                        model_type: str = "bpe", seed_sentencepiece_size: int = 100_000
                        ) -> bytes:
    """Trains a SentencePiece model in-process; returns the serialised model proto."""
    if num_sentinels < 100:
        raise ValueError(f"text.num_sentinels must be >= 100, got {num_sentinels}")
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=writer,
        model_type=model_type,
        vocab_size=vocab_size,
        hard_vocab_limit=False,          # a small caption grammar may not fill the vocabulary
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=SOS_ID, eos_id=EOS_ID,
        pad_piece="[PAD]", unk_piece="[UNK]", bos_piece="[SOS]", eos_piece="[EOS]",
        user_defined_symbols=[sentinel_piece(i) for i in range(num_sentinels)],
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        seed_sentencepiece_size=seed_sentencepiece_size,
        num_threads=1,
        minloglevel=2,
    )
    return writer.getvalue()


def text_rows(tokens, modality: str, vocab_size: int, *, eos: int,
              skip: tuple[int, ...]) -> list[list[int]]:
    """Checks ids to decode (int [B, L] in [0, vocab_size)) and returns each row cut at its
    first `eos`, without the `skip` ids: what every text tokenizer's decode starts from."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise TokenizerInputError(
            f"{modality} tokenizer: decode input: expected integer ids [B, L], received "
            f"{tokens.dtype} {list(tokens.shape)}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise TokenizerInputError(
            f"{modality} tokenizer: decode input ids: expected values in "
            f"[0, {vocab_size}), received [{tokens.min()}, {tokens.max()}]")
    rows = []
    for row in tokens.tolist():
        if eos in row:
            row = row[:row.index(eos)]
        rows.append([t for t in row if t not in skip])
    return rows


class TextTokenizer:
    """SentencePiece ids with the special-id layout above; encode/decode like every tokenizer."""

    def __init__(self, model_proto: bytes, spec: PreprocessSpec, config=None, path=None):
        self.spec = spec
        self.config = config
        self.path = path
        self.modality = spec.modality
        self.max_len = spec.token_shape[0]
        self.num_sentinels = int(spec.norm_params["num_sentinels"])
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self._sp.get_piece_size()
        self.token_shape = spec.token_shape
        self._check_layout()

    def _check_layout(self) -> None:
        sp = self._sp
        expected = {PAD_ID: "[PAD]", UNK_ID: "[UNK]", SOS_ID: "[SOS]", EOS_ID: "[EOS]",
                    SENTINEL_START: sentinel_piece(0),
                    SENTINEL_START + self.num_sentinels - 1:
                        sentinel_piece(self.num_sentinels - 1)}
        for i, piece in expected.items():
            if sp.id_to_piece(i) != piece:
                raise ValueError(f"caption tokenizer: id {i} should be {piece!r}, the model has "
                                 f"{sp.id_to_piece(i)!r}")

    # ------------------------------------------------------------------------------ ids
    def sentinel_id(self, i: int) -> int:
        if not 0 <= i < self.num_sentinels:
            raise ValueError(f"sentinel index must be in [0, {self.num_sentinels}), got {i}")
        return SENTINEL_START + i

    @property
    def special_ids(self) -> dict[str, int]:
        return {"pad": PAD_ID, "unk": UNK_ID, "sos": SOS_ID, "eos": EOS_ID,
                "sentinel_start": SENTINEL_START, "num_sentinels": self.num_sentinels}

    def piece_ids(self, text: str) -> list[int]:
        """The ids of one text, without [EOS] or padding."""
        return self._sp.encode(text, out_type=int)

    # ---------------------------------------------------------------------- encode / decode
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> int32 [B, max_len]: ids, [EOS], then [PAD] up to max_len."""
        if isinstance(texts, str):
            raise TokenizerInputError(
                f"{self.modality} tokenizer: input: expected a batch (list) of strings, received "
                f"a single str; wrap it: [text]")
        texts = list(texts)
        if not texts:
            raise TokenizerInputError(f"{self.modality} tokenizer: input: expected B >= 1 texts, "
                                      f"received 0")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TokenizerInputError(
                    f"{self.modality} tokenizer: input[{i}]: expected str, received "
                    f"{type(t).__name__}")
        out = np.full((len(texts), self.max_len), PAD_ID, np.int32)
        for i, ids in enumerate(self._sp.encode(texts, out_type=int)):
            if len(ids) + 1 > self.max_len:
                raise TokenizerInputError(
                    f"{self.modality} tokenizer: input[{i}] length: expected at most "
                    f"{self.max_len - 1} tokens (max_len {self.max_len} minus [EOS]), received "
                    f"{len(ids)} tokens ({len(texts[i])} characters)")
            out[i, :len(ids)] = ids
            out[i, len(ids)] = EOS_ID
        return out

    def decode(self, tokens) -> list[str]:
        """int [B, L] ids -> texts (stops at [EOS], skips [PAD], keeps sentinels as [S_i])."""
        rows = text_rows(tokens, self.modality, self.vocab_size, eos=EOS_ID,
                         skip=(PAD_ID, SOS_ID))
        return [self._sp.decode(row) for row in rows]

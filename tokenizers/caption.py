"""Caption tokenizer: SentencePiece (BPE) trained on 20k training captions.

    m4 tokenizer train --config tokenizers/caption.py --workdir runs/tok_caption
Ids: 0 [PAD], 1 [UNK], 2 [SOS], 3 [EOS], 4..131 sentinels [S_0]..[S_127], then the pieces and
256 byte pieces (byte fallback: any text round-trips exactly).
"""

from m4.tokenizers.configs import text_config


def get_config(arg=None):
    return text_config(arg)

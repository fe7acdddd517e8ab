"""Tokenizers: raw modalities <-> discrete tokens.

    tok = m4.tokenizers.load("runs/tok_rgb")        # an artifact dir (or the workdir holding it)
    tokens = tok.encode(rgb_uint8_batch)             # int32 [B, 8, 8]; input checked against
    images = tok.decode(tokens)                      # tok.spec (shape, dtype, range, classes)

Kinds: image-like (rgb, depth, normals, semseg, features: `vqvae.ImageVQ`), poses
(`vector_vq.PoseVQ`), captions (`text.TextTokenizer`, SentencePiece). Train with
`m4 tokenizer train --config tokenizers/<modality>.py --workdir DIR`; evaluate with
`m4 tokenizer eval --tokenizer DIR --n N`.
"""

from m4.tokenizers.artifact import ArtifactError, load
from m4.tokenizers.spec import PreprocessSpec, TokenizerInputError

__all__ = ["ArtifactError", "PreprocessSpec", "TokenizerInputError", "load"]

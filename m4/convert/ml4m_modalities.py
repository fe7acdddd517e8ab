"""The modalities of the reference 4M-7 / 4M-21 models (fourm/data/modality_info.py) as m4 specs.

Each entry says what the reference's adapters build for the modality: the kind, the vocabulary,
the token grid (input_size / patch_size, falling back to the config's image_size / patch_size as
the reference's `FM` does), sequence max length and position table, and which sides exist.
"""

from __future__ import annotations

import dataclasses

from m4.modalities import ModalitySpec

# Every reference sequence adapter builds build_1d_sincos_posemb(512, d)[:max_length], which
# slices the size-1 batch dimension: the table always keeps 512 rows.
REFERENCE_SEQUENCE_TABLE = 512


class UnsupportedModality(ValueError):
    """A reference modality that m4 cannot represent (yet)."""


@dataclasses.dataclass(frozen=True)
class RefModality:
    kind: str                       # m4 kind
    vocab: int = 0
    input_size: int | None = None   # None: the config's image_size
    patch_size: int | None = None   # None: the config's patch_size
    max_length: int = 0             # sequences / embeddings: the reference's max_length
    channels: int = 0               # pixels: input channels
    emb_dim: int = 0                # embeddings: input vector size
    learned_positions: bool = False
    decoder: bool = True            # the reference has a decoder adapter for it
    encoder: bool = True


def _img(vocab, input_size=224, patch=16, **kw):
    return RefModality("image", vocab=vocab, input_size=input_size, patch_size=patch, **kw)


def _seq(max_length):
    return RefModality("sequence", vocab=30_000, max_length=max_length)


REFERENCE_MODALITIES: dict[str, RefModality] = {
    # 4M-7
    "rgb@224": RefModality("pixels", input_size=224, patch_size=16, channels=3, decoder=False),
    "caption": _seq(256),
    "det": _seq(256),
    "tok_rgb@224": _img(16384),
    "tok_depth@224": _img(8192),
    "tok_normal@224": _img(8192),
    "tok_semseg@224": _img(4096),
    "tok_clip@224": _img(8192),
    # 4M-21
    "t5_caption": RefModality("embeddings", max_length=77, emb_dim=4096, decoder=False),
    "metadata": _seq(40),
    "human_poses": _seq(263),
    "color_palette": _seq(23),
    "sam_instance": _seq(290),
    "tok_canny_edge@224": _img(8192),
    "tok_sam_edge@224": _img(8192),
    "tok_dinov2@224": _img(8192, patch=14),
    "tok_imagebind@224": _img(8192, patch=14),
    # global-embedding tokens: an image adapter with learned positions on a (image_size/56)^2 grid
    "tok_dinov2_global": RefModality("vectors", vocab=8192, patch_size=56,
                                     learned_positions=True),
    "tok_imagebind_global": RefModality("vectors", vocab=8192, patch_size=56,
                                        learned_positions=True),
    # super-resolution (224 -> 448)
    "rgb@448": RefModality("pixels", input_size=448, patch_size=16, channels=3, decoder=False),
    "tok_rgb@448": _img(16384, 448),
    "tok_depth@448": _img(8192, 448),
    "tok_normal@448": _img(8192, 448),
    "tok_semseg@448": _img(4096, 448),
    "tok_clip@448": _img(8192, 448),
}


def reference_spec(name: str, *, is_input: bool, is_target: bool, image_size: int = 224,
                   patch_size: int = 16, pos_rows: int | None = None) -> ModalitySpec:
    """The m4 spec of reference modality `name`.

    is_input / is_target: listed in domains_in / domains_out (a side without a reference adapter
    is dropped, e.g. t5_caption in domains_out). pos_rows: rows of the checkpoint's position
    table, when known (sequences: 512 in every released checkpoint).
    """
    if name not in REFERENCE_MODALITIES:
        raise UnsupportedModality(
            f"reference modality {name!r} cannot be represented in m4 (known: "
            f"{sorted(REFERENCE_MODALITIES)})")
    ref = REFERENCE_MODALITIES[name]
    is_input = is_input and ref.encoder
    is_target = is_target and ref.decoder
    if not (is_input or is_target):
        raise UnsupportedModality(f"reference modality {name!r} has no adapter on the sides it is "
                                  f"listed for (input={is_input}, target={is_target})")
    size = ref.input_size or image_size
    patch = ref.patch_size or patch_size
    if ref.kind in ("image", "pixels", "vectors"):
        if size % patch:
            raise UnsupportedModality(f"reference modality {name!r}: image size {size} is not a "
                                      f"multiple of its patch size {patch}")
        grid = (size // patch, size // patch)
    if ref.kind == "image":
        return ModalitySpec(name, "image", vocab_size=ref.vocab, grid=grid,
                            positions="learned" if ref.learned_positions else "sincos",
                            input=is_input, target=is_target)
    if ref.kind == "pixels":
        return ModalitySpec(name, "pixels", grid=grid, patch_size=patch,
                            patch_dim=patch * patch * ref.channels, input=True, target=False)
    if ref.kind == "vectors":
        return ModalitySpec(name, "vectors", vocab_size=ref.vocab, length=grid[0] * grid[1],
                            positions="learned" if ref.learned_positions else "sincos",
                            input=is_input, target=is_target)
    rows = pos_rows if pos_rows is not None else REFERENCE_SEQUENCE_TABLE
    if ref.kind == "sequence":
        return ModalitySpec(name, "sequence", vocab_size=ref.vocab, length=ref.max_length,
                            pos_table=rows, input=is_input, target=is_target)
    return ModalitySpec(name, "embeddings", patch_dim=ref.emb_dim, length=ref.max_length,
                        pos_table=rows, input=True, target=False)

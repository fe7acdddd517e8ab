import numpy as np
import pytest

from m4.modalities import ModalitySpec, ModalitySpecError, Vocabulary, validate_specs


def specs():
    return (ModalitySpec("rgb", "image", vocab_size=7, grid=(2, 3)),
            ModalitySpec("pix", "pixels", patch_dim=12, patch_size=2, grid=(2, 3), target=False,
                         source="rgb"),
            ModalitySpec("caption", "sequence", vocab_size=11, length=5, pos_table=8),
            ModalitySpec("pose", "vectors", vocab_size=3, length=4, positions="learned"))


def test_grid_sets_length_and_properties():
    rgb, pix, cap, pose = specs()
    assert rgb.length == 6 and rgb.num_positions == 6 and not rgb.causal
    assert pix.channels == 3 and pix.is_continuous and not pix.is_token
    assert pix.raw == "rgb" and rgb.raw == "rgb"
    assert cap.causal and cap.num_positions == 8
    assert pose.positions == "learned" and pose.num_positions == 4


@pytest.mark.parametrize("kwargs, field", [
    (dict(kind="voxels", vocab_size=3, length=2), "kind"),
    (dict(kind="image", vocab_size=3), "grid"),
    (dict(kind="image", vocab_size=3, grid=(2, 2), length=5), "length"),
    (dict(kind="sequence", vocab_size=0, length=4), "vocab_size"),
    (dict(kind="pixels", patch_dim=0, grid=(2, 2), target=False), "patch_dim"),
    (dict(kind="pixels", patch_dim=12, grid=(2, 2)), "target"),
    (dict(kind="sequence", vocab_size=3, length=4, pos_table=2), "pos_table"),
    (dict(kind="sequence", vocab_size=3, length=4, positions="rope"), "positions"),
    (dict(kind="pixels", patch_dim=12, grid=(2, 2), target=False, source=""), "source"),
])
def test_invalid_specs_name_the_field(kwargs, field):
    with pytest.raises(ModalitySpecError, match=f"'{field}'"):
        ModalitySpec("m", **kwargs)


def test_validate_specs_rejects_duplicates():
    s = specs()
    with pytest.raises(ModalitySpecError, match="duplicate"):
        validate_specs(s + (s[0],))


def test_dict_round_trip():
    for s in specs():
        assert ModalitySpec.from_dict(s.to_dict()) == s
    with pytest.raises(ModalitySpecError, match="unknown fields"):
        ModalitySpec.from_dict({**specs()[0].to_dict(), "colour": 1})


def test_vocabulary_offsets_and_round_trip():
    vocab = Vocabulary(specs())
    assert vocab.size == 7 + 11 + 3
    assert vocab.range("rgb") == (0, 7)
    assert vocab.range("pix") == (7, 7)          # continuous: empty range
    assert vocab.range("caption") == (7, 18)
    assert vocab.offset(3) == 18
    g = vocab.to_global("caption", np.array([0, 10]))
    assert g.tolist() == [7, 17]
    mod, local = vocab.to_local(np.array([0, 6, 7, 17, 18, 20]))
    assert mod.tolist() == [0, 0, 2, 2, 3, 3]
    assert local.tolist() == [0, 6, 0, 10, 0, 2]
    with pytest.raises(ValueError, match="caption"):
        vocab.to_global("caption", np.array([11]))
    with pytest.raises(KeyError, match="unknown modality"):
        vocab.offset("depth")

import numpy as np
import pytest

from m4.data import masking, pixels
from m4.modalities import ModalitySpec


def test_normalize_uses_the_reference_rgb_statistics_per_interleaved_channel():
    image = np.zeros((2, 2, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 0, 128, 255
    x = pixels.normalize(image, 3)
    assert x.dtype == np.float32 and x.shape == image.shape
    np.testing.assert_allclose(x[0, 0], (np.array([0, 128, 255]) / 255 - pixels.IMAGENET_MEAN)
                               / pixels.IMAGENET_STD, rtol=1e-6)
    # Patches [L, p*p*C] in (ph, pw, c) order: the channel is the fastest axis.
    patch = np.tile(image.reshape(-1), 2)[None]
    np.testing.assert_allclose(pixels.normalize(patch, 3).reshape(-1, 3)[5], x[0, 1], rtol=1e-6)
    gray = pixels.normalize(np.array([[0, 255]], np.uint8), 1)
    np.testing.assert_allclose(gray, [[-1.0, 1.0]])


def test_normalize_refuses_what_it_cannot_read():
    with pytest.raises(pixels.PixelError, match="uint8"):
        pixels.normalize(np.zeros((2, 3), np.float32), 3)
    with pytest.raises(pixels.PixelError, match="multiple of 3"):
        pixels.normalize(np.zeros((2, 4), np.uint8), 3)


def test_masker_reads_uint8_patches_as_normalised_floats():
    spec = ModalitySpec("rgb_pixels", "pixels", grid=(2, 2), patch_size=2, patch_dim=12,
                        source="rgb", target=False)
    stored = np.random.default_rng(0).integers(0, 256, (4, 12)).astype(np.uint8)
    packer = masking.FixedMasker([spec], ["rgb_pixels"], [], input_slots=4, target_slots=1)
    from_uint8 = packer({"rgb_pixels": stored})
    from_float = packer({"rgb_pixels": pixels.normalize(stored, 3)})
    np.testing.assert_array_equal(from_uint8["enc_pixels"], from_float["enc_pixels"])
    with pytest.raises(masking.MaskingError, match="uint8 pixels"):
        packer({"rgb_pixels": stored.astype(np.int32)})

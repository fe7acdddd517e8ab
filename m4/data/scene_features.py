"""The `features` modality: a dense HOG map, one descriptor per token cell.

Which: the Histogram of Oriented Gradients of scikit-image (`skimage.feature.hog`) on the RGB
image (per pixel, the colour channel with the strongest gradient), cells of
feature_patch x feature_patch pixels, `orientations` unsigned orientation bins over 0..180
degrees, blocks of one cell with L2 normalisation: float32 [H/p, W/p, C], C = orientations.
Each cell is exactly zero (no gradient) or has unit L2 norm. `hog_features` computes exactly
that function with whole-array numpy (skimage normalises block by block in a Python loop, which
cost ~1 ms of the ~5 ms budget of a 64x64 scene); a test checks it against skimage itself.

Why HOG (and not DAISY, the other dense scikit-image descriptor):
- the token grid is the HOG cell grid: pixels_per_cell = feature_patch gives exactly
  [H/p, W/p] descriptors with no padding, cropping or pooling; DAISY samples on a grid inset by
  its radius and needs padding to land on cell centres;
- speed: DAISY took 3-6 ms per 64x64 image, more than the whole budget of the >= 200 scenes/s
  target;
- per-cell normalisation is harmless here: the renders have exactly flat regions (constant
  colour on the wall and on each floor tile), whose cells stay exactly zero instead of turning
  amplified noise into unit-norm descriptors.
Why L2 and not the usual L2-Hys: Hys clips every value at 0.2 and renormalises, which suits
blocks of 4 cells x 9 bins (36 values) but flattens a one-cell block of 9 values, whose typical
entry is 1/3, to a nearly uniform histogram: most cells became the same "star" and the
orientations were lost.
Colour HOG keeps the edge between two colours of similar brightness, which grayscale HOG would
lose. Everything is deterministic (plain arithmetic on the uint8 image, no randomness).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-5  # as skimage.feature.hog


def hog_features(rgb: np.ndarray, patch: int, orientations: int) -> np.ndarray:
    """rgb uint8 [H, W, 3] -> float32 [H/patch, W/patch, orientations].

    Equal (to float rounding) to skimage.feature.hog(rgb, orientations, (patch, patch), (1, 1),
    "L2", feature_vector=False, channel_axis=-1).reshape(H/patch, W/patch, orientations);
    tests/test_scenes.py checks it. Vectorised here because skimage normalises block by block in
    a Python loop, which alone took ~1 ms of the ~5 ms a 64x64 scene may cost.
    """
    img = np.asarray(rgb, np.float64)
    h, w, _ = img.shape
    # Central differences per channel, zero on the border rows/columns (as skimage).
    g_row, g_col = np.zeros_like(img), np.zeros_like(img)
    g_row[1:-1] = img[2:] - img[:-2]
    g_col[:, 1:-1] = img[:, 2:] - img[:, :-2]
    magnitude = np.hypot(g_row, g_col)  # [H, W, 3]
    # Per pixel, the channel with the strongest gradient; the first one on ties (as argmax).
    best_row, best_col, best = g_row[..., 0], g_col[..., 0], magnitude[..., 0]
    for c in range(1, img.shape[-1]):
        stronger = magnitude[..., c] > best
        best_row = np.where(stronger, g_row[..., c], best_row)
        best_col = np.where(stronger, g_col[..., c], best_col)
        best = np.where(stronger, magnitude[..., c], best)
    g_row, g_col, magnitude = best_row, best_col, best
    angle = np.arctan2(g_row, g_col) * (180 / np.pi) % 180  # unsigned orientation, degrees
    # skimage compares against bin bounds stored as C floats.
    lower = (180.0 / orientations * np.arange(orientations)).astype(np.float32).astype(np.float64)
    bin_index = np.searchsorted(lower, angle, side="right") - 1
    n_rows, n_cols = h // patch, w // patch
    cell = (np.arange(h) // patch)[:, None] * n_cols + (np.arange(w) // patch)[None, :]
    hist = np.bincount((cell * orientations + bin_index).ravel(), weights=magnitude.ravel(),
                       minlength=n_rows * n_cols * orientations)
    hist = hist.reshape(n_rows, n_cols, orientations) / (patch * patch)
    # L2 per cell (blocks of one cell), with skimage's epsilon.
    hist = hist / np.sqrt((hist * hist).sum(-1, keepdims=True) + EPS**2)
    return hist.astype(np.float32)

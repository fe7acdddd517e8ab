"""Masking mixtures (Dirichlet alphas per modality and component) as ml_collections configs.

    m4.config.load_config("experiments/mixtures.py:4m7")
    m4.data.masking.Masker.from_config(specs, config, sentinels=...)

Names:
  4m7            the 4M-7 main mixture (apple/ml-4m cfgs/default/4m/alphas_mixture/main/
                 mix_mod7_all2all_rgb2all_a0.5.yaml): rgb2all and all2all (alpha 0.5), equal weights
  4m7_rgb2dense  the same, but captions/det are not targets in the rgb2all half
  4m7_capbias    mix_mod7_all2allmix_rgb2all_capbias.yaml: all2all at 0.01/0.1/1/10, rgb2all,
                 caption bias
  4m21           the 4M-21 main mixture (mix_mod21_all2allmix_rgb2all_capT5bias.yaml), 7 components
  demo           m4's built-in scene modalities (rgb, depth, normals, semseg, features, caption,
                 poses, and the rgb pixel patches rgb_pixels)

Each config: `name`, `weights` (None = uniform over components), `input_tokens`, `target_tokens`
(the totals N_in / N_tgt; the reference main runs use 128/128 for 4M-7 and 256/256 for 4M-21; a
training config may override them), and `modalities[name]` with `input_alphas`, `target_alphas`
(one value per component) and, for sequence modalities, `keep` (span-masking keep scheme:
random | all | binary). Alpha 0 means "never" (the masker clamps to 1e-9 as the reference does).
Modality names are the reference names for the reference mixtures; a model without one of them
(e.g. t5_caption) passes the mixture through `Mixture.drop([...])` explicitly.
"""

from __future__ import annotations

import ml_collections


def _entry(input_alphas, target_alphas, keep=None) -> ml_collections.ConfigDict:
    entry = {"input_alphas": [float(a) for a in input_alphas],
             "target_alphas": [float(a) for a in target_alphas]}
    if keep is not None:
        entry["keep"] = list(keep)
    return ml_collections.ConfigDict(entry)


def _config(name: str, weights, input_tokens: int, target_tokens: int,
            modalities: dict) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = name
    config.weights = None if weights is None else [float(w) for w in weights]
    config.input_tokens = input_tokens
    config.target_tokens = target_tokens
    config.modalities = ml_collections.ConfigDict()
    for mod, entry in modalities.items():
        config.modalities[mod] = entry
    return config


_TOK_4M7 = ("tok_rgb@224", "tok_depth@224", "tok_semseg@224", "tok_normal@224", "tok_clip@224")


def _4m7(rgb2dense: bool) -> ml_collections.ConfigDict:
    # Component 0: rgb2all (RGB pixels in, everything out); component 1: all2all at alpha 0.5.
    # The YAML gives no sampling_weights, so the reference picks the component uniformly.
    mods = {"rgb@224": _entry([1000.0, 0.5], [0.0, 0.0])}  # RGB pixels are never a target
    for mod in _TOK_4M7:
        mods[mod] = _entry([0.0, 0.5], [0.5, 0.5])
    seq_target = [0.0, 0.5] if rgb2dense else [0.5, 0.5]
    for mod in ("caption", "det"):
        mods[mod] = _entry([0.0, 0.5], seq_target, keep=["random", "random"])
    name = "4m7_rgb2dense" if rgb2dense else "4m7"
    return _config(name, None, 128, 128, mods)


_ALL2ALL = [0.01, 0.1, 1.0, 10.0]


def _4m7_capbias() -> ml_collections.ConfigDict:
    # all2all x4, rgb2all, caption-biased (caption fully visible when chosen: keep "all").
    others_in, others_tgt = _ALL2ALL + [0.0, 0.05], _ALL2ALL + [0.5, 0.5]
    mods = {
        "rgb@224": _entry(_ALL2ALL + [1000.0, 0.05], [0.0] * 6),
        "caption": _entry(_ALL2ALL + [0.0, 5.0], _ALL2ALL + [0.5, 0.5],
                          keep=["random"] * 5 + ["all"]),
        "det": _entry(others_in, others_tgt, keep=["random"] * 6),
    }
    for mod in ("tok_rgb@224", "tok_normal@224", "tok_depth@224", "tok_semseg@224", "tok_clip@224"):
        mods[mod] = _entry(others_in, others_tgt)
    return _config("4m7_capbias", [1.0] * 6, 128, 128, mods)


def _4m21() -> ml_collections.ConfigDict:
    # all2all x4, rgb2all, caption-biased (weight 0.5), T5-caption-biased (weight 0.5).
    others_in, others_tgt = _ALL2ALL + [0.0, 0.05, 0.05], _ALL2ALL + [0.5, 0.5, 0.5]
    random7 = ["random"] * 7
    mods = {
        "rgb@224": _entry(_ALL2ALL + [1000.0, 0.05, 0.05], [0.0] * 7),
        "caption": _entry(_ALL2ALL + [0.0, 5.0, 0.0], _ALL2ALL + [0.5, 0.0, 0.5],
                          keep=["random"] * 5 + ["all", "random"]),
        "t5_caption": _entry(_ALL2ALL + [0.0, 0.0, 5.0], _ALL2ALL + [0.5, 0.5, 0.0],
                             keep=["random"] * 6 + ["all"]),
        "det": _entry(others_in, others_tgt, keep=random7),
    }
    for mod in ("tok_rgb@224", "tok_normal@224", "tok_depth@224", "tok_semseg@224", "tok_clip@224"):
        mods[mod] = _entry(others_in, others_tgt)
    mods["human_poses"] = _entry(others_in, others_tgt, keep=random7)
    for mod in ("tok_dinov2@224", "tok_dinov2_global", "tok_imagebind@224", "tok_imagebind_global",
                "tok_canny_edge@224", "tok_sam_edge@224"):
        mods[mod] = _entry(others_in, others_tgt)
    mods["color_palette"] = _entry(others_in, others_tgt, keep=["binary"] * 7)
    mods["metadata"] = _entry(others_in, others_tgt, keep=random7)
    mods["sam_instance"] = _entry(others_in, others_tgt, keep=random7)
    return _config("4m21", [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5], 256, 256, mods)


DEMO_MODALITIES = ("rgb", "depth", "normals", "semseg", "features", "caption", "poses",
                   "rgb_pixels")


def _demo() -> ml_collections.ConfigDict:
    # Components: all2all alpha 0.5, all2all alpha 1.0, rgb->all, caption->all, weighted 1/1/1.5/1
    # (4M-7 weighs its all2all and rgb2all halves equally; here rgb->all gets 33% of the samples:
    # the demo is judged on rgb -> X. Measured with the caption alpha below, 900 steps, 256
    # held-out scenes, rgb -> caption F1 / rgb -> semseg mIoU / caption -> semseg: equal weights
    # 0.572 / 0.634 / 0.544, 1/1/1.5/1 0.597 / 0.624 / 0.534, 1/1/2/1 0.631 / 0.603 / 0.516).
    # In rgb->all / caption->all the source takes the whole input budget (alpha 1000; the caption
    # is kept whole with keep "all") and is not a target, every other modality is a target with
    # alpha 0.5. As in 4M-7, RGB enters rgb->all as pixel patches (`rgb_pixels`, never a target);
    # the rgb tokens are inputs only in all2all (so generated rgb can condition later steps of a
    # chain) and, like every other modality, a target of rgb->all: the demo's rgb tokenizer codes
    # each 8x8 patch alone (m4/demo/recipe.py), and without this target the 4M never learned the
    # codes from the pixels (held-out rgb token accuracy from the whole image 0.10; with it 0.48,
    # other figures within run-to-run noise: rgb -> caption F1 0.577 -> 0.566, rgb -> semseg
    # 0.618 -> 0.620, all others -> semseg 0.644 -> 0.650).
    # The caption is the exception in rgb->all: target alpha 2. With an empty caption input the
    # whole caption is one span, cut to the caption's share of the target budget from its start,
    # so at alpha 0.5 (share ~ Beta(0.5, 2.5) x 128 tokens) the whole caption (~45 tokens, up to
    # 86) was the target in only 14% of rgb->all samples and the later objects of a caption were
    # rarely learned from the image; at alpha 2, 58%; at alpha 5, 95%. Measured on the demo's
    # data (900 steps, 256 held-out scenes; rgb -> caption F1 / rgb -> semseg mIoU): alpha 0.5
    # 0.505 / 0.635, alpha 2 0.572 / 0.634, alpha 5 0.554 / 0.595 (the other targets starve).
    mods = {}
    for mod in DEMO_MODALITIES:
        source = {"rgb_pixels": 2, "caption": 3}.get(mod)
        source_in = [0.5, 1.0, 0.0, 0.0]
        source_tgt = [0.5, 1.0, 0.5, 0.5]
        if source is not None:
            source_in[source], source_tgt[source] = 1000.0, 0.0
        if mod == "caption":
            source_tgt[2] = 2.0
        if mod == "rgb_pixels":
            source_tgt = [0.0] * 4     # pixels are input only
        keep = ["random", "random", "random", "all"] if mod == "caption" else None
        mods[mod] = _entry(source_in, source_tgt, keep=keep)
    return _config("demo", [1.0, 1.0, 1.5, 1.0], 128, 128, mods)


_BUILDERS = {
    "4m7": lambda: _4m7(rgb2dense=False),
    "4m7_rgb2dense": lambda: _4m7(rgb2dense=True),
    "4m7_capbias": _4m7_capbias,
    "4m21": _4m21,
    "demo": _demo,
}
NAMES = tuple(_BUILDERS)


def get_config(name: str = "demo") -> ml_collections.ConfigDict:
    if name not in _BUILDERS:
        raise ValueError(f"mixture name: expected one of {NAMES}, got {name!r}")
    return _BUILDERS[name]()

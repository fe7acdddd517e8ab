"""generations.png: what the demo's 4M does with held-out scenes, next to the ground truth.

Three blocks of rows, each generated in one batched call:
  1. RGB -> every other modality (a "predicted" row above a "ground truth" row per scene);
  2. caption -> RGB, depth and semseg (the true RGB at the end for reference);
  3. chained caption -> semseg -> RGB: the semseg finished first joins the condition of RGB.
"""

from __future__ import annotations

from PIL import Image

from m4.data import scenes
from m4.generate import Generator, TargetSpec, render

TILE = 128
# Caption-conditioned images: guidance sharpens the (weak) text condition of a small model.
CAPTION_GUIDANCE = 2.0


def generations(model, tokenizers: dict, *, n: int, resolution: int, seed: int = 0) -> Image.Image:
    generator = Generator(model, tokenizers)
    names = [s.name for s in model.config.modalities if s.target]
    kinds = {name: render.kind_of(tokenizers.get(name)) for name in names}
    config = scenes.SceneConfig(resolution=resolution)
    truth = [scenes.render(seed, scenes.VALIDATION_START + i, config) for i in range(n)]
    rows, captions = [], []

    def tile(name: str, value, rgb) -> Image.Image:
        return render.tile(kinds[name], value, TILE, background=rgb)

    # 1. RGB -> all.
    targets = [m for m in names if m != "rgb"]
    out = generator.generate_batch([{"rgb": t["rgb"]} for t in truth], targets, seed=seed)
    for i, t in enumerate(truth):
        picked = [m for m in targets if m != "caption"]
        rows.append([("input rgb", tile("rgb", t["rgb"], None))]
                    + [(f"{m} from rgb", tile(m, out["outputs"][m][i], t["rgb"])) for m in picked])
        captions.append(f"from rgb: {out['outputs']['caption'][i]}" if "caption" in targets else "")
        rows.append([("", Image.new("RGB", (TILE, TILE), "white"))]
                    + [(f"true {m}", tile(m, t[m], t["rgb"])) for m in picked])
        captions.append(f"true caption: {t['caption']}" if "caption" in names else "")

    if "caption" in names:
        # 2. caption -> rgb, depth, semseg.
        wanted = [m for m in ("rgb", "depth", "semseg") if m in names]
        specs = [TargetSpec(m, cfg_scale=CAPTION_GUIDANCE) for m in wanted]
        out = generator.generate_batch([{"caption": t["caption"]} for t in truth], specs,
                                       seed=seed + 1)
        for i, t in enumerate(truth):
            rows.append([(f"{m} from caption", tile(m, out["outputs"][m][i], None))
                         for m in wanted] + [("true rgb", tile("rgb", t["rgb"], None))])
            captions.append(f"caption: {t['caption']}")

        # 3. chained caption -> semseg -> rgb.
        chain = [m for m in ("semseg", "rgb") if m in names]
        specs = [TargetSpec(m, cfg_scale=CAPTION_GUIDANCE) for m in chain]
        out = generator.generate_batch([{"caption": t["caption"]} for t in truth], specs,
                                       seed=seed + 2, grow_conditioning=True)
        for i, t in enumerate(truth):
            rows.append([(f"chain: {m}", tile(m, out["outputs"][m][i], None)) for m in chain]
                        + [("true rgb", tile("rgb", t["rgb"], None))])
            captions.append(f"chained caption -> {' -> '.join(chain)}: {t['caption']}")
    return render.grid(rows, captions, size=TILE)

"""Training and evaluation data for tokenizers: rendered scenes, cached as numpy files.

Rendering costs ~5 ms per scene on a CPU core, much more than a tokenizer step needs per
example, so the scenes a tokenizer trains on are rendered once and stored under a cache folder
(`<cache>/scenes-s<seed>-n<count>-<config hash>/<modality>.npy`, captions as JSON). Every
modality of a scene is stored, so the seven tokenizers can share one cache. A cache entry is
written to a temporary folder and renamed when complete: a killed run never leaves half a cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import uuid

import numpy as np

from m4.data import scenes

ARRAY_KEYS = ("rgb", "depth", "normals", "semseg", "poses", "features", "num_figures")
CHUNK = 256


def scene_config(config) -> scenes.SceneConfig:
    """SceneConfig from a config block of SceneConfig fields (missing fields: defaults)."""
    fields = {f.name for f in dataclasses.fields(scenes.SceneConfig)}
    unknown = sorted(set(config.keys()) - fields)
    if unknown:
        raise ValueError(f"data.scene: unknown SceneConfig field(s) {unknown}; known: "
                         f"{sorted(fields)}")
    return scenes.SceneConfig(**dict(config))


def _cache_name(seed: int, count: int, cfg: scenes.SceneConfig) -> str:
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    return f"scenes-s{seed}-n{count}-{digest.hexdigest()[:10]}"


def load_scenes(seed: int, count: int, cfg: scenes.SceneConfig,
                cache_dir: str | pathlib.Path | None, *, progress: bool = True) -> dict:
    """{modality: array [count, ...], "caption": list[str]} for scenes 0..count-1 of `seed`.

    Arrays are memory-mapped from the cache. `cache_dir=None` renders without caching.
    """
    if count < 1:
        raise ValueError(f"load_scenes: expected count >= 1, got {count}")
    if cache_dir is None:
        return _render(seed, count, cfg, None, progress)
    cache_dir = pathlib.Path(cache_dir)
    final = cache_dir / _cache_name(seed, count, cfg)
    if not (final / "DONE").exists():
        tmp = cache_dir / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            _render(seed, count, cfg, tmp, progress)
            (tmp / "DONE").write_text("ok\n")
            try:
                os.rename(tmp, final)
            except OSError:
                # Another process finished the same cache first; theirs is as good as ours.
                if not (final / "DONE").exists():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    out = {k: np.load(final / f"{k}.npy", mmap_mode="r") for k in ARRAY_KEYS}
    out["caption"] = json.loads((final / "caption.json").read_text())
    return out


def _render(seed: int, count: int, cfg: scenes.SceneConfig, folder: pathlib.Path | None,
            progress: bool) -> dict:
    from tqdm.auto import tqdm

    arrays: dict = {}
    captions: list[str] = []
    bar = tqdm(total=count, desc=f"render scenes (seed {seed})", unit="scene",
               disable=not progress)
    for start in range(0, count, CHUNK):
        batch = scenes.render_batch(seed, range(start, min(start + CHUNK, count)), cfg)
        for key in ARRAY_KEYS:
            value = np.asarray(batch[key])
            if key not in arrays:
                shape = (count, *value.shape[1:])
                arrays[key] = (np.lib.format.open_memmap(folder / f"{key}.npy", "w+",
                                                         value.dtype, shape)
                               if folder is not None else np.empty(shape, value.dtype))
            arrays[key][start:start + len(value)] = value
        captions.extend(batch["caption"])
        bar.update(len(batch["caption"]))
    bar.close()
    if folder is not None:
        for value in arrays.values():
            value.flush()
        (folder / "caption.json").write_text(json.dumps(captions))
    arrays["caption"] = captions
    return arrays

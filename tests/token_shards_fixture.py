"""Small synthetic token shards (real ArrayRecord files and manifest) for training tests."""

from __future__ import annotations

import pathlib

import numpy as np

from m4.data import shards
from m4.modalities import ModalitySpec

TEXT = {"pad_id": 0, "eos_id": 3, "first_sentinel_id": 5, "num_sentinels": 14}
SPECS = (
    ModalitySpec("rgb", "image", vocab_size=32, grid=(4, 4)),
    ModalitySpec("depth", "image", vocab_size=16, grid=(4, 4)),
    ModalitySpec("caption", "sequence", vocab_size=64, length=12),
)


def write_token_shards(directory: pathlib.Path, n: int = 32, crops: int = 2, num_shards: int = 2,
                       seed: int = 0) -> pathlib.Path:
    """Records whose depth tokens are a function of the rgb tokens, so a model can learn."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    first_word = TEXT["first_sentinel_id"] + TEXT["num_sentinels"]
    records = []
    for i in range(n):
        rgb = rng.integers(0, 32, (crops, 16)).astype(np.int16)
        captions = [rng.integers(first_word, 64, rng.integers(3, 10)).astype(np.int32)
                    for _ in range(crops)]
        records.append({"id": f"s{i:04d}", "caption": f"scene {i}",
                        "tokens": {"rgb": rgb, "depth": (rgb // 2).astype(np.int16),
                                   "caption": captions}})
    for s in range(num_shards):
        with shards.ShardWriter(directory / shards.shard_name(s, num_shards)) as w:
            for r in records[s::num_shards]:
                w.write(r)
    shards.write_manifest(directory, {
        "modalities": {spec.name: {"spec": spec.to_dict()} for spec in SPECS},
        "text": TEXT, "crops": crops, "num_records": n})
    return directory

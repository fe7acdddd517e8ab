"""grain pipelines over token shards: shard by process, shuffle, pick a crop, decode.

Everything is a `grain.MapDataset` (random access), which makes the iterator state a single
integer and lets a resumed run continue bit-identically: per-element randomness (crop choice,
masking) comes from `random_map`, whose generator is derived from the seed and the element index,
never from the order in which elements were consumed. With 2 CPU cores, in-process iteration (no
worker processes) is the fastest (measured, STYLE.md), so that is the default.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import grain
import numpy as np

from m4.data import shards


class PipelineError(ValueError):
    pass


def pick_crop(record: dict, rng: np.random.Generator) -> dict:
    """One augmented crop of a record: the same crop index for every modality keeps them aligned."""
    tokens = record["tokens"]  # {modality: [K, ...] array, or a list of K arrays (ragged text)}
    counts = {name: len(t) for name, t in tokens.items()}
    if len(set(counts.values())) != 1:
        raise PipelineError(f"record {record.get('id')!r}: modalities hold different crop counts {counts}")
    k = int(rng.integers(next(iter(counts.values())))) if counts else 0
    sample = {name: np.asarray(t[k]) for name, t in tokens.items()}
    sample["id"] = record.get("id")
    sample["crop"] = k
    return sample


def token_dataset(
    directory: str | os.PathLike,
    *,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool = True,
    num_epochs: int | None = None,
    expected_manifest: dict | None = None,
) -> grain.MapDataset:
    """Samples `{modality: tokens, "id", "crop"}` from finished shards, this process's part only.

    `num_epochs=None` repeats forever. `expected_manifest` (modalities, vocab sizes, token shapes,
    tokenizer hashes) is checked against the shards' manifest first.
    """
    if not 0 <= process_index < process_count:
        raise PipelineError(f"process_index {process_index} not in [0, {process_count})")
    if expected_manifest is not None:
        shards.check_manifest(shards.read_manifest(directory), expected_manifest, where=str(directory))
    paths = [str(p) for p in shards.check_complete(directory)]
    ds = grain.MapDataset.source(grain.sources.ArrayRecordDataSource(paths))
    if len(ds) < process_count:
        raise PipelineError(f"{directory}: {len(ds)} records cannot feed {process_count} processes")
    # Every process takes an equal, disjoint slice, so all processes see the same number of steps.
    per_process = len(ds) // process_count
    ds = ds[process_index * per_process:(process_index + 1) * per_process]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    return ds.map(shards.decode_record).random_map(pick_crop, seed=seed + 1)


def batched(ds: grain.MapDataset, batch_size: int,
            collate: Callable[[list], dict] | None = None) -> grain.MapDataset:
    """Fixed-size batches (the remainder is dropped only at the end of a finite dataset)."""
    return ds.batch(batch_size, drop_remainder=True, batch_fn=collate)

"""Token shards: ArrayRecord files of msgpack records, plus a manifest.

One record per sample. Arrays are stored as msgpack ext values (dtype, shape, raw bytes), so a
record round-trips numpy arrays exactly, with no pickle. A shard is written under a temporary
name and renamed when complete, so a crash never leaves a file that reads as a finished shard.

Layout of a shard directory:
  manifest.json                      what the shards hold (modalities, vocab sizes, token shapes,
                                     tokenizer hashes, crops); training checks it
  shard-00003-of-00016.array_record  finished shards
  shard-00003-of-00016.array_record.partial   a shard being written (ignored by readers)
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any

import msgpack
import numpy as np
from array_record.python import array_record_module

_ND_EXT = 1  # msgpack ext type code for numpy arrays
MANIFEST = "manifest.json"
PARTIAL_SUFFIX = ".partial"
_SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})\.array_record$")


class ShardError(ValueError):
    pass


def _pack_default(obj: Any):
    if isinstance(obj, np.ndarray):
        header = msgpack.packb([obj.dtype.str, list(obj.shape)])
        return msgpack.ExtType(_ND_EXT, header + np.ascontiguousarray(obj).tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in a token record")


def _unpack_ext(code: int, data: bytes):
    if code != _ND_EXT:
        return msgpack.ExtType(code, data)
    unpacker = msgpack.Unpacker()
    unpacker.feed(data)
    dtype, shape = unpacker.unpack()
    offset = unpacker.tell()
    return np.frombuffer(data, dtype=np.dtype(dtype), offset=offset).reshape(shape)


def encode_record(record: dict) -> bytes:
    return msgpack.packb(record, default=_pack_default, use_bin_type=True)


def decode_record(data: bytes) -> dict:
    return msgpack.unpackb(data, ext_hook=_unpack_ext, raw=False, strict_map_key=False)


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}.array_record"


class ShardWriter:
    """Writes one shard atomically: records go to `<name>.partial`, renamed on a clean close."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self.partial.unlink(missing_ok=True)  # a leftover of an interrupted run
        # group_size:1 gives the fastest random access on small records (see STYLE.md).
        self._writer = array_record_module.ArrayRecordWriter(str(self.partial), "group_size:1")
        self.count = 0

    def write(self, record: dict) -> None:
        self._writer.write(encode_record(record))
        self.count += 1

    def close(self) -> None:
        self._writer.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        self._writer.close()
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def finished_shards(directory: str | os.PathLike) -> list[pathlib.Path]:
    """Finished shard files in `directory`, sorted by name (partial files excluded)."""
    directory = pathlib.Path(directory)
    return sorted(p for p in directory.iterdir() if _SHARD_RE.match(p.name))


def check_complete(directory: str | os.PathLike) -> list[pathlib.Path]:
    """All shards of the set, or an error naming what is missing."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise ShardError(f"shard directory {str(directory)!r} does not exist")
    shards = finished_shards(directory)
    if not shards:
        raise ShardError(f"no finished shards in {str(directory)!r}")
    counts = {int(_SHARD_RE.match(p.name).group(2)) for p in shards}
    if len(counts) != 1:
        raise ShardError(f"{directory}: shards of different set sizes {sorted(counts)}")
    (count,) = counts
    have = {int(_SHARD_RE.match(p.name).group(1)) for p in shards}
    missing = sorted(set(range(count)) - have)
    if missing:
        raise ShardError(
            f"{directory}: {len(missing)} of {count} shards are not finished "
            f"(e.g. {shard_name(missing[0], count)}); re-run the pretokenization to complete them")
    return shards


def read_records(path: str | os.PathLike) -> list[dict]:
    reader = array_record_module.ArrayRecordReader(str(path))
    try:
        return [decode_record(b) for b in reader.read_all()]
    finally:
        reader.close()


def write_manifest(directory: str | os.PathLike, manifest: dict) -> None:
    directory = pathlib.Path(directory)
    tmp = directory / (MANIFEST + PARTIAL_SUFFIX)
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, directory / MANIFEST)


def read_manifest(directory: str | os.PathLike) -> dict:
    path = pathlib.Path(directory) / MANIFEST
    if not path.is_file():
        raise ShardError(f"no {MANIFEST} in {str(directory)!r}: not a token shard directory")
    return json.loads(path.read_text())


def check_manifest(manifest: dict, expected: dict, *, where: str) -> None:
    """Refuse shards made with other tokenizers: compare every modality's entry field by field."""
    have, want = manifest.get("modalities", {}), expected.get("modalities", {})
    missing = sorted(set(want) - set(have))
    if missing:
        raise ShardError(f"{where}: shards lack modalities {missing} (they have {sorted(have)})")
    for name, spec in want.items():
        # The tokenizer hash first: when it differs, it is the reason, stated in one short line.
        for field, value in sorted(spec.items(), key=lambda kv: kv[0] != "tokenizer_hash"):
            found = have[name].get(field)
            if found != value:
                raise ShardError(
                    f"{where}: modality {name!r} field {field!r}: shards were made with "
                    f"{found!r}, the tokenizers give {value!r}; re-run `m4 pretokenize`")

"""Reading safetensors files with plain file reads (no memory map), tensor by tensor."""

from __future__ import annotations

import json
import struct

import numpy as np

from m4.convert.errors import ConversionError

_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "BF16": np.uint16}


class SafetensorsReader:
    """Reads tensors of a safetensors file on demand, with plain file reads.

    Not memory-mapped on purpose: a mapped file's pages count in the process's resident memory
    once touched, so converting through a mapping peaks at the file size plus the model; reads
    keep only the converted model (and one tensor at a time) resident.
    """

    def __init__(self, path):
        self.path = str(path)
        self._file = open(self.path, "rb", buffering=0)
        head = self._file.read(8)
        if len(head) != 8:
            raise ConversionError(f"{self.path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        try:
            header = json.loads(self._file.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConversionError(f"{self.path}: not a safetensors file ({e})") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        self._entries = header
        self.shapes = {k: tuple(v["shape"]) for k, v in header.items()}
        for k, v in header.items():
            if v["dtype"] not in _DTYPES:
                raise ConversionError(f"{self.path}: tensor {k!r} has dtype {v['dtype']}; "
                                      f"supported: {sorted(_DTYPES)}")
        self.used: set[str] = set()

    def get(self, key: str) -> np.ndarray:
        """The tensor as float32."""
        entry = self._entries[key]
        self.used.add(key)
        begin, end = entry["data_offsets"]
        raw = np.empty(self.shapes[key], _DTYPES[entry["dtype"]])
        if raw.nbytes != end - begin:
            raise ConversionError(f"{self.path}: tensor {key!r} has {end - begin} bytes, its "
                                  f"shape and dtype need {raw.nbytes}")
        self._file.seek(self._data_start + begin)
        view = memoryview(raw.reshape(-1).view(np.uint8))
        got = 0
        while got < raw.nbytes:
            n = self._file.readinto(view[got:])
            if not n:
                raise ConversionError(f"{self.path}: truncated file while reading {key!r}")
            got += n
        if entry["dtype"] == "BF16":          # bfloat16 = the high half of a float32
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32, copy=False)

    def close(self):
        self._file.close()

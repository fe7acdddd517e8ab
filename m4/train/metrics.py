"""Training metrics: a JSONL log, TensorBoard event files (written without TensorFlow), progress.

`MetricWriter` writes every scalar both to `<workdir>/metrics.jsonl` (one JSON object per call:
{"step": ..., "time": ..., name: value, ...}) and to `<workdir>/tensorboard/events.out.tfevents.*`,
which TensorBoard reads directly. clu's metric writers would import TensorFlow, so the event
records are encoded here: each record is
    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)
and `data` is a serialised `tensorflow.Event` protobuf, hand-encoded (only the few fields we need).

Only process 0 writes (pass `enabled=False` elsewhere) so that multi-host runs log once.
"""

from __future__ import annotations

import io
import json
import math
import os
import pathlib
import socket
import struct
import time
from typing import Iterator, Mapping

import numpy as np

# ------------------------------------------------------------------------------------ crc32c
# CRC-32C (Castagnoli), reflected polynomial 0x82F63B78. TensorBoard checks it on every record.
_CRC32C_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ------------------------------------------------------------------------ minimal protobuf
# Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64 values are encoded as their two's complement
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, *, file_version: str | None = None,
           summary: bytes | None = None) -> bytes:
    # tensorflow/core/util/event.proto: wall_time=1 (double), step=2 (int64),
    # file_version=3 (string), summary=5 (Summary).
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(step)
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if summary is not None:
        out += _bytes_field(5, summary)
    return out


def _scalar_value(tag: str, value: float) -> bytes:
    # Summary.Value: tag=1 (string), simple_value=2 (float).
    return _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value)


def _image_value(tag: str, png: bytes, height: int, width: int, channels: int) -> bytes:
    # Summary.Image: height=1, width=2, colorspace=3, encoded_image_string=4; Value.image=4.
    image = (_key(1, 0) + _varint(height) + _key(2, 0) + _varint(width)
             + _key(3, 0) + _varint(channels) + _bytes_field(4, png))
    return _bytes_field(1, tag.encode()) + _bytes_field(4, image)


def _summary(values: list[bytes]) -> bytes:
    # Summary: repeated Value value = 1.
    return b"".join(_bytes_field(1, v) for v in values)


def encode_record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", masked_crc32c(header)) + data
            + struct.pack("<I", masked_crc32c(data)))


# ------------------------------------------------------------------------------- writers
class TensorBoardWriter:
    """Appends scalar and image summaries to one TensorBoard event file."""

    def __init__(self, logdir: str | pathlib.Path):
        logdir = pathlib.Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = logdir / name
        self._file = open(self.path, "ab")
        self._write(_event(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, event: bytes) -> None:
        self._file.write(encode_record(event))

    def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        values = [_scalar_value(k, float(v)) for k, v in scalars.items()]
        self._write(_event(time.time(), int(step), summary=_summary(values)))

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """`image`: uint8 [H, W, C] with C in (1, 3, 4)."""
        from PIL import Image

        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
            raise ValueError(f"image summary {tag!r}: expected uint8 [H, W, 1|3|4], got "
                             f"{image.dtype} {list(image.shape)}")
        buf = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
        h, w, c = image.shape
        value = _image_value(tag, buf.getvalue(), h, w, c)
        self._write(_event(time.time(), int(step), summary=_summary([value])))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class MetricWriter:
    """Scalars to JSONL and TensorBoard; images to TensorBoard. No-op when `enabled=False`."""

    def __init__(self, workdir: str | pathlib.Path, *, enabled: bool = True,
                 tensorboard: bool = True):
        self.enabled = enabled
        self.jsonl_path = pathlib.Path(workdir) / "metrics.jsonl"
        self._jsonl = None
        self._tb = None
        if enabled:
            self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.jsonl_path, "a")
            if tensorboard:
                self._tb = TensorBoardWriter(pathlib.Path(workdir) / "tensorboard")

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: _to_float(v) for k, v in scalars.items()}
        record = {"step": int(step), "time": round(time.time(), 3), **clean}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.scalars(step, {k: v for k, v in clean.items() if v is not None})
            self._tb.flush()

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        if self.enabled and self._tb is not None:
            self._tb.image(step, tag, image)
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _to_float(value) -> float | None:
    value = float(np.asarray(value))
    # JSON has no NaN/Inf; keep the record valid and make the problem visible as null.
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------------------- readers
def read_jsonl(path: str | pathlib.Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def iter_event_records(path: str | pathlib.Path) -> Iterator[bytes]:
    """Yields the payload of each record of an event file, checking both CRCs."""
    with open(path, "rb") as f:
        while header := f.read(8):
            (length,) = struct.unpack("<Q", header)
            (crc_len,) = struct.unpack("<I", f.read(4))
            data = f.read(length)
            (crc_data,) = struct.unpack("<I", f.read(4))
            if crc_len != masked_crc32c(header) or crc_data != masked_crc32c(data):
                raise ValueError(f"{path}: corrupt event record (CRC mismatch)")
            yield data


def _parse_fields(data: bytes) -> Iterator[tuple[int, int, object]]:
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _read_varint(data, pos)
            value, pos = data[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def read_tensorboard_scalars(path: str | pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from one event file (a reader for tests and scripts)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in iter_event_records(path):
        step, summary = 0, None
        for field, _, value in _parse_fields(record):
            if field == 2:
                step = value
            elif field == 5:
                summary = value
        if summary is None:
            continue
        for _, _, value_msg in _parse_fields(summary):
            tag, scalar = None, None
            for field, _, v in _parse_fields(value_msg):
                if field == 1:
                    tag = v.decode()
                elif field == 2:
                    (scalar,) = struct.unpack("<f", v)
            if tag is not None and scalar is not None:
                out.setdefault(tag, []).append((step, scalar))
    return out


# ------------------------------------------------------------------------------ progress
class Progress:
    """A tqdm bar over steps that shows steps/s, ETA and the latest metrics.

    `disable=True` (e.g. on processes other than 0, or in tests) makes every call a no-op.
    """

    def __init__(self, total: int, *, initial: int = 0, desc: str = "train",
                 disable: bool = False):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step",
                         dynamic_ncols=True, disable=disable, smoothing=0.1)

    def update(self, n: int = 1, **metrics: float) -> None:
        self._bar.update(n)
        if metrics:
            self._bar.set_postfix({k: f"{float(v):.4g}" for k, v in metrics.items()},
                                  refresh=False)

    def write(self, message: str) -> None:
        self._bar.write(message)

    def close(self) -> None:
        self._bar.close()

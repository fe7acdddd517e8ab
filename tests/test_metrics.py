"""MetricWriter: JSONL + TensorBoard event files that a protobuf parser accepts."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from m4.train import metrics


def test_crc32c_known_vector():
    # The standard CRC-32C check value (RFC 3720, appendix B.4).
    assert metrics.crc32c(b"123456789") == 0xE3069283


def test_jsonl_and_tensorboard_roundtrip(tmp_path):
    with metrics.MetricWriter(tmp_path) as writer:
        writer.write_scalars(1, {"loss": 2.5, "lr": np.float32(1e-3)})
        writer.write_scalars(2, {"loss": 1.25, "bad": float("nan")})
        writer.write_image(2, "recon", np.zeros((4, 6, 3), np.uint8))
    rows = metrics.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["loss"] == 2.5 and rows[1]["bad"] is None
    [event_file] = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    scalars = metrics.read_tensorboard_scalars(event_file)
    assert scalars["loss"] == [(1, 2.5), (2, 1.25)]
    assert scalars["lr"][0][0] == 1 and scalars["lr"][0][1] == pytest.approx(1e-3)
    assert "bad" not in scalars


def test_corrupt_record_is_detected(tmp_path):
    with metrics.MetricWriter(tmp_path) as writer:
        writer.write_scalars(1, {"loss": 1.0})
    [event_file] = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    data = bytearray(event_file.read_bytes())
    data[-6] ^= 0xFF
    event_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC"):
        list(metrics.iter_event_records(event_file))


def _event_classes():
    """Event/Summary message classes built from their .proto definitions with the real
    protobuf library, so the hand-written encoding is checked by an independent parser."""
    descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")
    from google.protobuf import descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(name="m4_test_event.proto", package="tftest",
                                           syntax="proto3")

    def add(msg, name, number, ftype, label=F.LABEL_OPTIONAL, type_name=None):
        field = msg.field.add(name=name, number=number, type=ftype, label=label)
        if type_name:
            field.type_name = type_name

    image = f.message_type.add(name="Image")
    add(image, "height", 1, F.TYPE_INT32)
    add(image, "width", 2, F.TYPE_INT32)
    add(image, "colorspace", 3, F.TYPE_INT32)
    add(image, "encoded_image_string", 4, F.TYPE_BYTES)
    value = f.message_type.add(name="Value")
    add(value, "tag", 1, F.TYPE_STRING)
    add(value, "simple_value", 2, F.TYPE_FLOAT)
    add(value, "image", 4, F.TYPE_MESSAGE, type_name=".tftest.Image")
    summary = f.message_type.add(name="Summary")
    add(summary, "value", 1, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".tftest.Value")
    event = f.message_type.add(name="Event")
    add(event, "wall_time", 1, F.TYPE_DOUBLE)
    add(event, "step", 2, F.TYPE_INT64)
    add(event, "file_version", 3, F.TYPE_STRING)
    add(event, "summary", 5, F.TYPE_MESSAGE, type_name=".tftest.Summary")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tftest.Event"))


def test_events_parse_with_protobuf(tmp_path):
    Event = _event_classes()
    with metrics.MetricWriter(tmp_path) as writer:
        writer.write_scalars(7, {"loss": 0.5})
        writer.write_image(8, "grid", np.full((3, 5, 3), 200, np.uint8))
    [event_file] = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    events = [Event.FromString(r) for r in metrics.iter_event_records(event_file)]
    assert events[0].file_version == "brain.Event:2"
    assert events[1].step == 7 and events[1].summary.value[0].tag == "loss"
    assert events[1].summary.value[0].simple_value == 0.5
    img = events[2].summary.value[0].image
    assert (img.height, img.width, img.colorspace) == (3, 5, 3)
    assert img.encoded_image_string.startswith(b"\x89PNG")


def test_record_framing():
    record = metrics.encode_record(b"abc")
    (length,) = struct.unpack("<Q", record[:8])
    assert length == 3 and record[12:15] == b"abc" and len(record) == 8 + 4 + 3 + 4


def test_disabled_writer_writes_nothing(tmp_path):
    writer = metrics.MetricWriter(tmp_path / "w", enabled=False)
    writer.write_scalars(1, {"loss": 1.0})
    writer.close()
    assert not (tmp_path / "w").exists()

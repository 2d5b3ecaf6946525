"""An independent TensorBoard event-file writer and reader for trainer_test (TensorBoard.*Golden*): Python's
protobuf package for the Event message and TFRecord framing written here from the format's description, sharing
no code with trainer/tensorboard.cpp or proto/tensorboard.proto.

TFRecord: each record is
  uint64 length (little endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
  masked_crc(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8  (mod 2^32), crc32c = CRC-32C (Castagnoli).
Event (tensorflow/core/util/event.proto, summary.proto; field numbers from there):
  Event { double wall_time = 1; int64 step = 2; oneof what { string file_version = 3; Summary summary = 5; } }
  Summary { repeated Value value = 1; }  Summary.Value { string tag = 1; float simple_value = 2; }
No TensorBoard/TensorFlow package is in Debian, so the message schema is declared here with descriptor_pb2.

  tfrecord_events.py write OUT   writes file_version "brain.Event:2", then the scalars of SCALARS below
  tfrecord_events.py read PATH   verifies every record's framing and CRCs, prints one JSON object per event
"""
import json
import struct
import sys

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SCALARS = [("train/loss", 2.5, 0), ("train/loss", 1.25, 10), ("eval/acc1", 91.25, 10), ("lr", 0.1, 20)]


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _event_class():
    F = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(name="golden_event.proto", package="golden", syntax="proto3")
    summary = f.message_type.add(name="Summary")
    value = summary.nested_type.add(name="Value")
    value.oneof_decl.add(name="value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL, oneof_index=0)
    summary.field.add(name="value", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                      type_name=".golden.Summary.Value")
    event = f.message_type.add(name="Event")
    event.oneof_decl.add(name="what")
    event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL, oneof_index=0)
    event.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".golden.Summary", oneof_index=0)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    desc = pool.FindMessageTypeByName("golden.Event")
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(pool).GetPrototype(desc)


Event = _event_class()


def write(path):
    events = [Event(wall_time=1700000000.5, file_version="brain.Event:2")]
    for tag, value, step in SCALARS:
        e = Event(wall_time=1700000001.0 + step, step=step)
        e.summary.value.add(tag=tag, simple_value=value)
        events.append(e)
    with open(path, "wb") as f:
        for e in events:
            data = e.SerializeToString()
            length = struct.pack("<Q", len(data))
            f.write(length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data)))


def read(path):
    with open(path, "rb") as f:
        raw = f.read()
    pos = 0
    while pos < len(raw):
        if pos + 12 > len(raw):
            sys.exit(f"{path}: truncated record header at {pos}")
        length_bytes = raw[pos:pos + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", raw[pos + 8:pos + 12])
        if length_crc != masked_crc(length_bytes):
            sys.exit(f"{path}: bad length CRC at {pos}")
        if pos + 12 + length + 4 > len(raw):
            sys.exit(f"{path}: truncated record at {pos}")
        data = raw[pos + 12:pos + 12 + length]
        (data_crc,) = struct.unpack("<I", raw[pos + 12 + length:pos + 16 + length])
        if data_crc != masked_crc(data):
            sys.exit(f"{path}: bad data CRC at {pos}")
        e = Event()
        e.ParseFromString(data)
        out = {"wall_time": e.wall_time, "step": e.step}
        if e.WhichOneof("what") == "file_version":
            out["file_version"] = e.file_version
        for v in e.summary.value:
            out.setdefault("values", []).append({"tag": v.tag, "simple_value": v.simple_value})
        print(json.dumps(out))
        pos += 16 + length


if __name__ == "__main__":
    {"write": write, "read": read}[sys.argv[1]](sys.argv[2])

"""tfevents.py - an independent reader of TensorBoard event files, for tests/tensorboard.sh.

Standard library only (there is no TensorFlow or TensorBoard here): CRC-32C
and the protobuf wire format are implemented below from their specifications,
not from frost's code (src/formats/tensorboard.c).

    tfevents.py check EVENTS CSV LR START [--eval LOSS ACCURACY_PERCENT]

checks that EVENTS is a sequence of TFRecords whose every length and data CRC
(masked CRC-32C) is right, holding tensorflow.Event messages: first the file
version "brain.Event:2" at step 0; then a session_log START at step START
(the run's first step); then one summary event per row of the metrics CSV, at its step, with
the scalars train/loss, train/accuracy, train/learning_rate (the row's lr
where the CSV has that column, else LR), system/samples_per_s and
system/allreduce_bytes_per_step, and train/grad_norm where the CSV has that
column, equal to the row's values to the CSV's precision and float's; then, with --eval, one event at the
last row's step with eval/loss and eval/accuracy as `frost train` printed them
(4 decimals, and a percentage with 2).  Prints what it found, or the first
problems, and exits 1 on any problem.
"""
import csv
import struct
import sys


def crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


TABLE = crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc = TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked(crc):
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def records(data):
    """The data of each TFRecord; raises ValueError on a bad frame or CRC."""
    at, out = 0, []
    while at < len(data):
        if len(data) - at < 16:
            raise ValueError("record %d: %d stray bytes at the end" % (len(out) + 1, len(data) - at))
        header = data[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[at + 8:at + 12])
        if length_crc != masked(crc32c(header)):
            raise ValueError("record %d: the length's CRC is wrong" % (len(out) + 1))
        if at + 16 + length > len(data):
            raise ValueError("record %d: %d bytes of data, the file ends first" % (len(out) + 1, length))
        body = data[at + 12:at + 12 + length]
        (data_crc,) = struct.unpack("<I", data[at + 12 + length:at + 16 + length])
        if data_crc != masked(crc32c(body)):
            raise ValueError("record %d: the data's CRC is wrong" % (len(out) + 1))
        out.append(body)
        at += 16 + length
    return out


def varint(data, at):
    value, shift = 0, 0
    while True:
        if at >= len(data):
            raise ValueError("a varint runs past the end")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        shift += 7
        if not byte & 0x80:
            return value, at


def message(data):
    """A protobuf message as {field number: [(wire type, value), ...]}."""
    fields, at = {}, 0
    while at < len(data):
        key, at = varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = varint(data, at)
        elif wire == 1:
            value, at = data[at:at + 8], at + 8
        elif wire == 2:
            length, at = varint(data, at)
            value, at = data[at:at + length], at + length
        elif wire == 5:
            value, at = data[at:at + 4], at + 4
        else:
            raise ValueError("wire type %d of field %d" % (wire, number))
        if at > len(data):
            raise ValueError("field %d runs past the end" % number)
        fields.setdefault(number, []).append((wire, value))
    return fields


def one(fields, number, wire, what):
    values = fields.get(number, [])
    if len(values) != 1 or values[0][0] != wire:
        raise ValueError("%s (field %d, wire type %d): found %r" % (what, number, wire, values))
    return values[0][1]


def event(body):
    """(wall_time, step, kind, payload) of a tensorflow.Event."""
    fields = message(body)
    wall_time = struct.unpack("<d", one(fields, 1, 1, "wall_time"))[0]
    step = one(fields, 2, 0, "step") if 2 in fields else 0
    if step >= 1 << 63:
        step -= 1 << 64
    kinds = [n for n in (3, 5, 7) if n in fields]
    if len(kinds) != 1 or set(fields) - {1, 2, kinds[0]}:
        raise ValueError("an event with fields %s" % sorted(fields))
    if kinds[0] == 3:
        return wall_time, step, "file_version", one(fields, 3, 2, "file_version").decode()
    if kinds[0] == 7:
        session_log = message(one(fields, 7, 2, "session_log"))
        return wall_time, step, "session_log", one(session_log, 1, 0, "status")
    values = {}
    for wire, raw in message(one(fields, 5, 2, "summary")).get(1, []):
        if wire != 2:
            raise ValueError("a summary value of wire type %d" % wire)
        value = message(raw)
        tag = one(value, 1, 2, "tag").decode()
        if set(value) != {1, 2}:
            raise ValueError("value %s has fields %s" % (tag, sorted(value)))
        values[tag] = struct.unpack("<f", one(value, 2, 5, "simple_value"))[0]
    return wall_time, step, "summary", values


def as_float(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def close(got, want, decimals):
    """got (a float32) equals want printed with `decimals` decimals."""
    return abs(got - want) <= 0.5 * 10 ** -decimals + 1e-6 * abs(want)


def check(path, csv_path, lr, start, evaluation):
    problems = []
    with open(path, "rb") as f:
        events = [event(body) for body in records(f.read())]
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    wall_times = [e[0] for e in events]
    if wall_times != sorted(wall_times):
        problems.append("wall times go back")
    expected = [("file_version", 0), ("session_log", start)]
    expected += [("summary", int(row["step"])) for row in rows]
    if evaluation:
        expected.append(("summary", int(rows[-1]["step"])))
    if [(e[2], e[1]) for e in events] != expected:
        problems.append("events (kind, step) %s, expected %s" % ([(e[2], e[1]) for e in events], expected))
        return problems, events
    if events[0][3] != "brain.Event:2":
        problems.append("file_version %r" % events[0][3])
    if events[1][3] != 1:
        problems.append("session_log status %r, expected START (1)" % events[1][3])
    train_tags = {"train/loss", "train/accuracy", "train/learning_rate", "system/samples_per_s",
                  "system/allreduce_bytes_per_step"}
    if rows and "grad_norm" in rows[0]:
        train_tags.add("train/grad_norm")
    for row, (_, step, _, values) in zip(rows, events[2:]):
        if set(values) != train_tags:
            problems.append("step %d: tags %s" % (step, sorted(values)))
            continue
        if not close(values["train/loss"], float(row["loss"]), 6):
            problems.append("step %d: loss %r, the CSV has %s" % (step, values["train/loss"], row["loss"]))
        if not close(values["train/accuracy"], float(row["accuracy"]), 4):
            problems.append("step %d: accuracy %r, the CSV has %s" % (step, values["train/accuracy"], row["accuracy"]))
        want_lr = float(row["lr"]) if "lr" in row else lr
        if not close(values["train/learning_rate"], as_float(want_lr), 12):
            problems.append("step %d: learning rate %r, not %r" % (step, values["train/learning_rate"], want_lr))
        if "grad_norm" in row and not close(values["train/grad_norm"], float(row["grad_norm"]), 9):
            problems.append("step %d: gradient norm %r, the CSV has %s" % (
                step, values["train/grad_norm"], row["grad_norm"]))
        if not close(values["system/samples_per_s"], float(row["samples_per_s"]), 1):
            problems.append("step %d: samples/s %r, the CSV has %s" % (step, values["system/samples_per_s"], row["samples_per_s"]))
        if values["system/allreduce_bytes_per_step"] != as_float(int(row["allreduce_bytes"])):
            problems.append("step %d: allreduce bytes %r, the CSV has %s" % (
                step, values["system/allreduce_bytes_per_step"], row["allreduce_bytes"]))
    if evaluation:
        values = events[-1][3]
        loss, percent = evaluation
        if set(values) != {"eval/loss", "eval/accuracy"}:
            problems.append("the last event's tags %s" % sorted(values))
        elif not close(values["eval/loss"], loss, 4) or not close(100 * values["eval/accuracy"], percent, 2):
            problems.append("eval loss %r accuracy %r, frost printed %s and %s%%" % (
                values["eval/loss"], values["eval/accuracy"], loss, percent))
    return problems, events


def main(argv):
    if len(argv) < 5 or argv[0] != "check":
        sys.exit(__doc__)
    path, csv_path, lr, start = argv[1], argv[2], float(argv[3]), int(argv[4])
    evaluation, rest = None, argv[5:]
    while rest:
        if rest[0] == "--eval":
            evaluation, rest = (float(rest[1]), float(rest[2])), rest[3:]
        else:
            sys.exit("unknown argument %r" % rest[0])
    try:
        problems, events = check(path, csv_path, lr, start, evaluation)
    except (ValueError, struct.error) as e:
        problems, events = ["%s: %s" % (path, e)], []
    if problems:
        print("; ".join(problems[:4]))
        return 1
    print("%d records, every CRC right, %d summaries" % (len(events), sum(e[2] == "summary" for e in events)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

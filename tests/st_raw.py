"""st_raw.py - a safetensors file's header and raw tensor bytes, standard library only,
for the shell tests that look inside the files frost writes (lora.sh, frozen_bf16.sh).

  import st_raw
  head, data = st_raw.read(path)   # head: name -> {"dtype", "shape", ...}; data: name -> bytes
  st_raw.words(data[name])         # the tensor's 32-bit words (float32 bits)
  st_raw.write(path, head, blob)   # head (re)written in front of the original data section
"""
import json
import struct


def read(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = {k: v for k, v in json.loads(raw[8:8 + n]).items() if k != "__metadata__"}
    data = {k: raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]
            for k, v in head.items()}
    return head, data


def data_section(path):
    raw = open(path, "rb").read()
    return raw[8 + struct.unpack("<Q", raw[:8])[0]:]


def words(data):
    return struct.unpack("<%dI" % (len(data) // 4), data)


def write(path, head, blob):
    text = json.dumps(head).encode()
    text += b" " * (-len(text) % 8)
    open(path, "wb").write(struct.pack("<Q", len(text)) + text + blob)

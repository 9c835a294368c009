"""make_idx.py DIR N [SEED] [CLASSES] - write a small learnable IDX dataset.

Each class c has a fixed random 28x28 prototype; a sample is its class's
prototype plus noise, clipped to bytes.  Writes train-* (N samples) and t10k-*
(N/4 samples) images and labels, gzip'd, as Fashion-MNIST's files are.
Only the standard library is used, so the tests need nothing else.
"""
import gzip, random, struct, sys

def write(path, magic, dims, payload):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload)

def main():
    out, n = sys.argv[1], int(sys.argv[2])
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    classes = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    rng = random.Random(seed)
    protos = [[rng.randrange(256) for _ in range(784)] for _ in range(classes)]
    for prefix, count in (("train", n), ("t10k", max(1, n // 4))):
        labels = [rng.randrange(classes) for _ in range(count)]
        pixels = bytearray()
        for label in labels:
            pixels.extend(min(255, max(0, p + rng.randrange(-60, 61))) for p in protos[label])
        write(f"{out}/{prefix}-images-idx3-ubyte.gz", 0x803, (count, 28, 28), bytes(pixels))
        write(f"{out}/{prefix}-labels-idx1-ubyte.gz", 0x801, (count,), bytes(labels))

if __name__ == "__main__":
    main()

#!/bin/sh
# bench/gpt.sh - frost against PyTorch training a byte-level GPT (L6 C384 H6 T128), side by
# side: fully trainable, all but the last block frozen, and that with frost's feature cache.
#   bench/gpt.sh [--frost PATH] [--threads 2] [--repeat 3] [--quick] ...
#   bench/gpt.sh --help
# See bench/README.md (*The GPT workload*).
here=$(cd "$(dirname "$0")" && pwd) || exit 1
py=${BENCH_PYTHON:-/usr/bin/python3}
[ -x "$py" ] || py=$(command -v python3) || { echo "bench: python3 not found" >&2; exit 1; }
exec "$py" "$here/gpt_bench.py" "$@"

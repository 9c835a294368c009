#!/bin/sh
# bench/run.sh - frost against PyTorch on Fashion-MNIST, side by side. See bench/README.md.
#   bench/run.sh [--frost PATH] [--threads T] [--quick] [--data DIR] [--mpi 1,4|none] ...
#   bench/run.sh --help
here=$(cd "$(dirname "$0")" && pwd) || exit 1
py=${BENCH_PYTHON:-/usr/bin/python3}
[ -x "$py" ] || py=$(command -v python3) || { echo "bench: python3 not found" >&2; exit 1; }
exec "$py" "$here/bench.py" "$@"

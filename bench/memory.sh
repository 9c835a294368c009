#!/bin/sh
# bench/memory.sh - peak memory of frost against PyTorch on issue 13's MLP, by thread count.
#   bench/memory.sh [--frost PATH] [--threads 1,2,4,8] [--cases full,frozen] [--steps N] ...
#   bench/memory.sh --help
here=$(cd "$(dirname "$0")" && pwd) || exit 1
py=${BENCH_PYTHON:-/usr/bin/python3}
[ -x "$py" ] || py=$(command -v python3) || { echo "memory: python3 not found" >&2; exit 1; }
exec "$py" "$here/memory.py" "$@"

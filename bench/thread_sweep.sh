#!/bin/sh
# bench/thread_sweep.sh - frost's samples/s over 1, 2, 4, ... threads (up to the cores present)
# for the MLP and the CNN, its efficiency against 1 thread, and PyTorch's best at each count.
#   bench/thread_sweep.sh [--frost PATH] [--threads 1,2,4] [--workloads 1,4] [--repeat N] ...
#   bench/thread_sweep.sh --help
here=$(cd "$(dirname "$0")" && pwd) || exit 1
py=${BENCH_PYTHON:-/usr/bin/python3}
[ -x "$py" ] || py=$(command -v python3) || { echo "thread_sweep: python3 not found" >&2; exit 1; }
exec "$py" "$here/thread_sweep.py" "$@"

#!/bin/sh
# bench/resnet.sh - frost against PyTorch training torchvision's resnet18 on random images,
# side by side: all trained, trunk frozen up to layer4 (no cache), and that with frost's
# feature cache, at 3x112x112 and 3x224x224, batch 16 and 64.
#   bench/resnet.sh [--frost PATH] [--threads 2] [--repeat 2] [--configs 112/16,224/64] ...
#   bench/resnet.sh --help
# See bench/README.md (*resnet18*).
here=$(cd "$(dirname "$0")" && pwd) || exit 1
py=${BENCH_PYTHON:-/usr/bin/python3}
[ -x "$py" ] || py=$(command -v python3) || { echo "bench: python3 not found" >&2; exit 1; }
exec "$py" "$here/resnet_bench.py" "$@"

#!/bin/sh
# Go binding speed vs the Python path: decode tok/s (prefill 128, decode 64) and per-call overhead.
#   bench/bench_go.sh [-reps 3] [-precision exact|fast] [-json out.json]   (from the source root, after `make setup`)
set -e
cd "$(dirname "$0")/.."
exec make -s -C bindings/go bench BENCH_ARGS="$*"

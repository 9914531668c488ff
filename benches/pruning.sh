#!/usr/bin/env bash
# Pruning benchmark (release build): a Delta warehouse of 30 nights of scores (1 M rows a night
# by default), landed as `scoreland run` lands them; then the files and bytes that queries read,
# from DataFusion's scan metrics (EXPLAIN ANALYZE through `scoreland sql`'s query path): one
# score date, and one identity on one night before and after `optimize`.
#   benches/pruning.sh [ROWS_PER_NIGHT]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(realpath -m "${SCORELAND_BENCH_DIR:-target/bench}")/pruning
cargo bench -p scoreland --bench pruning -- "$WORK" "${1:-1000000}"

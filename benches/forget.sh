#!/usr/bin/env bash
# Forget benchmark (release build): the work a run does before its publish once identities were
# forgotten (`scoreland forget`): every value of the night's `identity` column hashed and looked
# up among the forgotten digests, and the files that hold one rewritten without its rows. A
# night of ROWS rows (default 20 M) in 16 files; FORGOTTEN identities (default 1,000), once none
# of them in the night, once all of them spread over every file.
#   benches/forget.sh [ROWS] [FORGOTTEN]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(realpath -m "${SCORELAND_BENCH_DIR:-target/bench}")/forget
mkdir -p "$WORK"
cargo bench -p scoreland --bench forget -- "$WORK" "${1:-20000000}" "${2:-1000}"

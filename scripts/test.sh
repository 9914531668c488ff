#!/usr/bin/env bash
# The project's test command (README, and CI through .ci/run): formatting, lints, every
# test (the object-store conformance suite runs against S3 and Azure emulators that
# scripts/test-services.sh installs and starts on loopback), and `validate` of every pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

# Real S3 (moto) and Azure Blob (azurite) servers for the sink's conformance suite.
export SCORELAND_SVC_DIR=${SCORELAND_SVC_DIR:-$HOME/.cache/scoreland-test-services}
scripts/test-services.sh install
scripts/test-services.sh start
trap 'scripts/test-services.sh stop' EXIT
source "$SCORELAND_SVC_DIR/env.sh"
# A test whose server is missing fails rather than skips (crates/sink/tests/sink.rs).
export SCORELAND_REQUIRE_SERVICES=1

cargo run --quiet -p scoreland -- validate pipelines/*.toml
cargo test --workspace

# DuckDB and Spark read what the demo lands, partition column inferred.
READERS=$(mktemp -d)
trap 'scripts/test-services.sh stop; rm -rf "$READERS"' EXIT
SCORELAND_WAREHOUSE="$READERS/wh" SCORELAND_STAGING="$READERS/staging" \
  cargo run --quiet -p scoreland -- -q run pipelines/demo.toml
# The readers' stderr is kept aside and shown only when they fail (Spark is chatty).
if ! SPARK_LOCAL_IP=127.0.0.1 "$SCORELAND_SVC_DIR/venv/bin/python" tests/readers/read_landed.py "$READERS/wh" 2> "$READERS/readers.err"; then
  echo "the readers failed; their stderr:" >&2
  cat "$READERS/readers.err" >&2
  exit 1
fi

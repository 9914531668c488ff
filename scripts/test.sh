#!/usr/bin/env bash
# The project's test command (README, and CI through .ci/run): formatting, lints, every
# test (the object-store conformance suite runs against S3 and Azure emulators that
# scripts/test-services.sh installs and starts on loopback), and `validate` of every pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."

# The distributed engine (`scoreland cluster`, `sql --cluster`) is a cargo feature the demo
# does not build; every build here has it, so one set of artifacts serves them all.
FEATURES=(--features scoreland/cluster)

cargo fmt --all -- --check
cargo clippy --workspace --all-targets "${FEATURES[@]}" --quiet -- -D warnings

# Real S3 (moto) and Azure Blob (azurite) servers for the sink's conformance suite.
export SCORELAND_SVC_DIR=${SCORELAND_SVC_DIR:-$HOME/.cache/scoreland-test-services}
scripts/test-services.sh install
scripts/test-services.sh start
trap 'scripts/test-services.sh stop' EXIT
source "$SCORELAND_SVC_DIR/env.sh"
# A test whose server is missing fails rather than skips (crates/sink/tests/sink.rs).
export SCORELAND_REQUIRE_SERVICES=1

cargo run --quiet -p scoreland "${FEATURES[@]}" -- validate pipelines/*.toml
cargo test --workspace "${FEATURES[@]}"

# delta-rs (Python), Polars and DuckDB read the Delta tables the demo lands, and agree with
# `scoreland sql` on rows, sums and partitions.
READERS=$(mktemp -d)
trap 'scripts/test-services.sh stop; rm -rf "$READERS"' EXIT
SCORELAND_WAREHOUSE="$READERS/wh" SCORELAND_STAGING="$READERS/staging" \
  cargo run --quiet -p scoreland "${FEATURES[@]}" -- -q run pipelines/demo.toml
# What `scoreland sql` answers, for the readers to agree with (JSON lines).
sql() { cargo run --quiet -p scoreland "${FEATURES[@]}" -- sql --warehouse "$READERS/wh" --format json "$1" > "$READERS/$2"; }
sql "SELECT dataset_id || '/' || CAST(score_date AS VARCHAR) AS k, count(*) AS n, sum(score) AS s FROM scores GROUP BY 1" scores.json
sql "SELECT (SELECT count(*) FROM summary) AS summary, (SELECT count(*) FROM drift) AS drift" counts.json
# An ExperienceEvent dataset landed from its schema in two runs, the oldest night then the two
# after it (the third night's rows carry a new field), so the readers see a table whose schema
# grew in a later commit.
sed 's/batches = { mode = "catch_up" }/batches = { mode = "batch", id = "01KQTSV67FMMRJ70HTTHR9SKHY" }/' \
  pipelines/web-events.toml > "$READERS/web-events-first.toml"
for p in "$READERS/web-events-first.toml" pipelines/web-events.toml; do
  SCORELAND_WAREHOUSE="$READERS/wh" SCORELAND_STAGING="$READERS/staging" \
    cargo run --quiet -p scoreland "${FEATURES[@]}" -- -q run "$p"
done
sql "SELECT CAST(event_date AS VARCHAR) AS k, count(*) AS n, count(web_webPageDetails_isHomePage) AS h FROM web_events GROUP BY 1" events.json
# The readers' stderr is kept aside and shown only when they fail.
if ! "$SCORELAND_SVC_DIR/venv-delta/bin/python" tests/readers/read_landed.py "$READERS/wh" "$READERS" 2> "$READERS/readers.err"; then
  echo "the readers failed; their stderr:" >&2
  cat "$READERS/readers.err" >&2
  exit 1
fi

# `scoreland serve` with real Postgres clients (psql, psycopg 3, SQLAlchemy over psycopg2 and
# psycopg 3, pandas, JDBC, psqlODBC) on the same warehouse, checked against `scoreland sql`;
# ends with a bounded load test.
cargo build --quiet -p scoreland "${FEATURES[@]}"
BIN=$(realpath "${CARGO_TARGET_DIR:-target}/debug/scoreland")
if ! "$SCORELAND_SVC_DIR/venv-clients/bin/python" tests/clients/serve_clients.py \
    "$BIN" "$READERS/wh" "$READERS/staging" pipelines/demo.toml > "$READERS/clients.out" 2>&1; then
  echo "the Postgres clients failed:" >&2
  cat "$READERS/clients.out" >&2
  exit 1
fi
grep -E '^(load|serve clients):' "$READERS/clients.out"

# `scoreland report` in headless Chromium (after the clients' second run, so drift has a point).
if ! python3 tests/clients/report_check.py "$BIN" "$READERS/wh" "$READERS" > "$READERS/report.out" 2>&1; then
  echo "the report check failed:" >&2
  cat "$READERS/report.out" >&2
  exit 1
fi
grep -E '^report:' "$READERS/report.out"

# `[lineage]` to a local OpenLineage receiver and a file, each event checked against
# openlineage-python's model of the spec; `--metrics-file` read by prometheus_client.
mkdir -p "$READERS/lineage"
if ! "$SCORELAND_SVC_DIR/venv-clients/bin/python" tests/clients/lineage_check.py "$BIN" "$READERS/lineage" pipelines/demo.toml \
    > "$READERS/lineage.out" 2>&1; then
  echo "the lineage check failed:" >&2
  cat "$READERS/lineage.out" >&2
  exit 1
fi
grep -E '^lineage:' "$READERS/lineage.out"

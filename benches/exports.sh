#!/usr/bin/env bash
# Dataset export benchmark (release build): a ~1 GB, 64-file export folder that the simulator
# writes into moto (S3) and into the directory an sshd serves (SFTP); `scoreland export
# download` (list, check the flow's run, fetch, verify, stage as parquet) against the AWS CLI's
# `aws s3 cp --recursive` and OpenSSH's `sftp` fetching the same folder, alternated, each with
# wall time and peak RSS.
#   benches/exports.sh [ROWS]     (default 18 M rows: ~1 GB in 64 parts)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-18000000}
ROUNDS=${ROUNDS:-2}
WORK=$(realpath -m "${SCORELAND_BENCH_DIR:-target/bench}")/exports
BIN=$(realpath target/release/scoreland)
export SCORELAND_SVC_DIR=${SCORELAND_SVC_DIR:-$HOME/.cache/scoreland-test-services}
mkdir -p "$WORK"
cargo build --release --quiet -p scoreland
scripts/test-services.sh install
[ -x "$WORK/venv/bin/aws" ] || { python3 -m venv "$WORK/venv" && "$WORK/venv/bin/pip" install -q awscli; }

PLATFORM="$WORK/platform-$ROWS"
if [ ! -f "$PLATFORM/platform.json" ]; then
  rm -rf "$PLATFORM"
  echo "generating $ROWS rows in 64 parts…" >&2
  "$BIN" sim generate --out "$PLATFORM" --rows "$ROWS" --parts 64 --batches 1 --seed 5 > /dev/null
fi

scripts/test-services.sh start > /dev/null
SIM=
source "$SCORELAND_SVC_DIR/env.sh"
PREFIX="bench-$(date +%s)"
# The copies are a GB each: none is left behind.
cleanup() {
  [ -n "$SIM" ] && kill $SIM 2> /dev/null
  rm -rf "$WORK"/out-* "$WORK/sim-exports" "${SCORELAND_TEST_SFTP_ROOT:?}/$PREFIX"
  scripts/test-services.sh stop
}
trap cleanup EXIT
rm -rf "$WORK/sim-exports" "$WORK/staging"
"$BIN" -q sim --data "$PLATFORM" --exports "$WORK/sim-exports" \
  --export-s3-endpoint "$SCORELAND_TEST_S3_ENDPOINT" --export-sftp-root "$SCORELAND_TEST_SFTP_ROOT" \
  > "$WORK/sim.json" &
SIM=$!
for _ in $(seq 1 100); do [ -s "$WORK/sim.json" ] && break; sleep 0.1; done
field() { python3 -c "import json,sys; print(json.load(open('$WORK/sim.json'))$1)"; }
BASE=$(field "['base_url']"); ORG=$(field "['org_id']"); CLIENT=$(field "['client_id']")
export SIM_SECRET; SIM_SECRET=$(field "['client_secret']")
DS=$(field "['datasets'][0]['id']")
export SCORELAND_EXPORT_SECRET_KEY=test SCORELAND_EXPORT_SFTP_PASSWORD=unused

pipeline() { # name url options destination-lines
  cat > "$WORK/$1.toml" <<TOML
name = "bench-$1"
staging = "$WORK/staging"
[source]
type = "dataset-export"
url = "$2"
dataset = "$DS"
concurrency = ${CONCURRENCY:-8}
options = $3
[source.platform]
platform_url = "$BASE"
ims_url = "$BASE"
org_id = "$ORG"
sandbox = "prod"
client_id = "$CLIENT"
client_secret = "\${SIM_SECRET}"
[source.flow]
name = "bench-$1"
file_type = "PARQUET"
compression = "NONE"
export_mode = "DAILY_FULL_EXPORT"
$4
[sink]
url = "$WORK/wh"
TOML
}
pipeline s3 "s3://scoreland-test/$PREFIX" \
  "{ aws_endpoint = \"$SCORELAND_TEST_S3_ENDPOINT\", aws_allow_http = \"true\", aws_access_key_id = \"test\", aws_secret_access_key = \"test\", aws_region = \"us-east-1\" }" \
  "destination = \"s3\"
bucket = \"scoreland-test\"
path = \"$PREFIX\"
credentials = { access_key = \"test\" }"
pipeline sftp "sftp://sftptest@127.0.0.1:$SCORELAND_TEST_SFTP_PORT$SCORELAND_TEST_SFTP_ROOT/$PREFIX" \
  "{ sftp_key_file = \"$SCORELAND_TEST_SFTP_KEY\", sftp_known_hosts = \"$SCORELAND_TEST_SFTP_KNOWN_HOSTS\" }" \
  "destination = \"sftp\"
path = \"$PREFIX\"
credentials = { host = \"127.0.0.1\", port = \"$SCORELAND_TEST_SFTP_PORT\", username = \"sftptest\" }"

# The exports themselves (not timed).
for p in s3 sftp; do
  "$BIN" -q export create "$WORK/$p.toml" > /dev/null
  "$BIN" -q export run "$WORK/$p.toml" > /dev/null
done
folder_of() { # pipeline -> "folder files bytes" of its newest run
  "$BIN" -q export runs "$WORK/$1.toml" --json | python3 -c "import json,sys; r=json.load(sys.stdin)[0]; print('/'.join(r['path_prefix'].split('/')[-2:]), r['output_files'], r['output_bytes'])"
}
read -r FOLDER FILES BYTES <<< "$(folder_of s3)"
read -r SFTP_FOLDER _ _ <<< "$(folder_of sftp)"
echo "folder $FOLDER: $FILES files, $(awk "BEGIN { print $BYTES/1e6 }") MB; $(nproc) cores"

measure() { # name command… -> "seconds peak_mb"
  local name=$1; shift
  rm -rf "$WORK/out-$name"; mkdir -p "$WORK/out-$name"
  /usr/bin/time -f '%e %M' -o "$WORK/time-$name" "$@" > "$WORK/log-$name" 2>&1 \
    || { cat "$WORK/log-$name" >&2; echo "failed 0"; return; }
  local got
  got=$(find "$WORK/out-$name" -type f -name '*.parquet' -print0 | du -cb --files0-from=- | tail -1 | cut -f1)
  [ "${got:-0}" -eq "$BYTES" ] || { echo "$name fetched ${got:-0} bytes, not $BYTES" >&2; exit 1; }
  read -r s kib < "$WORK/time-$name"
  rm -rf "$WORK/out-$name"
  echo "$s $(awk "BEGIN { print $kib/1024 }")"
}
aws_cp() {
  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 \
    "$WORK/venv/bin/aws" --endpoint-url "$SCORELAND_TEST_S3_ENDPOINT" s3 cp --recursive --only-show-errors \
    "s3://scoreland-test/$PREFIX/$FOLDER/" "$WORK/out-aws/"
}
sftp_get() {
  sftp -q -b - -i "$SCORELAND_TEST_SFTP_KEY" -P "$SCORELAND_TEST_SFTP_PORT" \
    -o UserKnownHostsFile="$SCORELAND_TEST_SFTP_KNOWN_HOSTS" sftptest@127.0.0.1 \
    <<< "get -r $SCORELAND_TEST_SFTP_ROOT/$PREFIX/$SFTP_FOLDER $WORK/out-openssh/"
}
export -f aws_cp sftp_get
export WORK PREFIX FOLDER SFTP_FOLDER SCORELAND_TEST_S3_ENDPOINT SCORELAND_TEST_SFTP_KEY SCORELAND_TEST_SFTP_PORT \
  SCORELAND_TEST_SFTP_KNOWN_HOSTS SCORELAND_TEST_SFTP_ROOT

row() { printf '%-28s %8s s  peak RSS %7s MB\n' "$1" "$2" "$3"; }
for round in $(seq 1 "$ROUNDS"); do
  read -r s mb < <(measure aws bash -c aws_cp); row "aws s3 cp --recursive" "$s" "$mb"; base=$s
  read -r s mb < <(measure s3 "$BIN" -q export download "$WORK/s3.toml" --out "$WORK/out-s3")
  row "scoreland (S3)" "$s" "$mb"; printf '%28s %.2fx aws\n' "" "$(awk "BEGIN { print $s/$base }")"
  read -r s mb < <(measure openssh bash -c sftp_get); row "OpenSSH sftp get -r" "$s" "$mb"; base=$s
  read -r s mb < <(measure sftp "$BIN" -q export download "$WORK/sftp.toml" --out "$WORK/out-sftp")
  row "scoreland (SFTP)" "$s" "$mb"; printf '%28s %.2fx sftp\n' "" "$(awk "BEGIN { print $s/$base }")"
done

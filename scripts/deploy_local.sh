#!/usr/bin/env bash
# Run fedprune on Flower's deployment engine on this machine: one SuperLink and two
# SuperNodes on 127.0.0.1 (insecure, loopback only), `flwr run` for ROUNDS rounds into
# OUT_DIR, then stop exactly the processes this script started (by PID). See docs/deployment.md.
#
#   scripts/deploy_local.sh ROUNDS OUT_DIR [--methods LIST] [--kill-node-after-round N]
#                                          [--flower-executor] [--run-config 'k=v ...']
#
# Exit status: 0 when the run finished with status "completed" and OUT_DIR/status.json says
# "complete"; 2 for a bad argument or run config (nothing started); 1 otherwise.
set -u -o pipefail

usage() { echo "usage: $0 ROUNDS OUT_DIR [--methods LIST] [--kill-node-after-round N] [--flower-executor] [--run-config 'k=v ...']" >&2; exit 2; }
[ $# -ge 2 ] || usage
ROUNDS=$1; OUT_DIR=$2; shift 2
METHODS=""; KILL_AFTER=""; EXTRA=""; WARM=1
while [ $# -gt 0 ]; do
  case $1 in
    --methods) METHODS=${2:?}; shift 2 ;;
    --kill-node-after-round) KILL_AFTER=${2:?}; shift 2 ;;
    --run-config) EXTRA=${2:?}; shift 2 ;;
    --flower-executor) WARM=0; shift ;;
    *) usage ;;
  esac
done
case $ROUNDS in ''|*[!0-9]*) echo "deploy_local: error: ROUNDS: must be an integer >= 1, got '$ROUNDS'" >&2; exit 2 ;; esac
if [ -n "$KILL_AFTER" ]; then
  case $KILL_AFTER in ''|*[!0-9]*) echo "deploy_local: error: --kill-node-after-round: must be an integer >= 1" >&2; exit 2 ;; esac
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(dirname "$(command -v python)")
for tool in flower-superlink flower-supernode flwr; do
  command -v "$tool" >/dev/null || { echo "deploy_local: error: $tool not on PATH (pip install -e .)" >&2; exit 2; }
done
mkdir -p "$(dirname "$OUT_DIR")" || exit 2
OUT_DIR=$(cd "$(dirname "$OUT_DIR")" && pwd)/$(basename "$OUT_DIR")
RUN_CONFIG="num-clients=2 rounds=$ROUNDS out-dir='$OUT_DIR'"
[ -n "$METHODS" ] && RUN_CONFIG="$RUN_CONFIG methods='$METHODS'"
EXTRA_ARGS=(); [ -n "$EXTRA" ] && EXTRA_ARGS=(--run-config "$EXTRA")  # a second --run-config: its keys win

# 1. Check the run config the way the ServerApp will read it: a bad one stops here, exit 2.
python -m fedprune.deploy.check --app "$ROOT" --run-config "$RUN_CONFIG" "${EXTRA_ARGS[@]}" || exit 2

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fedprune-deploy.XXXXXX")
export FLWR_HOME=$WORK/flwr-home
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ "$status" -eq 0 ] && [ -z "${KEEP_LOGS:-}" ]; then rm -rf "$WORK"; else echo "deploy_local: logs kept in $WORK" >&2; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 2. Three free loopback ports: the SuperLink's and each SuperNode's Runtime API.
read -r LINK_PORT NODE0_PORT NODE1_PORT < <(python - <<'PY'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
PY
)
mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "fedprune-local"

[superlink.fedprune-local]
address = "127.0.0.1:$LINK_PORT"
insecure = true
TOML

flower-superlink --insecure --host 127.0.0.1 --port "$LINK_PORT" \
  --disable-runtime-dependency-installation >"$WORK/superlink.log" 2>&1 &
PIDS+=($!)
echo "deploy_local: SuperLink pid $! on 127.0.0.1:$LINK_PORT (logs in $WORK)"
NODE_PIDS=()
for i in 0 1; do
  port_var=NODE${i}_PORT; port=${!port_var}
  isolation=subprocess; [ "$WARM" = 1 ] && isolation=process
  supernode=(flower-supernode); [ "$WARM" = 1 ] && supernode=(python -m fedprune.deploy.supernode)  # short idle poll
  "${supernode[@]}" --insecure --superlink "127.0.0.1:$LINK_PORT" --host 127.0.0.1 --port "$port" \
    --isolation "$isolation" --node-config "partition-id=$i num-partitions=2 client-state-dir='$OUT_DIR/nodes/node-$i'" >"$WORK/supernode-$i.log" 2>&1 &
  PIDS+=($!); NODE_PIDS+=($!)
  echo "deploy_local: SuperNode $i pid $! (Runtime API 127.0.0.1:$port, partition-id=$i)"
  if [ "$WARM" = 1 ]; then
    python -m fedprune.deploy.executor --runtime-api-address "127.0.0.1:$port" --supernode-pid "${NODE_PIDS[$i]}" >"$WORK/executor-$i.log" 2>&1 &
    PIDS+=($!)
    echo "deploy_local: ClientApp executor $i pid $! (one long-running process for SuperNode $i)"
  fi
done

# 3. Wait until the SuperLink accepts connections (starting takes seconds), then submit the run.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for _ in $(seq 600); do listening "$LINK_PORT" && break; sleep 0.2; done
listening "$LINK_PORT" || { echo "deploy_local: error: the SuperLink did not open 127.0.0.1:$LINK_PORT within 120 s" >&2; exit 1; }
cd "$ROOT" || exit 1
if ! flwr run . fedprune-local --run-config "$RUN_CONFIG" "${EXTRA_ARGS[@]}" --format json >"$WORK/submit.json" 2>"$WORK/submit.err"; then
  echo "deploy_local: error: flwr run failed: $(tail -n 1 "$WORK/submit.err")" >&2; exit 1
fi
RUN_ID=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['run-id'])" "$WORK/submit.json") || {
  echo "deploy_local: error: flwr run gave no run id: $(head -c 300 "$WORK/submit.json")" >&2; exit 1; }
echo "deploy_local: run $RUN_ID submitted: $RUN_CONFIG $EXTRA"

# 4. Wait for the run to finish (flwr run returns at once): the run folder every 0.2 s (to kill
#    SuperNode 1 once round N's evaluation is recorded, with --kill-node-after-round N), the
#    SuperLink's run status (`flwr ls`) every 5 s.
run_status() {
  flwr ls fedprune-local --run-id "$RUN_ID" --format json 2>/dev/null | python -c \
    "import json,sys; runs=json.load(sys.stdin).get('runs',[]); print(runs[0]['status'] if runs else 'unknown')" 2>/dev/null \
    || echo unknown
}
STATUS=unknown; TICKS=0
while :; do
  if [ -n "$KILL_AFTER" ] && grep -q "\"phase\": \"personal\", \"round\": $KILL_AFTER," "$OUT_DIR/rounds.jsonl" 2>/dev/null; then
    echo "deploy_local: killing SuperNode 1 (pid ${NODE_PIDS[1]}) after round $KILL_AFTER"
    kill -KILL "${NODE_PIDS[1]}"; wait "${NODE_PIDS[1]}" 2>/dev/null; KILL_AFTER=""
  fi
  for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || [ "$pid" = "${NODE_PIDS[1]}" ] || {
      echo "deploy_local: error: process $pid stopped unexpectedly (logs in $WORK)" >&2; exit 1; }
  done
  if [ $((TICKS % 25)) -eq 0 ]; then
    STATUS=$(run_status)
    case $STATUS in finished*) break ;; esac
  fi
  TICKS=$((TICKS + 1)); sleep 0.2
done
flwr log "$RUN_ID" fedprune-local --show >"$WORK/serverapp.log" 2>&1  # the ServerApp's output (progress lines)
FOLDER_STATUS=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['status'])" "$OUT_DIR/status.json" 2>/dev/null || echo missing)
grep -E "^\[[a-z0-9-]+\] round " "$WORK/serverapp.log" | sed 's/^/deploy_local: /'
echo "deploy_local: run $RUN_ID $STATUS; $OUT_DIR/status.json: $FOLDER_STATUS"
if [ "$STATUS" != "finished:completed" ] || [ "$FOLDER_STATUS" != complete ]; then
  python -c "import json,sys; print('deploy_local: error:', json.load(open(sys.argv[1])).get('message',''))" \
    "$OUT_DIR/status.json" >&2 2>/dev/null
  grep -m 1 -E "fedprune: error|Error|Exception" "$WORK/serverapp.log" | sed 's/^/deploy_local: ServerApp: /' >&2
  exit 1
fi

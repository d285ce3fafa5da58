#!/usr/bin/env bash
# A Ray cluster of several processes on this machine: a head and N worker nodes, every socket on 127.0.0.1, with
# token authentication. For trying `metadist submit` and multi-node runs without VMs; see cluster/README.md.
#
#   cluster/local-cluster.sh up [--workers N] [--worker-cpus C] [--head-cpus C] [--port P] [--dashboard-port P]
#                               [--client-port P] [--object-store-mb M] [--dir DIR]
#   cluster/local-cluster.sh status [--dir DIR]
#   cluster/local-cluster.sh down [--dir DIR]
#
# Each node is one `ray start --block` in a session of its own (setsid); its PID is recorded in DIR (default
# $METADIST_CLUSTER_DIR, else /tmp/metadist-cluster-$UID), with the logs and Ray's session files (--temp-dir DIR/ray
# for the head, DIR/ray-wN for worker N; so `ray.init(address="auto")` elsewhere does not find this cluster).
# `down` stops exactly those sessions: SIGTERM to each `ray start` (which stops its node's processes), then SIGKILL
# to whatever is left in its session. It never runs `ray stop`, which would stop every Ray on the machine.
#
# Environment: RAY (the `ray` command; default the one on PATH; its folder is put first on the nodes' PATH, so the
# jobs they run find `metadist` beside it), RAY_AUTH_MODE (default token; `disabled` to switch authentication off),
# RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token (the token; without one, the head generates
# ~/.ray/auth_token), METADIST_CLUSTER_START_TIMEOUT_S (default 180).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOOPBACK=127.0.0.1

usage() { sed -n '5,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "local-cluster.sh: $*" >&2; exit 1; }

command_name="${1:-}"
[[ -n "$command_name" ]] || usage
shift
WORKERS=2 WORKER_CPUS=1 HEAD_CPUS=0 PORT=6379 DASHBOARD_PORT=8265 CLIENT_PORT=10001 OBJECT_STORE_MB=""
DIR="${METADIST_CLUSTER_DIR:-${TMPDIR:-/tmp}/metadist-cluster-$(id -u)}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) WORKERS="$2"; shift 2 ;;
    --worker-cpus) WORKER_CPUS="$2"; shift 2 ;;
    --head-cpus) HEAD_CPUS="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --dashboard-port) DASHBOARD_PORT="$2"; shift 2 ;;
    --client-port) CLIENT_PORT="$2"; shift 2 ;;
    --object-store-mb) OBJECT_STORE_MB="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

pid_files() { compgen -G "$DIR/*.pid" || true; }

# -- down ------------------------------------------------------------------------------------------------------------
stop_session() {  # $1: the PID of a `ray start` that leads its own session
  local pid="$1" waited=0
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    while alive "$pid" && [[ $waited -lt 30 ]]; do sleep 0.5; waited=$((waited + 1)); done
  fi
  # What is left of the session (workers whose raylet died before they did): only this node's processes.
  local left
  left="$(ps -eo pid=,sid= | awk -v sid="$pid" '$2 == sid { print $1 }')"
  if [[ -n "$left" ]]; then
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
  fi
}

down() {
  local file stopped=0
  # Worker nodes first, then the head: nodes that lose their head mid-run only log errors until they are stopped.
  for file in $(pid_files | grep -v '/head.pid$') $(pid_files | grep '/head.pid$'); do
    stop_session "$(cat "$file")"
    rm -f "$file"
    stopped=$((stopped + 1))
  done
  rm -f "$DIR/cluster.env"
  echo "local-cluster.sh: stopped $stopped node(s) of $DIR"
}

# -- status ----------------------------------------------------------------------------------------------------------
status() {
  [[ -f "$DIR/cluster.env" ]] || { echo "no cluster recorded in $DIR"; return 1; }
  # shellcheck disable=SC1091
  source "$DIR/cluster.env"
  local file down_count=0
  for file in $(pid_files); do
    if alive "$(cat "$file")"; then state=running; else state=DEAD; down_count=$((down_count + 1)); fi
    printf '%-12s pid %-8s %s\n' "$(basename "$file" .pid)" "$(cat "$file")" "$state"
  done
  echo "GCS:        $GCS_ADDRESS"
  echo "job server: $DASHBOARD_URL"
  if [[ $down_count -eq 0 ]]; then
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}" "$RAY" status --address "$GCS_ADDRESS" 2>/dev/null \
      | sed -n '/^Node status/,/^Demands/p' || true
  fi
  [[ $down_count -eq 0 ]]
}

# -- up --------------------------------------------------------------------------------------------------------------
wait_until_ready() {  # the job server answers and the head sees $1 nodes alive
  "$PYTHON" - "$DASHBOARD_URL" "$1" "${METADIST_CLUSTER_START_TIMEOUT_S:-180}" "$DIR" <<'EOF'
import json, os, pathlib, sys, time, urllib.error, urllib.request

url, nodes, timeout_s, state = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), pathlib.Path(sys.argv[4])
headers = {}
if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
    path = pathlib.Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or pathlib.Path.home() / ".ray" / "auth_token")
    deadline = time.monotonic() + timeout_s
    while not os.environ.get("RAY_AUTH_TOKEN") and not path.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)  # the head generates it
    token = os.environ.get("RAY_AUTH_TOKEN") or path.read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
deadline, alive = time.monotonic() + timeout_s, -1
while time.monotonic() < deadline:
    if any(not os.path.exists(f"/proc/{p.read_text().strip()}") for p in state.glob("*.pid")):
        sys.exit("a node's `ray start` exited; see the logs in " + str(state / "logs"))
    try:
        opener.open(urllib.request.Request(f"{url}/api/jobs/", headers=headers), timeout=5).read()
        with opener.open(urllib.request.Request(f"{url}/api/v0/nodes?limit=1000", headers=headers), timeout=10) as r:
            alive = sum(n["state"] == "ALIVE" for n in json.load(r)["data"]["result"]["result"])
        if alive >= nodes:
            sys.exit(0)
    except (OSError, KeyError, ValueError):
        pass
    time.sleep(1)
sys.exit(f"the cluster was not ready after {timeout_s:.0f} s ({alive} of {nodes} nodes alive); see {state / 'logs'}")
EOF
}

up() {
  local existing
  for existing in $(pid_files); do
    alive "$(cat "$existing")" && die "a cluster already runs from $DIR (pid $(cat "$existing")); \`$0 down --dir $DIR\` first"
  done
  RAY="${RAY:-$(command -v ray || true)}"
  [[ -x "$RAY" ]] || die "no \`ray\` command: activate the virtualenv, or set RAY=/path/to/ray"
  local bin
  bin="$(cd "$(dirname "$RAY")" && pwd)"
  PYTHON="$bin/python"
  [[ -x "$PYTHON" ]] || PYTHON="$(command -v python3)"
  mkdir -p "$DIR/logs"
  rm -f "$DIR"/*.pid

  # The nodes' environment: single-machine mode (every socket on 127.0.0.1), no usage stats, token authentication,
  # and the `metadist` command beside `ray` on PATH for the jobs' entry points.
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
  export PATH="$bin:$PATH"
  local common=(--block --node-ip-address "$LOOPBACK" --dashboard-agent-listen-port 0 --disable-usage-stats)
  [[ -n "$OBJECT_STORE_MB" ]] && common+=(--object-store-memory $((OBJECT_STORE_MB * 1024 * 1024)))

  GCS_ADDRESS="$LOOPBACK:$PORT"
  DASHBOARD_URL="http://$LOOPBACK:$DASHBOARD_PORT"
  # A background job of a script is not a process-group leader, so setsid runs `ray start` itself (no fork): $! is
  # the session's leader, whose session `down` stops.
  setsid "$RAY" start --head "${common[@]}" --temp-dir "$DIR/ray" --port "$PORT" --num-cpus "$HEAD_CPUS" --include-dashboard true \
    --dashboard-host "$LOOPBACK" --dashboard-port "$DASHBOARD_PORT" --ray-client-server-port "$CLIENT_PORT" \
    </dev/null >"$DIR/logs/head.log" 2>&1 &
  echo $! >"$DIR/head.pid"
  cat >"$DIR/cluster.env" <<EOF
RAY="$RAY"
GCS_ADDRESS="$GCS_ADDRESS"
DASHBOARD_URL="$DASHBOARD_URL"
EOF
  if ! wait_until_ready 1; then
    tail -n 20 "$DIR/logs/head.log" >&2
    down >&2
    die "the head did not start"
  fi
  local i
  for ((i = 1; i <= WORKERS; i++)); do
    # A temp dir (session, logs, runtime environments) of its own: nodes sharing one would unpack a job's working
    # directory into the same folder, each replacing it under the other's processes.
    setsid "$PYTHON" "$HERE/loopback_node.py" start "${common[@]}" --temp-dir "$DIR/ray-w$i" --address "$GCS_ADDRESS" \
      --num-cpus "$WORKER_CPUS" \
      </dev/null >"$DIR/logs/worker-$i.log" 2>&1 &
    echo $! >"$DIR/worker-$i.pid"
  done
  if ! wait_until_ready $((WORKERS + 1)); then
    tail -n 20 "$DIR"/logs/worker-*.log >&2 || true
    down >&2
    die "the worker nodes did not join"
  fi
  local auth="$RAY_AUTH_MODE"
  if [[ "$RAY_AUTH_MODE" == token ]]; then
    auth="token in ${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
    [[ -n "${RAY_AUTH_TOKEN:-}" ]] && auth="token in \$RAY_AUTH_TOKEN"
  fi
  cat <<EOF
Ray cluster up on loopback: a head ($HEAD_CPUS CPUs) and $WORKERS worker node(s) ($WORKER_CPUS CPUs each); auth: $auth
  submit a job:     metadist submit JOB.yaml --address $DASHBOARD_URL
  plain Ray:        ray job submit --address $DASHBOARD_URL --working-dir . -- metadist train JOB.yaml --no-progress
  train from here:  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 metadist train JOB.yaml --workers $WORKERS --address $GCS_ADDRESS
  dashboard:        $DASHBOARD_URL
  status, stop:     $0 status|down --dir $DIR
EOF
}

case "$command_name" in
  up) up ;;
  down) down ;;
  status) RAY="${RAY:-$(command -v ray || echo ray)}"; status ;;
  *) usage ;;
esac

#!/usr/bin/env bash
# Start the InternVL chat stack: controller, workers and web UI (or any one of them), or run the tests.
# ./launch.sh --help for the flags. Everything binds to 127.0.0.1 unless --host says otherwise.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

usage() {
  cat <<'EOF'
Usage:
  ./launch.sh [FLAGS]                      controller + workers + web UI on this machine (Ctrl-C stops all)
  ./launch.sh controller [FLAGS]           only the controller (the OpenAI-compatible API)
  ./launch.sh worker --controller-url URL [--worker-url URL] [FLAGS]
                                           only workers, registering with a (remote) controller
  ./launch.sh ui --controller-url URL [FLAGS]
                                           only the web UI, talking to a (remote) controller
  ./launch.sh test [PYTEST ARGS]           install requirements + test requirements, run pytest
  ./launch.sh --help

Model and GPUs:
  --model PATH_OR_HUB_ID   checkpoint folder or Hugging Face hub id (downloaded when the hub is reachable).
                           Default: OpenGVLab/InternVL3-1B-hf when cached or downloadable, else the demo
                           checkpoint (RANDOM WEIGHTS: it runs, but its answers are noise)
  --tp N|auto              GPUs per worker (auto: from the model's size and the GPUs' memory)
  --workers N|auto         number of workers (auto: as many groups of --tp GPUs as there are)
  --gpus 0,1,...           GPUs to use (default: all visible)
  --cpu                    ignore GPUs (transformers engine on CPU)
  --engine auto|turbomind|transformers

Network and security:
  --host ADDR              bind address of the UI and the controller (default 127.0.0.1: this machine only;
                           0.0.0.0 exposes them). Workers started here always bind 127.0.0.1.
  --port N                 web UI port (7860)
  --controller-port N      controller port (21001)
  --worker-port N          first worker port (21002; the next workers take the next ports)
  --api-key KEY            require 'Authorization: Bearer KEY' on the API (env INTERNVL_API_KEY)
  --registration-secret S  shared secret workers must present to register (env INTERNVL_REGISTRATION_SECRET;
                           generated at random when everything runs here)
  --controller-url URL     (worker, ui) the controller to use
  --worker-url URL         (worker) address the controller reaches this worker at, e.g. http://10.0.0.5:21002

Other:
  --log-dir DIR            where logs go (logs/)
  -- ARGS                  passed on unchanged to every worker (e.g. -- --max-concurrency 4)

Environment:
  INTERNVL_VENV=PATH       use this existing virtualenv as it is (no install); default: .venv, created if missing
EOF
}

say() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

MODE=all
case "${1:-}" in
  controller | worker | ui | test) MODE=$1; shift ;;
  workers) MODE=worker; shift ;;
esac

MODEL="" TP=auto WORKERS=auto GPUS="" CPU=0 ENGINE=auto HOST=127.0.0.1
UI_PORT=7860 CONTROLLER_PORT=21001 WORKER_PORT=21002
API_KEY="${INTERNVL_API_KEY:-}" REG_SECRET="${INTERNVL_REGISTRATION_SECRET:-}"
CONTROLLER_URL="" WORKER_URL="" LOG_DIR="${INTERNVL_LOG_DIR:-$ROOT/logs}"
PASS=()

if [[ $MODE == test ]]; then
  PASS=("$@")
  set --
fi
while (($#)); do
  flag=$1 value=""
  if [[ $flag == --*=* ]]; then value=${flag#*=} flag=${flag%%=*}; shift; set -- "$flag" "$value" "$@"; fi
  case "$flag" in
    -h | --help) usage; exit 0 ;;
    --cpu) CPU=1; shift; continue ;;
    --) shift; PASS=("$@"); break ;;
    --model | --tp | --workers | --gpus | --engine | --host | --port | --controller-port | --worker-port | \
      --api-key | --registration-secret | --controller-url | --worker-url | --log-dir)
      (($# >= 2)) || die "$flag needs a value (see ./launch.sh --help)"
      value=$2 ;;
    *) die "unknown argument '$flag' (see ./launch.sh --help)" ;;
  esac
  case "$flag" in
    --model) MODEL=$value ;;
    --tp) TP=$value ;;
    --workers) WORKERS=$value ;;
    --gpus) GPUS=$value ;;
    --engine) ENGINE=$value ;;
    --host) HOST=$value ;;
    --port) UI_PORT=$value ;;
    --controller-port) CONTROLLER_PORT=$value ;;
    --worker-port) WORKER_PORT=$value ;;
    --api-key) API_KEY=$value ;;
    --registration-secret) REG_SECRET=$value ;;
    --controller-url) CONTROLLER_URL=${value%/} ;;
    --worker-url) WORKER_URL=${value%/} ;;
    --log-dir) LOG_DIR=$value ;;
  esac
  shift 2
done

for n in "$UI_PORT" "$CONTROLLER_PORT" "$WORKER_PORT"; do
  [[ $n =~ ^[0-9]+$ ]] && ((n < 65536)) || die "'$n' is not a port number"
done
[[ $TP == auto || $TP =~ ^[1-9][0-9]*$ ]] || die "--tp takes a number or 'auto', not '$TP'"
[[ $WORKERS == auto || $WORKERS =~ ^[1-9][0-9]*$ ]] || die "--workers takes a number or 'auto', not '$WORKERS'"
case "$ENGINE" in auto | turbomind | transformers) ;; *) die "--engine takes auto, turbomind or transformers" ;; esac
# Keys and secrets travel in environment variables (not argv, which `ps` shows to every user); keep them simple.
for s in "$API_KEY" "$REG_SECRET"; do
  [[ -z $s || $s =~ ^[A-Za-z0-9._~+/=-]+$ ]] || die "API keys and secrets may use letters, digits and ._~+/=- only"
done

mkdir -p "$LOG_DIR"
LOG_DIR="$(cd "$LOG_DIR" && pwd)"

# ------------------------------------------------------------------------------------------------ virtualenv

VENV="${INTERNVL_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

find_python() {
  local p
  for p in python3.11 python3.12 python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "$p"
      return
    fi
  done
  die "Python 3.11 is needed (e.g. apt-get install python3.11 python3.11-venv)"
}

progress() {  # one updating line on a terminal; the notable lines otherwise (CI logs)
  local n=0 line
  while IFS= read -r line; do
    n=$((n + 1))
    if [[ -t 1 ]]; then
      printf '\r\033[K    [%4d] %.100s' "$n" "$line"
    elif [[ $line == Collecting* || $line == Successfully* || $line == ERROR* ]]; then
      printf '    %s\n' "$line"
    fi
  done
  if [[ -t 1 ]]; then printf '\r\033[K'; fi
}

ensure_venv() {  # $@: requirement files; a stamp named after their hash skips the install next time
  if [[ -n ${INTERNVL_VENV:-} ]]; then
    [[ -x $PY ]] || die "INTERNVL_VENV=$VENV has no bin/python"
    return
  fi
  local stamp req_args=() f
  stamp="$VENV/.installed-$(cat "$@" | sha256sum | cut -c1-16)"
  [[ -f $stamp ]] && return
  if [[ ! -x $PY ]]; then
    say "Creating the virtualenv in $VENV"
    "$(find_python)" -m venv "$VENV"
  fi
  for f in "$@"; do req_args+=(-r "$f"); done
  say "Installing $* into $VENV (first time: ~3 minutes, ~8 GB; full log: $LOG_DIR/install.log)"
  "$PY" -m pip install "${req_args[@]}" 2>&1 | tee "$LOG_DIR/install.log" | progress
  touch "$stamp"
  say "Requirements installed"
}

ensure_chromium() {  # the browser tests drive Debian's Chromium (Playwright's own download is not reachable)
  command -v "${CHROMIUM:-chromium}" >/dev/null 2>&1 && return
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "Installing Chromium for the browser tests (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
  else
    say "Chromium is missing, so the browser tests will be skipped: sudo apt-get install -y chromium"
  fi
}

if [[ $MODE == test ]]; then
  ensure_venv requirements.txt requirements-test.txt
  ensure_chromium
  say "Running the tests: pytest ${PASS[*]}"
  exec "$PY" -m pytest "${PASS[@]}"
fi
ensure_venv requirements.txt

# Processes: each in its own session and process group, watched, and all stopped on exit (scripts/processes.sh).
# shellcheck source=scripts/processes.sh
source "$ROOT/scripts/processes.sh"

shown_host() {  # what to print in URLs
  case "$HOST" in 0.0.0.0 | "::") hostname -I 2>/dev/null | awk '{print $1}' || echo "$HOST" ;; *) echo "$HOST" ;; esac
}

local_host() {  # how this machine reaches what binds $HOST
  case "$HOST" in 0.0.0.0 | "::") echo 127.0.0.1 ;; *) echo "$HOST" ;; esac
}

random_banner() {
  local why="No --model was given and no real checkpoint could be loaded (no hub access, nothing cached)."
  [[ -n $MODEL ]] && why="The checkpoint given with --model says its weights are random (random_weights)."
  printf '\n  %s\n' "#################################################################################################"
  printf '  #  %-92s #\n' "RANDOM WEIGHTS: serving the demo checkpoint. Its answers are noise." "$why" \
    "For real answers: ./launch.sh --model /path/to/InternVL-checkpoint  (or a hub id)"
  printf '  %s\n\n' "#################################################################################################"
}

# ------------------------------------------------------------------------------------------ model and GPUs

MODEL_PATH="" RANDOM_WEIGHTS=0 TP_N=1 WORKER_GROUPS=()

resolve_and_plan() {
  local line
  run_helper "$PY" -m scripts.resolve_model "$MODEL" --demo-dir "$ROOT/checkpoints/demo" >"$OUT_FILE" || exit 2
  MODEL_PATH=$(sed -n 1p "$OUT_FILE")
  if [[ $(sed -n 2p "$OUT_FILE") == random ]]; then RANDOM_WEIGHTS=1; fi
  say "Model: $MODEL_PATH"
  if ((RANDOM_WEIGHTS)); then random_banner; fi
  local plan_args=(--model-path "$MODEL_PATH" --tp "$TP" --workers "$WORKERS")
  [[ -n $GPUS ]] && plan_args+=(--gpus "$GPUS")
  ((CPU)) && plan_args+=(--cpu)
  run_helper "$PY" -m scripts.plan_gpus "${plan_args[@]}" >"$OUT_FILE" || exit 2
  while IFS= read -r line; do
    case "$line" in
      "tp "*) TP_N=${line#tp } ;;
      "worker "*) WORKER_GROUPS+=("${line#worker }") ;;
    esac
  done <"$OUT_FILE"
  if [[ ${WORKER_GROUPS[0]} == cpu && $ENGINE == turbomind ]]; then
    die "--engine turbomind needs a GPU and none is visible; use --engine transformers (CPU)"
  fi
}

start_workers() {  # CONTROLLER_URL ADVERTISED_BASE (scheme://host, the port is added per worker)
  local controller=$1 base=$2 i port devices secret_env=()
  [[ -n $REG_SECRET ]] && secret_env=("INTERNVL_WORKER_REGISTRATION_SECRET=$REG_SECRET")
  for i in "${!WORKER_GROUPS[@]}"; do
    port=$((WORKER_PORT + i))
    port_free "$port" --worker-port
    devices=${WORKER_GROUPS[i]}
    [[ $devices == cpu ]] && devices=""
    start "worker-$i" "CUDA_VISIBLE_DEVICES=$devices" "${secret_env[@]}" -- \
      "$PY" -m workers --model-path "$MODEL_PATH" --engine "$ENGINE" --tp "$TP_N" --host "$WORKER_HOST" \
      --port "$port" --controller-url "$controller" --worker-url "$base:$port" \
      --worker-id "$(hostname -s 2>/dev/null || echo host)-$port" "${PASS[@]}"
    say "worker-$i: GPUs ${WORKER_GROUPS[i]}, port $port (log: ${LOGS[-1]})"
  done
}

worker_health_args() {
  local i
  local host=127.0.0.1
  [[ $WORKER_HOST == 127.0.0.1 ]] || host=$(local_host)
  for i in "${!WORKER_GROUPS[@]}"; do printf '%s\n%s\n' "worker-$i" "http://$host:$((WORKER_PORT + i))/health"; done
}

start_controller() {
  local envs=()
  [[ -n $REG_SECRET ]] && envs+=("INTERNVL_CONTROLLER_REGISTRATION_SECRET=$REG_SECRET")
  [[ -n $API_KEY ]] && envs+=("INTERNVL_CONTROLLER_API_KEYS=[\"$API_KEY\"]")
  port_free "$CONTROLLER_PORT" --controller-port
  start controller "${envs[@]}" -- "$PY" -m controller --host "$HOST" --port "$CONTROLLER_PORT"
}

start_ui() {  # CONTROLLER_URL
  local envs=()
  [[ -n $API_KEY ]] && envs+=("INTERNVL_UI_API_KEY=$API_KEY")
  port_free "$UI_PORT" --port
  start ui "${envs[@]}" -- "$PY" -m app --controller-url "$1" --host "$HOST" --port "$UI_PORT"
}

ready() {
  say "Ready."
  printf '    %-9s %s\n' "$@"
  printf '    %-9s %s\n' "Logs:" "$LOG_DIR" "Stop:" "Ctrl-C (stops everything this script started)"
  if ((RANDOM_WEIGHTS)); then printf '    (demo checkpoint: RANDOM WEIGHTS, answers are noise)\n'; fi
}

# ---------------------------------------------------------------------------------------------------- modes

if [[ $HOST != 127.0.0.1 && $HOST != localhost && $MODE != worker && -z $API_KEY ]]; then
  warn "--host $HOST exposes the API to the network without an API key; consider --api-key"
fi

case "$MODE" in
  all)
    resolve_and_plan
    # Everything is on this machine: a random registration secret keeps anyone else from registering workers.
    [[ -n $REG_SECRET ]] || REG_SECRET=$(head -c 18 /dev/urandom | base64 | tr '+/' '._')
    WORKER_HOST=127.0.0.1
    controller="http://$(local_host):$CONTROLLER_PORT"
    start_controller
    wait_healthy controller "$controller/health"
    start_workers "$controller" "http://127.0.0.1"
    start_ui "$controller"
    mapfile -t health < <(worker_health_args)
    wait_healthy "${health[@]}" ui "http://$(local_host):$UI_PORT/"
    ready "Web UI:" "http://$(shown_host):$UI_PORT" \
      "API:" "http://$(shown_host):$CONTROLLER_PORT/v1  (OpenAI-compatible)" \
      "Metrics:" "http://$(shown_host):$CONTROLLER_PORT/metrics"
    ;;
  controller)
    if [[ -z $REG_SECRET && $HOST != 127.0.0.1 && $HOST != localhost ]]; then
      warn "without --registration-secret only workers on this machine can register; set one for other hosts"
    fi
    start_controller
    wait_healthy controller "http://$(local_host):$CONTROLLER_PORT/health"
    ready "API:" "http://$(shown_host):$CONTROLLER_PORT/v1  (OpenAI-compatible)" \
      "Metrics:" "http://$(shown_host):$CONTROLLER_PORT/metrics"
    ;;
  worker)
    [[ -n $CONTROLLER_URL ]] || die "worker mode needs --controller-url URL (the controller to register with)"
    WORKER_HOST=$HOST
    if [[ -z $WORKER_URL ]]; then
      case "$HOST" in
        127.0.0.1 | localhost) WORKER_URL="http://127.0.0.1" ;;
        *) die "--host $HOST: also pass --worker-url http://ADDRESS:$WORKER_PORT (an address the controller reaches)" ;;
      esac
    elif [[ $WORKER_URL =~ ^(https?://[^/]+):([0-9]+)$ ]]; then
      WORKER_URL=${BASH_REMATCH[1]} WORKER_PORT=${BASH_REMATCH[2]}
    elif [[ ! $WORKER_URL =~ ^https?://[^/:]+$ ]]; then
      die "--worker-url must look like http://HOST:PORT, not '$WORKER_URL'"
    fi
    if [[ $HOST == 127.0.0.1 && ! $WORKER_URL =~ ://(127\.|localhost) ]]; then
      warn "this worker binds 127.0.0.1 but advertises $WORKER_URL; a controller on another machine cannot" \
        "reach it: add --host 0.0.0.0 (or that interface's address)"
    fi
    if [[ -z $REG_SECRET && ! $CONTROLLER_URL =~ ://(127\.|localhost) ]]; then
      warn "a controller on another host accepts this worker only with --registration-secret (the same on both)"
    fi
    resolve_and_plan
    start_workers "$CONTROLLER_URL" "$WORKER_URL"
    mapfile -t health < <(worker_health_args)
    wait_healthy "${health[@]}"
    ready "Workers:" "${#WORKER_GROUPS[@]} registered with $CONTROLLER_URL as $WORKER_URL:$WORKER_PORT..."
    ;;
  ui)
    CONTROLLER_URL=${CONTROLLER_URL:-http://127.0.0.1:21001}
    start_ui "$CONTROLLER_URL"
    wait_healthy ui "http://$(local_host):$UI_PORT/"
    ready "Web UI:" "http://$(shown_host):$UI_PORT" "API:" "$CONTROLLER_URL"
    ;;
esac

watch

# Sourced by launch.sh: start services in their own process groups, wait for their health, watch them, and stop
# everything that was started on exit (trap), so that no process outlives launch.sh. Needs PY, LOG_DIR, die, say
# and local_host from launch.sh.

PIDS=() NAMES=() LOGS=() HELPER=""
STOPPING=0
OUT_FILE=$(mktemp)

cleanup() {
  local rc=$? i alive
  ((STOPPING)) && return
  STOPPING=1
  trap '' INT TERM
  if [[ -n $HELPER ]]; then kill "$HELPER" 2>/dev/null || true; fi
  rm -f "$OUT_FILE"
  if ((${#PIDS[@]})); then
    say "Stopping ${NAMES[*]}"
    for i in "${!PIDS[@]}"; do kill -TERM -- "-${PIDS[i]}" 2>/dev/null || true; done
    for _ in $(seq 1 60); do  # up to 15 s for graceful shutdown (workers unregister, engines free the GPUs)
      alive=0
      for i in "${!PIDS[@]}"; do if kill -0 -- "-${PIDS[i]}" 2>/dev/null; then alive=1; fi; done
      ((alive)) || break
      sleep 0.25
    done
    for i in "${!PIDS[@]}"; do kill -KILL -- "-${PIDS[i]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() {  # NAME ENV_ASSIGNMENTS... -- COMMAND...: its own session and process group, output to logs/NAME.log
  local name=$1 log="$LOG_DIR/$1.log" envs=()
  shift
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  if [[ -f $log ]]; then mv -f "$log" "$log.1"; fi
  setsid env PYTHONUNBUFFERED=1 "${envs[@]}" "$@" >"$log" 2>&1 </dev/null &
  PIDS+=($!) NAMES+=("$name") LOGS+=("$log")
}

run_helper() {  # a foreground helper that a signal can still interrupt (bash defers traps while a child runs)
  "$@" &
  HELPER=$!
  local rc=0
  wait "$HELPER" || rc=$?
  HELPER=""
  return "$rc"
}

wait_healthy() {  # NAME URL [NAME URL ...] for services started with `start`
  local args=() i
  while (($#)); do
    for i in "${!NAMES[@]}"; do
      if [[ ${NAMES[i]} == "$1" ]]; then args+=(--service "$1" "$2" "${PIDS[i]}" "${LOGS[i]}"); fi
    done
    shift 2
  done
  run_helper "$PY" -m scripts.wait_healthy "${args[@]}" --timeout "${INTERNVL_START_TIMEOUT:-900}" || exit 1
}

watch() {  # until a signal, or until one of the services dies (then stop the rest and fail)
  local i
  while true; do
    wait -n "${PIDS[@]}" || true
    for i in "${!PIDS[@]}"; do
      if ! kill -0 "${PIDS[i]}" 2>/dev/null; then
        printf 'error: %s stopped unexpectedly; last lines of %s:\n' "${NAMES[i]}" "${LOGS[i]}" >&2
        tail -n 20 "${LOGS[i]}" >&2 || true
        exit 1
      fi
    done
  done
}

port_free() {
  if (: <>"/dev/tcp/$(local_host)/$1") 2>/dev/null; then
    die "port $1 is already in use (another launch.sh running?); choose another with $2"
  fi
}

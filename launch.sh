#!/usr/bin/env bash
# Start the InternVL chat stack (./launch.sh --help), or run the tests (./launch.sh test [PYTEST ARGS]).
# This script only finds Python 3.10+, makes or reuses the virtualenv (for `test`, also Chromium), then hands over
# to `python -m launcher`, which composes, starts, supervises and stops everything.
#
# The virtualenv (.venv, or INTERNVL_VENV_DIR) remembers each installed requirement set with its own marker,
# .installed-<file>-<hash>, so `./launch.sh test` (base + test extras) never makes a later `./launch.sh` reinstall,
# and a changed pin reinstalls only its set. INTERNVL_VENV=PATH uses an existing virtualenv as it is.
# `./launch.sh test` also installs Chromium for the browser tests (CHROMIUM, default `chromium`) when it is missing and
# this runs as root with apt-get; otherwise it says that the browser tests will be skipped.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${INTERNVL_VENV:-${INTERNVL_VENV_DIR:-$ROOT/.venv}}"
PY="$VENV/bin/python"
INSTALL_LOG="${INTERNVL_LOG_DIR:-$ROOT/logs}/install.log"

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

find_python() {
  local p
  for p in python3.12 python3.11 python3.10 python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  die "Python 3.10 or newer is needed (e.g. apt-get install python3.11 python3.11-venv)"
}

marker() {  # FILE -> the marker path for FILE's current content
  echo "$VENV/.installed-$(basename "$1")-$(sha256sum "$1" | cut -c1-16)"
}

install_sets() {  # FILE...: make sure each requirement set is installed; install the missing ones in one pip call
  local missing=() f args=() first_time=0
  for f in "$@"; do [[ -f $(marker "$ROOT/$f") ]] || missing+=("$f"); done
  ((${#missing[@]})) || return 0
  if [[ ! -x $PY ]]; then
    say "Creating the virtualenv in $VENV"
    "$(find_python)" -m venv "$VENV"
    first_time=1
  fi
  for f in "${missing[@]}"; do
    if [[ $f == requirements.txt ]]; then
      if ((first_time)); then
        say "Installing requirements.txt into $VENV (first time: ~3 minutes, ~8 GB)"
      elif compgen -G "$VENV/.installed-requirements.txt-*" >/dev/null; then
        say "requirements.txt changed since the last install: updating $VENV"
      else
        say "Installing requirements.txt into $VENV"
      fi
    else
      say "Installing $f into $VENV (the base set is already there)"
    fi
    args+=(-r "$ROOT/$f")
  done
  # Sets already installed constrain the new ones, so the test extras never move a base pin.
  for f in "$@"; do [[ " ${missing[*]} " == *" $f "* ]] || args+=(-c "$ROOT/$f"); done
  mkdir -p "$(dirname "$INSTALL_LOG")"
  "$PY" -m pip install --log "$INSTALL_LOG" "${args[@]}"  # pip's own progress; the full log in $INSTALL_LOG
  for f in "${missing[@]}"; do
    rm -f "$VENV/.installed-$f-"*
    touch "$(marker "$ROOT/$f")"
  done
  say "Installed ${missing[*]} (log: $INSTALL_LOG)"
}

ensure_chromium() {  # the browser tests' Chromium: apt-get installs it as root; otherwise they are skipped
  local chromium="${CHROMIUM:-chromium}"
  command -v "$chromium" >/dev/null && return 0
  if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    say "Chromium ($chromium) is missing, so the browser tests will be skipped: sudo apt-get install -y chromium"
    return 0
  fi
  say "Installing Chromium for the browser tests (apt-get; log: $INSTALL_LOG)"
  mkdir -p "$(dirname "$INSTALL_LOG")"
  {  # a failed update may still leave an index that has chromium: install anyway
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core || true
  } >>"$INSTALL_LOG" 2>&1
  command -v "$chromium" >/dev/null ||
    say "Chromium ($chromium) could not be installed (see $INSTALL_LOG), so the browser tests will be skipped"
}

if [[ -n ${INTERNVL_VENV:-} ]]; then
  [[ -x $PY ]] || die "INTERNVL_VENV=$VENV has no bin/python"
elif [[ ${1:-} == test ]]; then
  install_sets requirements.txt requirements-test.txt
else
  case " $* " in
    *" -h "* | *" --help "*)
      [[ -x $PY ]] || say "--help needs the virtualenv (the flags live in the launcher): setting it up first" ;;
  esac
  install_sets requirements.txt
fi

if [[ ${1:-} == test ]]; then
  ensure_chromium
fi

if [[ -n ${INTERNVL_LAUNCH_DRY_RUN:-} ]]; then  # for tests of this script: stop before the launcher
  say "would run: $PY -m launcher $*"
  exit 0
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m launcher "$@"

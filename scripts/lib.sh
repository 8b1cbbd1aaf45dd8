# Shell helpers the service scripts share (sourced, not run): messages under the caller's tag,
# and finding and stopping the processes a script started, by their pid files, never by name.
# The caller sets LOG_TAG (its name in messages) and, for stop_one, STOP_WAIT_SECS.
# shellcheck shell=bash

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() {
  printf '[%s] ERROR: %s\n' "$LOG_TAG" "$*" >&2
  exit 1
}

# Print the last lines of each existing log file given.
show_logs() {
  local f
  for f in "$@"; do
    [[ -s "$f" ]] || continue
    printf '[%s] ---- last lines of %s ----\n' "$LOG_TAG" "$f" >&2
    tail -n 30 "$f" >&2
  done
}

# True when the pid runs (not a zombie) and its command line mentions $2.
is_ours() {
  local pid=$1 name=$2 state
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  state=$(sed -n 's/^.*) \(.\).*$/\1/p' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != "Z" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$name"
}

# Print the pid from a pid file when that process is alive and is $2.
live_pid() {
  local pidfile=$1 name=$2 pid
  [[ -f "$pidfile" ]] || return 1
  pid=$(tr -dc '0-9' <"$pidfile")
  is_ours "$pid" "$name" || return 1
  printf '%s\n' "$pid"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# stop_one NAME PIDFILE: SIGTERM, bounded wait, then SIGKILL. Quiet if not running.
stop_one() {
  local name=$1 pidfile=$2 pid i
  if ! pid=$(live_pid "$pidfile" "$name"); then
    rm -f "$pidfile"
    return 0
  fi
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_WAIT_SECS * 10; i++)); do
    is_ours "$pid" "$name" || break
    sleep 0.1
  done
  if is_ours "$pid" "$name"; then
    log "$name (pid $pid) still running after ${STOP_WAIT_SECS}s: sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      is_ours "$pid" "$name" || break
      sleep 0.1
    done
    if is_ours "$pid" "$name"; then
      die "$name (pid $pid) survived SIGKILL"
    fi
  fi
  rm -f "$pidfile"
}

# Shared helpers for the service scripts in this folder. Sourced, never run.
# shellcheck shell=bash

# Service state (pid files, data dirs, logs) lives under the cache, outside the repository.
CP_SERVICES="${CP_SERVICES:-$CP_CACHE/services}"

# Waits until 127.0.0.1:$2 accepts connections while pid $1 lives; $3 names the log to show.
wait_for_port() {
  local pid=$1 port=$2 logfile=$3 _
  for _ in $(seq 1 150); do
    port_in_use "$port" && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$logfile" >&2 || true
      die "the process exited before listening on 127.0.0.1:$port (log: $logfile)"
    fi
    sleep 0.2
  done
  tail -n 20 "$logfile" >&2 || true
  die "nothing listens on 127.0.0.1:$port after 30 s (log: $logfile)"
}

# Stops the process recorded in pid file $1 (TERM, then KILL after 10 s); $2 names it.
stop_recorded() {
  local pidfile=$1 name=$2 pid _
  if pid=$(live_pid "$pidfile"); then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped $name (pid $pid)"
  else
    log "$name was not running"
  fi
  rm -f "$pidfile"
}

# Refuses to start when another process already holds the port.
require_free_port() {
  local port=$1 variable=$2
  if port_in_use "$port"; then
    die "port 127.0.0.1:$port is in use by another process; stop it or set $variable"
  fi
}

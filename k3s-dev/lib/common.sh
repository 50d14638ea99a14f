# Shared settings for the k3s-dev scripts. Sourced, never run.
# shellcheck shell=bash

KUBE_VERSION="${CP_KUBE_VERSION:-v1.37.2}"
ETCD_VERSION="${CP_ETCD_VERSION:-v3.6.17}"

CP_CACHE="${CP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cloudpillar}"
CP_BIN="$CP_CACHE/bin"
CP_STATE="${CP_STATE:-$CP_CACHE/dev-cluster}"

CP_APISERVER_PORT="${CP_APISERVER_PORT:-6443}"
CP_ETCD_PORT="${CP_ETCD_PORT:-2379}"
CP_ETCD_PEER_PORT="${CP_ETCD_PEER_PORT:-2380}"

KUBE_APISERVER_BIN="$CP_BIN/kube-apiserver-$KUBE_VERSION"
KUBE_CONTROLLER_MANAGER_BIN="$CP_BIN/kube-controller-manager-$KUBE_VERSION"
ETCD_BIN="$CP_BIN/etcd-$ETCD_VERSION"

log() { printf '[k3s-dev] %s\n' "$*" >&2; }
die() { printf '[k3s-dev] error: %s\n' "$*" >&2; exit 1; }

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is required but not installed ($2)"
}

# True when something already listens on 127.0.0.1:$1.
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Prints the pid recorded in $1 when that process is still alive.
live_pid() {
  local file=$1 pid
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

#!/usr/bin/env bash
# Stops the processes that test/kube/start.sh DIR started, and only those: the
# PIDs come from DIR/env, and a PID is signalled only while its command line
# still names DIR (so a PID reused by another program is left alone). Should
# DIR/env be gone, it stops the servers whose flags name files in DIR instead.
# Waits for each process to exit: SIGTERM first, SIGKILL after 10 seconds. DIR
# stays, with the logs; removing it is up to the caller.
#
#   test/kube/stop.sh DIR
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dir="$(realpath -m "$1")"

# env_value KEY prints the value of KEY in DIR/env.
env_value() {
  sed -n "s/^$1=//p" "$dir/env"
}

# args_of PID prints the arguments of process PID, one a line.
args_of() {
  tr '\0' '\n' 2>/dev/null <"/proc/$1/cmdline"
}

# ours PID tells whether PID is still one of this cluster's processes: one that
# names DIR in its arguments. A zombie (exited, not yet reaped by its new parent)
# counts as gone.
ours() {
  local pid="$1" state args
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  state="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)"
  [[ "$state" != Z ]] || return 1
  args="$(args_of "$pid")"$'\n'
  [[ "$args" == *"$dir/"* || "$args" == *"$dir"$'\n'* ]]
}

# stop PID sends SIGTERM, then SIGKILL after 10 seconds, and waits for the exit.
stop() {
  local pid="$1" i
  ours "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    ours "$pid" || return 0
    sleep 0.1
  done
  echo "stop.sh: PID $pid ignored SIGTERM for 10s; sending SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || return 0
  while ours "$pid"; do sleep 0.1; done
}

# servers_by_dir prints the PIDs of the servers that were given files in DIR
# (etcd's --data-dir, kube-apiserver's keys), kube-apiserver first: the way to
# find them when DIR/env is gone, say because DIR was removed while they ran.
servers_by_dir() {
  local cmdline pid args apiservers="" others=""
  for cmdline in /proc/[0-9]*/cmdline; do
    pid="${cmdline#/proc/}"
    pid="${pid%/cmdline}"
    args="$(args_of "$pid")"
    if [[ "$args" == *"=$dir/"* ]]; then
      if [[ "${args%%$'\n'*}" == *kube-apiserver ]]; then
        apiservers+="$pid "
      else
        others+="$pid "
      fi
    fi
  done
  echo "${apiservers}${others% }"
}

if [[ ! -f "$dir/env" ]]; then
  pids="$(servers_by_dir)"
  if [[ -z "$pids" ]]; then
    echo "stop.sh: no $dir/env and no server using $dir: nothing to stop" >&2
    exit 0
  fi
  echo "stop.sh: no $dir/env; stopping the servers that use $dir:" "$pids" >&2
  for pid in $pids; do
    stop "$pid"
  done
  exit 0
fi

watchdog_pid="$(env_value WATCHDOG_PID)"
# The watchdog runs this script when its owner is gone; it must not stop itself.
if [[ -n "$watchdog_pid" && "$watchdog_pid" != "$$" ]]; then
  stop "$watchdog_pid"
fi
# The apiserver first: it writes to etcd until it exits.
stop "$(env_value APISERVER_PID)"
stop "$(env_value ETCD_PID)"

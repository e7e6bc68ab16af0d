#!/usr/bin/env bash
# Stop the one-node SLURM cluster that tests/slurm/start_cluster.sh started, by the PIDs in the daemons'
# PID files only (never by process name): cancel jobs, then slurmd, slurmctld, slurmdbd, mariadbd, munged.
# A PID is signalled only if that process is alive and has the expected command name.
# Idempotent: stopping a stopped cluster is a no-op.
#
#   --wipe   also delete slurmctld/slurmd state (job ids restart at 1); the accounting database is kept.
set -uo pipefail

T0=$(date +%s%N)
log() {
  local ms=$((($(date +%s%N) - T0) / 1000000))
  printf '[stop_cluster %3d.%01ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"
}

# Alive and not a zombie (PID 1 in a container may reap late).
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

stop_pidfile() { # pidfile, expected command name prefix
  local f=$1 name=$2 p
  p=$(cat "$f" 2>/dev/null) || { log "$name: not running (no pid file)"; return 0; }
  if [ -z "$p" ] || [[ "$(cat "/proc/$p/comm" 2>/dev/null)" != "$name"* ]]; then
    log "$name: not running (stale pid file)"
    rm -f "$f"
    return 0
  fi
  log "stopping $name (pid $p)"
  kill -TERM "$p"
  for _ in $(seq 150); do
    alive "$p" || { rm -f "$f"; return 0; }
    sleep 0.1
  done
  log "$name (pid $p) still alive after 15 s: SIGKILL"
  kill -KILL "$p" 2>/dev/null
  rm -f "$f"
}

if command -v scontrol >/dev/null && scontrol ping >/dev/null 2>&1; then
  jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs
    for _ in $(seq 50); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi
stop_pidfile /run/slurm/slurmd.pid slurmd
stop_pidfile /run/slurm/slurmctld.pid slurmctld
stop_pidfile /run/slurm/slurmdbd.pid slurmdbd
stop_pidfile /run/mysqld/mysqld.pid mariadbd
stop_pidfile /run/munge/munged.pid munged

if [ "${1:-}" = "--wipe" ]; then
  log "wiping slurmctld and slurmd state"
  rm -rf /var/lib/slurm/slurmctld/* /var/lib/slurm/slurmd/*
fi
log "stopped"

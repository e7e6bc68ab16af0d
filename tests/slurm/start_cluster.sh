#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine for Zhufu's `slurm` tests:
# munged + mariadbd + slurmdbd + slurmctld + slurmd, from Debian 12's packages, as root, without systemd.
#
# Idempotent and quick when rerun: installs packages only if a binary is missing, rewrites a config only if
# its content changed (and then restarts only the daemons that read it), starts only daemons that are not
# running, and returns as soon as the node is idle. Safe to call concurrently (flock).
# Every daemon writes a PID file under /run (and does not inherit the lock); tests/slurm/stop_cluster.sh
# stops them by those PIDs.
#
# Environment:
#   ZHUFU_SLURM_ACCOUNT   account created for the calling user (default: zhufu)
#   ZHUFU_SLURM_GPUS      fake GPUs the node advertises as GRES gpu (default: 2; 0 = none). Each is a copy of
#                         /dev/null, so `--gpus=N` jobs schedule on a machine without a GPU, and SLURM sets
#                         CUDA_VISIBLE_DEVICES in the job although there is no CUDA (as on a broken GPU node).
#   ZHUFU_SLURM_WAIT      seconds to wait for each daemon and for the node (default: 90)
set -euo pipefail

ACCOUNT="${ZHUFU_SLURM_ACCOUNT:-zhufu}"
GPUS="${ZHUFU_SLURM_GPUS:-2}"
WAIT="${ZHUFU_SLURM_WAIT:-90}"
CLUSTER=zhufu
NODE=localhost
DB_PASS=zhufu-slurmdbd
RUN=/run/zhufu-slurm
T0=$(date +%s%N)

log() {
  local ms=$((($(date +%s%N) - T0) / 1000000))
  printf '[start_cluster %3d.%01ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"
}
die() {
  echo "start_cluster: $*" >&2
  for f in /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log /var/log/slurm/slurmdbd.log; do
    [ -f "$f" ] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }
  done
  exit 1
}
[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts system daemons)"

install -d -m 0755 "$RUN"
exec 9>"$RUN/start.lock"
flock -w 600 9 || die "another start_cluster.sh holds $RUN/start.lock"

# ----------------------------------------------------------------------------------------------- packages
PKGS=(munge mariadb-server slurmdbd slurmctld slurmd slurm-client)
missing=0
for b in munged mariadbd slurmdbd slurmctld slurmd sbatch sacct sacctmgr; do
  command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing=1
done
if [ "$missing" = 1 ]; then
  log "installing ${PKGS[*]}"
  # Keep the packages' maintainer scripts from starting daemons with their own configs.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
  [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  log "installed $(dpkg-query -W -f='${Package}=${Version} ' slurmctld munge mariadb-server)"
fi

# ----------------------------------------------------------------------------------------------- helpers
# The PID in pidfile $1, if that process is alive and its command name starts with $2.
running_pid() {
  local p
  p=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$p" ] && alive "$p" && [[ "$(cat "/proc/$p/comm" 2>/dev/null)" == "$2"* ]] || return 1
  echo "$p"
}
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
stop_pid() { # pidfile, name
  local p
  p=$(running_pid "$1" "$2") || return 0
  log "config changed: stopping $2 (pid $p)"
  kill -TERM "$p"
  for _ in $(seq 150); do alive "$p" || return 0; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
}
wait_until() { # description, command...
  local what=$1 deadline=$(($(date +%s) + WAIT))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "timed out after ${WAIT}s waiting for $what"
    sleep 0.2
  done
}
# Write file $1 from stdin only if the content differs; returns 0 when it changed.
write_if_changed() {
  local new
  new=$(cat)
  [ -f "$1" ] && [ "$(cat "$1")" = "$new" ] && return 1
  printf '%s\n' "$new" >"$1"
}

# ----------------------------------------------------------------------------------------------- munge
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge /etc/munge
[ -s /etc/munge/munge.key ] || { log "creating munge key"; mungekey --create --force; }
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
if ! running_pid /run/munge/munged.pid munged >/dev/null; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid 9>&-
fi
wait_until munged bash -c 'munge -n | unmunge'

# ----------------------------------------------------------------------------------------------- configs
install -d -o slurm -g slurm /run/slurm /var/lib/slurm/slurmctld /var/log/slurm
install -d /var/lib/slurm/slurmd /etc/slurm
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
REAL_MEM=$((MEM_MB * 9 / 10)) # slurmd drains a node that reports less memory than RealMemory
if [ "$GPUS" -gt 0 ]; then
  # slurmd wants a character device per GPU and numbers CUDA_VISIBLE_DEVICES by the name's digits:
  # copies of /dev/null (major 1, minor 3). Without mknod, fall back to /dev/null itself, one GPU.
  gres_files=()
  for i in $(seq 0 $((GPUS - 1))); do
    [ -c "$RUN/fake-gpu$i" ] || mknod -m 0666 "$RUN/fake-gpu$i" c 1 3 2>/dev/null || break
    gres_files+=("NodeName=$NODE Name=gpu File=$RUN/fake-gpu$i")
  done
  if [ "${#gres_files[@]}" -lt "$GPUS" ]; then
    log "mknod not permitted: advertising one fake GPU backed by /dev/null"
    GPUS=1 gres_files=("NodeName=$NODE Name=gpu File=/dev/null")
  fi
  GRES_TYPES="GresTypes=gpu"
  NODE_GRES=" Gres=gpu:$GPUS"
  ACCT_TRES="AccountingStorageTRES=gres/gpu"
else
  gres_files=()
  GRES_TYPES="" NODE_GRES="" ACCT_TRES=""
fi

slurm_conf_changed=0
write_if_changed /etc/slurm/slurm.conf <<EOF && slurm_conf_changed=1
# Written by Zhufu's tests/slurm/start_cluster.sh: a one-node cluster for tests.
ClusterName=$CLUSTER
SlurmctldHost=$NODE
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No cgroups in a container: plain process tracking, no binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$NODE
AccountingStorageEnforce=associations
# sacct shows each job's --comment, where Snakemake names the rule and wildcards.
AccountingStoreFlags=job_comment
$ACCT_TRES
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
ReturnToService=2
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MessageTimeout=20
MpiDefault=none
MailProg=/bin/true
$GRES_TYPES
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MEM$NODE_GRES State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
EOF
if [ "${#gres_files[@]}" -gt 0 ]; then
  printf '%s\n' "${gres_files[@]}" | write_if_changed /etc/slurm/gres.conf && slurm_conf_changed=1
elif [ -e /etc/slurm/gres.conf ]; then
  rm -f /etc/slurm/gres.conf && slurm_conf_changed=1
fi

dbd_conf_changed=0
write_if_changed /etc/slurm/slurmdbd.conf <<EOF && dbd_conf_changed=1
AuthType=auth/munge
DbdHost=$NODE
SlurmUser=slurm
PidFile=/run/slurm/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASS
EOF
chown slurm:slurm /etc/slurm/slurmdbd.conf && chmod 0600 /etc/slurm/slurmdbd.conf

# ----------------------------------------------------------------------------------------------- accounting
install -d -o mysql -g mysql /run/mysqld
if [ ! -d /var/lib/mysql/mysql ]; then
  log "initialising the mariadb data directory"
  mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >/dev/null
fi
if ! running_pid /run/mysqld/mysqld.pid mariadbd >/dev/null; then
  log "starting mariadbd"
  nohup /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
    --pid-file=/run/mysqld/mysqld.pid --bind-address=127.0.0.1 --innodb-lock-wait-timeout=900 \
    --innodb-buffer-pool-size=64M >>/var/log/mariadbd.log 2>&1 </dev/null 9>&- &
fi
wait_until mariadbd mariadb-admin --socket=/run/mysqld/mysqld.sock ping
mariadb --socket=/run/mysqld/mysqld.sock -u root <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF

[ "$dbd_conf_changed" = 1 ] && stop_pid /run/slurm/slurmdbd.pid slurmdbd
if ! running_pid /run/slurm/slurmdbd.pid slurmdbd >/dev/null; then
  log "starting slurmdbd"
  /usr/sbin/slurmdbd 9>&-
fi
wait_until slurmdbd sacctmgr -n list cluster
sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT" ||
  sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=zhufu-tests Organization=zhufu >/dev/null
USER_NAME=$(id -un)
sacctmgr -n -P list assoc cluster="$CLUSTER" account="$ACCOUNT" user="$USER_NAME" format=user | grep -qx "$USER_NAME" ||
  sacctmgr -i add user "$USER_NAME" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" Cluster="$CLUSTER" >/dev/null

# ----------------------------------------------------------------------------------------------- slurm daemons
if [ "$slurm_conf_changed" = 1 ]; then
  stop_pid /run/slurm/slurmd.pid slurmd
  stop_pid /run/slurm/slurmctld.pid slurmctld
fi
if ! running_pid /run/slurm/slurmctld.pid slurmctld >/dev/null; then
  log "starting slurmctld"
  /usr/sbin/slurmctld 9>&-
fi
wait_until slurmctld scontrol ping
if ! running_pid /run/slurm/slurmd.pid slurmd >/dev/null; then
  log "starting slurmd"
  /usr/sbin/slurmd -N "$NODE" 9>&-
fi

deadline=$(($(date +%s) + WAIT))
while :; do
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n 1 || true)
  case "$state" in
    idle | mixed | allocated | completing) break ;;
    down* | drain* | fail*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  [ "$(date +%s)" -lt "$deadline" ] || die "node $NODE is '$state' after ${WAIT}s"
  sleep 0.2
done
log "cluster '$CLUSTER' ready: node $NODE $state, $CPUS CPUs, ${REAL_MEM} MB, gpu:$GPUS, account $ACCOUNT"
sinfo -o '%P %a %D %T %c %m %G'

#!/usr/bin/env bash
# A real single-node SLURM cluster on 127.0.0.1 (slurmctld + slurmd + slurmdbd/MariaDB for sacct + munge),
# for the tests and for trying the launchers without a cluster. Everything lives under one state dir; the
# daemons it starts are recorded in <state>/pids and `stop` ends only those PIDs.
#
#   bash slurm/install.sh                  # once: the Debian packages (as root)
#   bash slurm/local_cluster.sh start      # ~3 s (first start ~10 s: creates the accounting database)
#   eval "$(bash slurm/local_cluster.sh env)"   # export SLURM_CONF for sbatch/srun/squeue/sacct/submitit
#   bash slurm/local_cluster.sh status     # daemons + sinfo
#   bash slurm/local_cluster.sh stop
#
# Settings (environment): DCLS_SLURM_DIR state dir (/tmp/dcls-slurm), DCLS_SLURM_CPUS CPUs the node declares
# (max(nproc, 8): oversubscribing a small machine lets tests run side by side), DCLS_SLURM_PORT_BASE first of the
# four TCP ports on 127.0.0.1 (16817: slurmctld, +1 slurmd, +2 slurmdbd, +3 MariaDB).
# Partition `debug` (default, no time limit). Job ids restart at 1 when the state dir is wiped.
set -euo pipefail

STATE=${DCLS_SLURM_DIR:-/tmp/dcls-slurm}
PORT=${DCLS_SLURM_PORT_BASE:-16817}
CONF=$STATE/etc/slurm.conf
PIDS=$STATE/pids
NODE=$(hostname -s)

die() { echo "local_cluster.sh: $*" >&2; exit 1; }

alive() {  # alive PID NAME: PID runs the daemon NAME (a zombie, or a reused PID, counts as gone)
  local st comm
  st=$(ps -o stat= -p "$1" 2>/dev/null || true)
  comm=$(ps -o comm= -p "$1" 2>/dev/null || true)
  [ -n "$st" ] && [ "${st:0:1}" != Z ] && [ "$comm" = "$2" ]
}

our_pids() { [ -f "$PIDS" ] && cat "$PIDS" || true; }

running() {  # every recorded daemon is alive
  local n=0 name pid
  while read -r name pid; do
    [ -n "$pid" ] || continue
    alive "$pid" "$name" || return 1
    n=$((n + 1))
  done < <(our_pids)
  [ "$n" -gt 0 ]
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || die "$what did not come up within ${secs}s; see logs in $STATE/log"
    sleep 0.2
  done
}

write_configs() {
  local cpus=${DCLS_SLURM_CPUS:-$(( $(nproc) > 8 ? $(nproc) : 8 ))}
  local mem_mb=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 9 / 10 ))
  mkdir -p "$STATE"/{etc,log,ctld,spool,run}
  cat > "$CONF" <<CONF
# Written by slurm/local_cluster.sh: a single-node cluster on 127.0.0.1 under $STATE.
ClusterName=dcls
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# short credential lifetime: a requeued job starts again after ~10 s instead of ~150 s
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in a container: track processes by /proc, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a default memory per CPU a job takes the whole node and jobs run one at a time
DefMemPerCPU=1024
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=5
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=30
MailProg=/bin/true
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((PORT + 2))
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  # slurmdbd reads slurmdbd.conf from SLURM_CONF's directory; it must be 0600 and owned by SlurmUser
  cat > "$STATE/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((PORT + 2))
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 3))
StorageUser=root
StorageLoc=slurm_acct_db
CONF
  chmod 600 "$STATE/etc/slurmdbd.conf"
}

record() { echo "$1 $2" >> "$PIDS"; }

start() {
  if running; then
    echo "local SLURM cluster already running (state $STATE)"
    return 0
  fi
  for cmd in slurmctld slurmd slurmdbd munged mariadbd mariadb-install-db sbatch; do
    command -v "$cmd" >/dev/null || die "'$cmd' not found; install the packages first: bash slurm/install.sh"
  done
  getent hosts "$NODE" >/dev/null || die "host name '$NODE' does not resolve; add '127.0.0.1 $NODE' to /etc/hosts"
  [ "$(id -u)" -eq 0 ] || die "must run as root (the daemons run as root; munged as user munge)"
  stop_daemons quiet  # leftovers of a half-started cluster from this state dir
  rm -f "$PIDS"
  write_configs
  export SLURM_CONF=$CONF

  # munge on its default socket (slurmctld's link to slurmdbd ignores AuthInfo=socket); a munged already
  # serving that socket is used as it is
  local key=/etc/munge/munge.key
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [ ! -s "$key" ]; then
      install -d -m 0700 -o munge -g munge /etc/munge
      dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
      chown munge:munge "$key"; chmod 0600 "$key"
    fi
    install -d -m 0755 -o munge -g munge /run/munge "$STATE/munge"
    setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F \
      --key-file="$key" --pid-file="$STATE/munge/munged.pid" --seed-file="$STATE/munge/munged.seed" \
      --log-file="$STATE/munge/munged.log" > "$STATE/log/munged.out" 2>&1 &
    record munged $!
    wait_for 10 munged bash -c "munge -n | unmunge"
  fi

  # MariaDB for slurmdbd (accounting: sacct, which submitit polls for job states)
  local db=$STATE/mysql
  if [ ! -d "$db/mysql" ]; then
    mariadb-install-db --no-defaults --user=root --datadir="$db" --auth-root-authentication-method=normal \
      --skip-test-db > "$STATE/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; see $STATE/log"
  fi
  mariadbd --no-defaults --user=root --datadir="$db" --socket="$STATE/run/mysqld.sock" --port=$((PORT + 3)) \
    --bind-address=127.0.0.1 --skip-grant-tables --pid-file="$STATE/run/mariadbd.pid" \
    --log-error="$STATE/log/mariadbd.log" --innodb-buffer-pool-size=32M > /dev/null 2>&1 &
  record mariadbd $!
  wait_for 30 mariadbd mariadb --no-defaults --protocol=tcp -h 127.0.0.1 -P $((PORT + 3)) -u root -e 'select 1'

  slurmdbd -D > "$STATE/log/slurmdbd.out" 2>&1 &
  record slurmdbd $!
  wait_for 30 slurmdbd bash -c "exec 3<>/dev/tcp/127.0.0.1/$((PORT + 2))"

  slurmctld -D -i > "$STATE/log/slurmctld.out" 2>&1 &
  record slurmctld $!
  wait_for 30 slurmctld scontrol ping
  slurmd -D -N "$NODE" > "$STATE/log/slurmd.out" 2>&1 &
  record slurmd $!
  wait_for 30 "the node" bash -c "sinfo -h -N -o %t | grep -Eq '^(idle|mix|alloc)'"
  # the cluster registers itself in the accounting database; wait until sacct answers
  wait_for 30 sacct sacct -n -X -S now
  echo "local SLURM cluster up: partition debug on $NODE (state $STATE)"
  echo "use it with: export SLURM_CONF=$CONF"
}

stop_daemons() {  # TERM the recorded PIDs (reverse start order), KILL what is left after 15 s
  local quiet=${1:-}
  [ -f "$PIDS" ] || { [ -n "$quiet" ] || echo "local SLURM cluster not running (no $PIDS)"; return 0; }
  local pids=() names=() name pid i
  while read -r name pid; do
    [ -n "$pid" ] && alive "$pid" "$name" && pids=("$pid" "${pids[@]}") && names=("$name" "${names[@]}")
  done < <(our_pids)
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  local end=$((SECONDS + 15)) left
  while :; do
    left=()
    for i in "${!pids[@]}"; do alive "${pids[$i]}" "${names[$i]}" && left+=("${pids[$i]}"); done
    ((${#left[@]})) || break
    if [ "$SECONDS" -ge "$end" ]; then
      for pid in "${left[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
      break
    fi
    sleep 0.2
  done
  rm -f "$PIDS"
  [ -n "$quiet" ] || echo "local SLURM cluster stopped (${#pids[@]} daemons)"
}

status() {
  local name pid up=0
  while read -r name pid; do
    [ -n "$pid" ] || continue
    if alive "$pid" "$name"; then echo "$name $pid running"; up=$((up + 1)); else echo "$name $pid gone"; fi
  done < <(our_pids)
  if running; then
    SLURM_CONF=$CONF sinfo
    return 0
  fi
  echo "local SLURM cluster not running (state $STATE)"
  return 3
}

case "${1:-}" in
  start) start ;;
  stop) stop_daemons ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: local_cluster.sh start|stop|status|env (got '${1:-}')" >&2; exit 2 ;;
esac

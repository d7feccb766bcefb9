#!/usr/bin/env bash
# A real SLURM cluster on this machine (slurmctld + slurmd + slurmdbd/MariaDB for sacct + munge), for the tests
# and for trying the launchers without a cluster. One node: everything on 127.0.0.1. Several nodes (--nodes N):
# one network namespace per node (hostname nodeI in its own UTS namespace, address SUBNET.(10+I) on a veth pair
# into a bridge that has SUBNET.1 and exists only for this cluster), one slurmd per namespace, slurmctld in the
# root namespace on the bridge address; DDP between nodes then really crosses network stacks. Everything lives
# under one state dir; the daemons it starts are recorded in <state>/pids, the namespaces, links and bridge in
# <state>/net, and `stop` ends/removes exactly those (idempotent).
#
#   bash slurm/install.sh                  # once: the Debian packages (as root)
#   bash slurm/local_cluster.sh start      # ~3 s (first start ~10 s: creates the accounting database)
#   bash slurm/local_cluster.sh start --nodes 2   # nodes node1, node2 in namespaces <tag>-node1/2 (needs root)
#   eval "$(bash slurm/local_cluster.sh env)"   # export SLURM_CONF for sbatch/srun/squeue/sacct/submitit
#   bash slurm/local_cluster.sh status     # daemons + sinfo
#   bash slurm/local_cluster.sh stop
#
# Settings (environment): DCLS_SLURM_DIR state dir (/tmp/dcls-slurm), DCLS_SLURM_CPUS CPUs each node declares
# (max(nproc, 8): oversubscribing a small machine lets tests run side by side), DCLS_SLURM_PORT_BASE first of the
# four TCP ports (16817: slurmctld, +1 slurmd, +2 slurmdbd, +3 MariaDB), DCLS_SLURM_SUBNET the /24 of the
# multi-node bridge (first three octets, default 10.77.0; start refuses one the host already uses).
# Partition `debug` (default, no time limit, all nodes). Job ids restart at 1 when the state dir is wiped.
set -euo pipefail

STATE=${DCLS_SLURM_DIR:-/tmp/dcls-slurm}
PORT=${DCLS_SLURM_PORT_BASE:-16817}
SUBNET=${DCLS_SLURM_SUBNET:-10.77.0}
CONF=$STATE/etc/slurm.conf
PIDS=$STATE/pids
NET=$STATE/net
NODE=$(hostname -s)
TAG=dcls$PORT  # prefix of the namespaces, links and bridge of a multi-node cluster (interface names <= 15 chars)

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

node_names() {  # the compute nodes of an N-node cluster: this host for one node, node1..nodeN otherwise
  local n=$1 i
  if [ "$n" -eq 1 ]; then echo "$NODE"; return; fi
  for ((i = 1; i <= n; i++)); do echo "node$i"; done
}

write_configs() {  # write_configs NODES CTL_ADDR
  local nodes=$1 ctl=$2 i
  local cpus=${DCLS_SLURM_CPUS:-$(( $(nproc) > 8 ? $(nproc) : 8 ))}
  local mem_mb=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 9 / 10 ))
  mkdir -p "$STATE"/{etc,log,ctld,spool,run}
  cat > "$CONF" <<CONF
# Written by slurm/local_cluster.sh: a $nodes-node cluster (slurmctld on $ctl) under $STATE.
ClusterName=dcls
SlurmctldHost=$NODE($ctl)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# short credential lifetime: a requeued job starts again after ~10 s instead of ~150 s
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
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
AccountingStorageHost=$ctl
AccountingStoragePort=$((PORT + 2))
CONF
  if [ "$nodes" -eq 1 ]; then
    echo "NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN" >> "$CONF"
  else
    for ((i = 1; i <= nodes; i++)); do
      echo "NodeName=node$i NodeHostname=node$i NodeAddr=$SUBNET.$((10 + i)) CPUs=$cpus RealMemory=$mem_mb" \
           "State=UNKNOWN" >> "$CONF"
    done
  fi
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >> "$CONF"
  # slurmdbd reads slurmdbd.conf from SLURM_CONF's directory; it must be 0600 and owned by SlurmUser
  cat > "$STATE/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=$ctl
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
record_net() { echo "$1 $2" >> "$NET"; }

net_start() {  # net_start NODES: bridge SUBNET.1, one namespace per node with eth0 = SUBNET.(10+i), lo up
  local nodes=$1 i ns br=${TAG}br
  if ip -4 -o addr show | grep -q " inet $SUBNET\."; then
    die "subnet $SUBNET.0/24 is already in use on this host (ip addr); set DCLS_SLURM_SUBNET to a free one"
  fi
  ip link add "$br" type bridge || die "cannot create a bridge (ip link add type bridge): no network namespaces here"
  record_net link "$br"
  ip addr add "$SUBNET.1/24" dev "$br"
  ip link set "$br" up
  # the namespaces resolve the node names; the file is bind-mounted over /etc/hosts inside them only
  { cat /etc/hosts; echo "$SUBNET.1 $NODE-ctl"
    for ((i = 1; i <= nodes; i++)); do echo "$SUBNET.$((10 + i)) node$i"; done; } > "$STATE/etc/hosts"
  for ((i = 1; i <= nodes; i++)); do
    ns=$TAG-node$i
    ip netns add "$ns" || die "cannot create network namespace $ns (ip netns add): not allowed here?"
    record_net netns "$ns"
    ip link add "${TAG}v$i" type veth peer name "${TAG}p$i"
    record_net link "${TAG}v$i"
    ip link set "${TAG}p$i" netns "$ns"
    ip -n "$ns" link set "${TAG}p$i" name eth0
    ip -n "$ns" addr add "$SUBNET.$((10 + i))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    ip link set "${TAG}v$i" master "$br"
    ip link set "${TAG}v$i" up
  done
}

net_stop() {  # end what still runs in our namespaces (job steps), then remove the links, bridge and namespaces
  [ -f "$NET" ] || return 0
  local kind name pids=() pid end
  while read -r kind name; do
    [ "$kind" = netns ] || continue
    for pid in $(ip netns pids "$name" 2>/dev/null); do pids+=("$pid"); done
  done < "$NET"
  if ((${#pids[@]})); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    end=$((SECONDS + 10))
    while [ "$SECONDS" -lt "$end" ]; do
      local left=()
      for pid in "${pids[@]}"; do
        st=$(ps -o stat= -p "$pid" 2>/dev/null || true)
        [ -n "$st" ] && [ "${st:0:1}" != Z ] && left+=("$pid")
      done
      ((${#left[@]})) || break
      sleep 0.2
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  tac "$NET" | while read -r kind name; do
    case "$kind" in
      link) ip link del "$name" 2>/dev/null || true ;;
      netns) ip netns del "$name" 2>/dev/null || true ;;
    esac
  done
  rm -f "$NET"
}

start_slurmd() {  # start_slurmd NODES: one slurmd per node (in its namespace, with its own hostname)
  local nodes=$1 i
  if [ "$nodes" -eq 1 ]; then
    slurmd -D -N "$NODE" > "$STATE/log/slurmd.out" 2>&1 &
    record slurmd $!
    return
  fi
  for ((i = 1; i <= nodes; i++)); do
    mkdir -p "$STATE/spool/node$i"
    # nsenter --net (not `ip netns exec`, which remounts /sys without the cgroup tree slurmd needs);
    # unshare --uts --mount: the node's own hostname and a private /etc/hosts that resolves the node names
    nsenter --net="/run/netns/$TAG-node$i" unshare --uts --mount --propagation slave -- sh -c \
      'hostname "$1" && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"' sh "node$i" "$STATE/etc/hosts" \
      slurmd -D -N "node$i" > "$STATE/log/slurmd-node$i.out" 2>&1 &
    record slurmd $!
  done
}

nodes_up() {  # all NODES nodes idle/mix/alloc
  [ "$(sinfo -h -N -o %t | grep -Ec '^(idle|mix|alloc)')" -ge "$1" ]
}

start() {
  local nodes=1
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) nodes=${2:-}; shift 2 || true ;;
      --nodes=*) nodes=${1#--nodes=}; shift ;;
      *) echo "local_cluster.sh: unknown start option '$1'; allowed: --nodes N" >&2; exit 2 ;;
    esac
  done
  [[ "$nodes" =~ ^[1-9]$ ]] || { echo "local_cluster.sh: --nodes '$nodes' is not allowed; allowed: 1 to 9" >&2; exit 2; }
  if running; then
    echo "local SLURM cluster already running with $(cat "$STATE/nodes" 2>/dev/null || echo 1) node(s) (state $STATE)"
    return 0
  fi
  for cmd in slurmctld slurmd slurmdbd munged mariadbd mariadb-install-db sbatch; do
    command -v "$cmd" >/dev/null || die "'$cmd' not found; install the packages first: bash slurm/install.sh"
  done
  getent hosts "$NODE" >/dev/null || die "host name '$NODE' does not resolve; add '127.0.0.1 $NODE' to /etc/hosts"
  [ "$(id -u)" -eq 0 ] || die "must run as root (the daemons run as root; munged as user munge)"
  stop_daemons quiet  # leftovers of a half-started cluster from this state dir
  net_stop
  rm -f "$PIDS"
  trap 'rc=$?; [ "$rc" -eq 0 ] || { stop_daemons quiet; net_stop; }' EXIT  # a failed start leaves nothing behind
  local ctl=127.0.0.1
  if [ "$nodes" -gt 1 ]; then
    mkdir -p "$STATE/etc"
    net_start "$nodes"
    ctl=$SUBNET.1
  fi
  write_configs "$nodes" "$ctl"
  echo "$nodes" > "$STATE/nodes"
  export SLURM_CONF=$CONF
  start_munge
  start_accounting "$ctl"
  slurmctld -D -i > "$STATE/log/slurmctld.out" 2>&1 &
  record slurmctld $!
  wait_for 30 slurmctld scontrol ping
  start_slurmd "$nodes"
  wait_for 30 "the node(s)" nodes_up "$nodes"
  # the cluster registers itself in the accounting database; wait until sacct answers
  wait_for 30 sacct sacct -n -X -S now
  echo "local SLURM cluster up: partition debug on $(node_names "$nodes" | paste -sd, -) (state $STATE)"
  echo "use it with: export SLURM_CONF=$CONF"
}

start_munge() {
  # munge on its default socket (slurmctld's link to slurmdbd ignores AuthInfo=socket); a munged already
  # serving that socket is used as it is. A unix socket: the node namespaces reach it through the file system.
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
}

start_accounting() {  # start_accounting CTL_ADDR: MariaDB + slurmdbd (sacct, which submitit polls for job states)
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
  wait_for 30 slurmdbd bash -c "exec 3<>/dev/tcp/$1/$((PORT + 2))"
}

stop_daemons() {  # TERM the recorded PIDs (reverse start order), KILL what is left after 15 s
  local quiet=${1:-}
  [ -f "$PIDS" ] || { [ -n "$quiet" ] || [ -f "$NET" ] || echo "local SLURM cluster not running (no $PIDS)"; return 0; }
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

stop() {  # daemons first (they hold the namespaces' sockets), then what runs in the namespaces, then the network
  stop_daemons "$@"
  net_stop
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: local_cluster.sh start [--nodes N]|stop|status|env (got '${1:-}')" >&2; exit 2 ;;
esac

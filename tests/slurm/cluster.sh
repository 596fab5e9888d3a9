#!/usr/bin/env bash
# A single-node Slurm cluster for the Slurm executor's tests (docs/scaling.md), in a
# private directory, without systemd: munged -F, slurmctld -D and slurmd -D in the
# background. Needs root and Debian's slurm-wlm and munge packages.
#
#   tests/slurm/cluster.sh start   # prints `export VAR=...` lines: eval "$(... start)"
#   tests/slurm/cluster.sh stop
#   tests/slurm/cluster.sh restart-ctld   # restarts slurmctld alone (tests use it)
#
# The directory is $ORCH_SLURM_DIR (default /var/tmp/orch-slurm). Slurm's ports are
# $ORCH_SLURM_PORT and the next one (default 6817, 6818). The tests find the cluster by
# SLURM_CONF (every Slurm command reads it) and ORCH_SLURM_DIR.
set -euo pipefail

DIR=${ORCH_SLURM_DIR:-/var/tmp/orch-slurm}
PORT=${ORCH_SLURM_PORT:-6817}
CONF=$DIR/slurm.conf
START_TIMEOUT=${ORCH_SLURM_START_TIMEOUT:-60}

say() { echo "cluster.sh: $*" >&2; }

stop_pid() { # name: stops the daemon whose pid file is $DIR/NAME.pid, waits for it
    local f=$DIR/$1.pid pid
    [ -s "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

start_ctld() {
    slurmctld -D -i -f "$CONF" >>"$DIR/log/slurmctld.out" 2>&1 &
    echo $! >"$DIR/slurmctld.pid"
}

wait_idle() {
    local deadline=$((SECONDS + START_TIMEOUT)) state=""
    while [ $SECONDS -lt $deadline ]; do
        state=$(SLURM_CONF=$CONF sinfo -h -o %T 2>/dev/null | head -n1 || true)
        case "$state" in idle | mixed | allocated) return 0 ;; esac
        sleep 0.2
    done
    say "the node is not up after ${START_TIMEOUT}s (state: '${state:-none}'); logs in $DIR/log"
    tail -n 20 "$DIR"/log/*.log >&2 || true
    return 1
}

start() {
    for tool in munged slurmctld slurmd sinfo sbatch; do
        command -v "$tool" >/dev/null || { say "$tool is missing: apt-get install slurm-wlm munge"; exit 1; }
    done
    stop_all
    local t0=$SECONDS host cpus mem
    rm -rf "$DIR"
    mkdir -p "$DIR"/{log,state,spool,munge,shared}
    # Every user submits through munged's socket; only root reads the key (0400).
    chmod 0755 "$DIR" "$DIR/munge"
    chmod 1777 "$DIR/shared"
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
    # munged checks that nobody else can write where its key and socket are.
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$DIR/munge/munge.key"
    cat >"$CONF" <<CONF
ClusterName=orchtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.daemon.pid
SlurmdPidFile=$DIR/slurmd.daemon.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1
MinJobAge=300
KillWait=5
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    munged -F --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/munge/munged.daemon.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed" >>"$DIR/log/munged.out" 2>&1 &
    echo $! >"$DIR/munged.pid"
    for _ in $(seq 100); do [ -S "$DIR/munge/munge.socket" ] && break; sleep 0.05; done
    [ -S "$DIR/munge/munge.socket" ] || { say "munged did not start"; cat "$DIR"/log/munged* >&2; exit 1; }
    start_ctld
    slurmd -D -f "$CONF" >>"$DIR/log/slurmd.out" 2>&1 &
    echo $! >"$DIR/slurmd.pid"
    wait_idle
    say "single-node cluster up in $((SECONDS - t0))s ($DIR)"
    {
        echo "export SLURM_CONF=$CONF"
        echo "export ORCH_SLURM_DIR=$DIR"
    } | tee "$DIR/env"
}

stop_all() {
    [ -d "$DIR" ] || return 0
    if [ -f "$CONF" ] && [ -s "$DIR/slurmctld.pid" ]; then
        SLURM_CONF=$CONF scancel --quiet --full --user=root 2>/dev/null || true
    fi
    stop_pid slurmd
    stop_pid slurmctld
    stop_pid munged
}

case "${1:-}" in
    start) start ;;
    stop) stop_all; say "stopped" ;;
    restart-ctld)
        stop_pid slurmctld
        start_ctld
        wait_idle
        ;;
    *) echo "usage: $0 start|stop|restart-ctld" >&2; exit 2 ;;
esac

#!/bin/bash
# In-guest part of the VM test (see tests/vm/run-vm-tests.sh).
#
# Runs as root inside a throw-away Debian VM with systemd as PID 1, journald
# and cgroup v2 (cpu memory pids io). /opt/test/cmd holds this script, the
# release `orchd`/`orchctl` and the project's `orchd.service`. Installs them
# as the system service, then checks the cgroup-v2 limits backend through
# `orchctl` only. Every check prints one `PASS name` / `FAIL name: why` line;
# the exit code is the number of failed checks (0 = all passed, capped at 100).
# Details of failures, the checks' transcripts and `journalctl -u orchd` go
# to $VM_TEST_OUT.
#
# Runs under TCG emulation: every wait has a short, bounded deadline.
set -uo pipefail

CMD_DIR=$(cd "$(dirname "$0")" && pwd)
OUT=${VM_TEST_OUT:-/tmp/vm-test-out}
mkdir -p "$OUT/checks"
SVC_CG=/sys/fs/cgroup/system.slice/orchd.service
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LANG=C.UTF-8
unset ORCH_SOCKET   # root: orchctl's default is the system socket /run/orch/orchd.sock

T0=$(date +%s.%N)
ts() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%6.1fs", b-a}'; }
say() { echo "[guest $(ts)] $*"; }

PASSED=() FAILED=()
CUR=""          # current check name
CUR_LOG=""      # its transcript file
CUR_FAIL=""     # first failure reason of the current check

begin() {
    CUR=$1 CUR_FAIL=""
    CUR_LOG="$OUT/checks/$(printf '%02d' $(( ${#PASSED[@]} + ${#FAILED[@]} + 1 )))-$1.txt"
    : > "$CUR_LOG"
    say "--- $1: $2"
    echo "# $1: $2" >> "$CUR_LOG"
}
note() { echo "$*" >> "$CUR_LOG"; }
# fail REASON: record the first failure of the current check (later ones go to the transcript)
fail() {
    note "FAILURE: $*"
    say "  failed: $*"
    [ -n "$CUR_FAIL" ] || CUR_FAIL=$*
}
end() {
    if [ -z "$CUR_FAIL" ]; then
        PASSED+=("$CUR"); echo "PASS $CUR"
    else
        FAILED+=("$CUR"); echo "FAIL $CUR: $CUR_FAIL"
        echo "FAIL $CUR: $CUR_FAIL" >> "$OUT/failures.txt"
        echo "    details: out/${CUR_LOG#"$OUT"/}" >> "$OUT/failures.txt"
    fi
}

# [T=SECS] run CMD...: run with a time cap (default 30 s), transcript to the
# check's file; sets RC, STDOUT and STDERR
run() {
    local errf; errf=$(mktemp)
    STDOUT=$(timeout -k 5 "${T:-30}" "$@" 2>"$errf"); RC=$?
    { echo "\$ $*"; echo "rc=$RC"; [ -n "$STDOUT" ] && echo "$STDOUT"; [ -s "$errf" ] && sed 's/^/stderr: /' "$errf"; } >> "$CUR_LOG"
    STDERR=$(cat "$errf"); rm -f "$errf"
    return 0
}

# status_json ID -> prints `orchctl status ID -o json` (empty on error)
status_json() { timeout -k 5 20 orchctl status "$1" -o json 2>/dev/null; }
# jqs ID FILTER -> one value from the objective's status JSON
jqs() { status_json "$1" | jq -r "$2" 2>/dev/null; }
last_attempt='(.steps[0].attempts // []) | last'

# wait_running ID DEADLINE_S -> sets APID to the running attempt's pid
wait_running() {
    local id=$1 deadline=$(( $(date +%s) + $2 )) j
    APID=""
    while [ "$(date +%s)" -lt "$deadline" ]; do
        j=$(status_json "$id")
        APID=$(jq -r "($last_attempt) | select(.ended_at == null) | .pid // empty" <<<"$j" 2>/dev/null)
        if [ -n "$APID" ] && [ "$APID" != 0 ] && [ -d "/proc/$APID" ]; then return 0; fi
        APID=""
        sleep 0.3
    done
    note "last status: $j"
    return 1
}

# wait_state ID STATE[|STATE...] DEADLINE_S
wait_state() {
    local id=$1 want=$2 deadline=$(( $(date +%s) + $3 )) s=""
    while [ "$(date +%s)" -lt "$deadline" ]; do
        s=$(jqs "$id" .state)
        [[ "$s" =~ ^($want)$ ]] && return 0
        sleep 0.3
    done
    note "state is '$s', wanted '$want'"
    return 1
}

# cgroup_of PID -> absolute cgroup directory of a process
cgroup_of() { local p; p=$(sed -n 's/^0:://p' "/proc/$1/cgroup" 2>/dev/null) && [ -n "$p" ] && echo "/sys/fs/cgroup$p"; }

# attempt_cgroup PID: sets CG to the attempt's leaf, a child of orchd.service
# named att-*; fails the check and sets CG="" when the attempt is elsewhere
# (the cgroup-specific parts of the check are then skipped).
attempt_cgroup() {
    CG=$(cgroup_of "$1")
    note "attempt pid $1 cgroup: $CG"
    case "$CG" in
        "$SVC_CG"/att-*) ;;
        *) fail "attempt runs in ${CG:-?}, not in a $SVC_CG/att-* leaf"; CG="";;
    esac
}

# cgroup_gone DIR DEADLINE_S: directory removed, or `populated 0`
cgroup_gone() {
    local cg=$1 deadline=$(( $(date +%s) + $2 ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        [ -d "$cg" ] || return 0
        grep -qx 'populated 0' "$cg/cgroup.events" 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}

# no_procs PATTERN DEADLINE_S: no process whose full command line is PATTERN
no_procs() {
    local deadline=$(( $(date +%s) + $2 ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        pgrep -fx "$1" >/dev/null || return 0
        sleep 0.2
    done
    note "still running: $(pgrep -afx "$1" | tr '\n' ';')"
    return 1
}

log_lines() { timeout -k 5 20 orchctl logs "$1" 2>/dev/null | grep -c tick; }

dump_cgroups() {
    {
        echo "## cgroup tree under $SVC_CG"
        find "$SVC_CG" -maxdepth 2 -name cgroup.procs 2>/dev/null | while read -r f; do
            d=${f%/cgroup.procs}
            echo "$d: procs=[$(tr '\n' ' ' < "$f")] $(tr '\n' ' ' < "$d/cgroup.events" 2>/dev/null)"
            for k in memory.max memory.oom.group memory.swap.max pids.max pids.current cpu.max cgroup.freeze cgroup.subtree_control; do
                [ -r "$d/$k" ] && echo "    $k=$(tr '\n' ' ' < "$d/$k")"
            done
        done
    } >> "$CUR_LOG" 2>&1
}

mkdir -p /root/vmtest && cd /root/vmtest || exit 100

say "kernel $(uname -r), pid1=$(cat /proc/1/comm), cgroup controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
HAVE_PY=0; command -v python3 >/dev/null && HAVE_PY=1
command -v jq >/dev/null || { echo "FAIL setup: jq missing in the guest image"; exit 100; }

# ------------------------------------------------------------------ install
begin install "install orchd as a system service and start it (Type=notify)"
install -m 0755 "$CMD_DIR/orchd" "$CMD_DIR/orchctl" /usr/bin/ || fail "cannot install binaries"
install -m 0644 "$CMD_DIR/orchd.service" /etc/systemd/system/orchd.service || fail "cannot install the unit"
# orchd.service requires its socket unit (group orch owns the socket).
install -m 0644 "$CMD_DIR/orchd.socket" /etc/systemd/system/orchd.socket || fail "cannot install the socket unit"
getent group orch >/dev/null || groupadd --system orch
run systemctl daemon-reload
T=60 run systemctl start orchd
START_RC=$RC
[ "$START_RC" = 0 ] || fail "systemctl start orchd exited $START_RC"
run systemctl is-active orchd
[ "$STDOUT" = active ] || fail "orchd is '$STDOUT' after start"
run systemctl show orchd -p MainPID -p Type -p Delegate -p ControlGroup -p NRestarts
MAINPID=$(sed -n 's/^MainPID=//p' <<<"$STDOUT")
if [ -n "$CUR_FAIL" ]; then
    run systemctl status orchd --no-pager -l
    journalctl -u orchd --no-pager -o short-monotonic > "$OUT/journal-orchd.txt" 2>&1
fi
end
if [ "$START_RC" != 0 ]; then
    echo "orchd did not start: the other checks cannot run"
    journalctl -u orchd --no-pager -o short-monotonic > "$OUT/journal-orchd.txt" 2>&1
    exit 100
fi

# ------------------------------------------------------------------ 1
begin backend "daemon status reports limits_backend cgroup-v2; orchd sits in supervisor/"
run orchctl daemon status -o json
[ "$RC" = 0 ] || fail "orchctl daemon status exited $RC"
BACKEND=$(jq -r .limits_backend <<<"$STDOUT" 2>/dev/null)
[ "$BACKEND" = cgroup-v2 ] || fail "limits_backend is '$BACKEND', want cgroup-v2"
# the daemon moves itself out of the service cgroup into a supervisor/ leaf
DCG=$(cgroup_of "$MAINPID"); note "orchd (pid $MAINPID) cgroup: $DCG"
[ "$DCG" = "$SVC_CG/supervisor" ] || fail "orchd runs in ${DCG:-?}, not in $SVC_CG/supervisor"
[ -z "$(cat "$SVC_CG/cgroup.procs" 2>/dev/null)" ] || fail "processes left in the inner node $SVC_CG"
end

# ------------------------------------------------------------------ 2
begin memory "a 512 MiB hog under --memory 64M ends as memory_limit"
if [ "$HAVE_PY" = 1 ]; then
    HOG=(python3 -c 'b = bytearray(512 * 1024 * 1024); print("allocated", len(b))')
else
    HOG=(bash -c 'x=$(head -c 536870912 /dev/zero | tr "\0" x); echo allocated ${#x}')
fi
T=55 run orchctl submit --wait --retries 0 --timeout 45s --memory 64M -- "${HOG[@]}"
ID=$(head -n1 <<<"$STDOUT")
[ "$RC" = 1 ] || fail "submit --wait exited $RC, want 1 (objective failed)"
if [ -n "$ID" ]; then
    J=$(status_json "$ID"); note "status: $J"
    OUTCOME=$(jq -r "($last_attempt).outcome" <<<"$J" 2>/dev/null)
    [ "$OUTCOME" = memory_limit ] || fail "last attempt outcome is '$OUTCOME', want memory_limit"
    [ "$(jq -r .state <<<"$J")" = failed ] || fail "objective state is '$(jq -r .state <<<"$J")', want failed"
    NATT=$(jq -r '.steps[0].attempts | length' <<<"$J" 2>/dev/null)
    [ "$NATT" = 1 ] || fail "$NATT attempts with --retries 0"
    run orchctl logs "$ID"
    grep -q allocated <<<"$STDOUT" && fail "the hog allocated 512 MiB: no memory limit applied"
    # systemd saw an OOM kill in the unit; with Delegate=yes its OOMPolicy
    # defaults to continue, so orchd itself must still be the same process.
    run systemctl show orchd -p MainPID -p NRestarts -p ActiveState
    grep -qx "MainPID=$MAINPID" <<<"$STDOUT" && grep -qx 'NRestarts=0' <<<"$STDOUT" \
        || fail "orchd was stopped or restarted after the attempt's OOM kill"
else
    fail "submit printed no id"
fi
[ -n "$CUR_FAIL" ] && dump_cgroups
end

# ------------------------------------------------------------------ 3
# The agent is a python3 fork loop that handles EAGAIN itself: its children
# block on a pipe, so it forks until the kernel refuses (pids.max), tries 10
# more times at the limit, prints `holding tasks=N refused=M` and waits (at
# most 40 s) for SIGUSR1 from this check, which samples the leaf meanwhile;
# then it releases and reaps its children and exits 0. (A bash loop of
# `sleep &` is not deterministic: bash's make_child retries a refused fork
# with sleeps and gives up -- exit 254 = 126|128, "fork: Interrupted system
# call" -- when a child's SIGCHLD cuts such a sleep short by a second or more.)
begin pids "a fork loop under limits.pids = 20 never has more than 20 tasks; refused forks; only the agent in the leaf"
cat > pids.toml <<'EOF'
name = "vm-pids"
[[steps]]
id = "f"
command = ["python3", "-c", '''
import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
r, w = os.pipe()
kids, refused = [], 0
def fork_one():
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    kids.append(pid)
while len(kids) < 200:
    try:
        fork_one()
    except BlockingIOError:
        refused += 1
        break
for _ in range(10):
    try:
        fork_one()
    except BlockingIOError:
        refused += 1
peak = len(kids) + 1
print(f"holding tasks={peak} refused={refused}", flush=True)
got = signal.sigtimedwait({signal.SIGUSR1}, 40)
os.close(w)
for p in kids:
    os.waitpid(p, 0)
print(f"fork-loop-done forked={len(kids)} refused={refused} peak_tasks={peak} released={'yes' if got else 'timeout'}", flush=True)
sys.exit(0 if refused > 0 else 3)
''']
limits = { pids = 20 }
retry = { max_attempts = 1 }
timeout = "60s"
EOF
note "$(cat pids.toml)"
[ "$HAVE_PY" = 1 ] || fail "python3 missing in the guest image (VM_EXTRA_PACKAGES)"
run orchctl submit pids.toml
ID=$(head -n1 <<<"$STDOUT")
[ "$RC" = 0 ] && [ -n "$ID" ] || fail "submit of the plan exited $RC"
MAXSEEN=0 PMAX="" PEVENTS="" CG="" HOLD=""
if [ -n "$ID" ]; then
    if wait_running "$ID" 20; then attempt_cgroup "$APID"
    else fail "the attempt did not start running within 20 s"; fi
fi
if [ -n "$CG" ]; then
    PMAX=$(cat "$CG/pids.max" 2>/dev/null)
    [ "$PMAX" = 20 ] || fail "pids.max of the attempt cgroup is '$PMAX', want 20"
    # the loop holds at the limit until released
    deadline=$(( $(date +%s) + 30 ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        HOLD=$(timeout -k 5 20 orchctl logs "$ID" 2>/dev/null | grep -o 'holding tasks=[0-9]* refused=[0-9]*' | head -n1)
        [ -n "$HOLD" ] && break
        sleep 0.3
    done
    note "agent: ${HOLD:-(no 'holding' line within 30 s)}"
    if [ -n "$HOLD" ]; then
        TASKS=$(sed 's/.*tasks=\([0-9]*\).*/\1/' <<<"$HOLD")
        CUR_PIDS=$(cat "$CG/pids.current" 2>/dev/null); MAXSEEN=${CUR_PIDS:-0}
        PROCS=$(tr '\n' ' ' < "$CG/cgroup.procs" 2>/dev/null)
        COMMS=$(for p in $PROCS; do cat "/proc/$p/comm" 2>/dev/null; done | sort | uniq -c | tr '\n' ';' | tr -s ' ')
        # read now: the leaf is removed soon after the agent ends
        PEVENTS=$(sed -n 's/^max //p' "$CG/pids.events" 2>/dev/null)
        note "at the limit: pids.current=$CUR_PIDS, pids.events max=${PEVENTS:-?} (agent's refused forks: $(sed 's/.*refused=//' <<<"$HOLD")), leaf procs: $PROCS"
        note "their names: $COMMS"
        # Only the agent's tasks count against the leaf: not the shim, not orchd.
        [ "$CUR_PIDS" = "$TASKS" ] || fail "pids.current of the leaf is '$CUR_PIDS' while the agent has $TASKS tasks: something else counts against the leaf's pids.max"
        for p in $PROCS; do
            c=$(cat "/proc/$p/comm" 2>/dev/null)
            case "$c" in python3|"") ;; *) fail "process $p ($c) in the attempt leaf is not the agent's";; esac
        done
        [ "$TASKS" -ge 15 ] || fail "the agent held only $TASKS tasks at the limit (pids.max 20)"
    else
        fail "the fork loop never reported holding at the limit"
    fi
    kill -USR1 "$APID" 2>/dev/null || note "(could not signal $APID)"
    # sample pids.current until the leaf empties (the loop reaps its children and exits)
    deadline=$(( $(date +%s) + 30 ))
    while [ -d "$CG" ] && [ "$(date +%s)" -lt "$deadline" ]; do
        c=$(cat "$CG/pids.current" 2>/dev/null) || break
        [ -n "$c" ] && [ "$c" -gt "$MAXSEEN" ] && MAXSEEN=$c
        e=$(sed -n 's/^max //p' "$CG/pids.events" 2>/dev/null); [ -n "$e" ] && [ "$e" -gt "${PEVENTS:-0}" ] && PEVENTS=$e
        grep -qx 'populated 0' "$CG/cgroup.events" 2>/dev/null && break
        sleep 0.1
    done
    note "highest pids.current seen: $MAXSEEN; pids.events max: ${PEVENTS:-?}"
    [ "$MAXSEEN" -le 20 ] || fail "saw $MAXSEEN tasks in the attempt cgroup (pids.max 20)"
    [ "${PEVENTS:-0}" -gt 0 ] || fail "pids.events max of the leaf is '${PEVENTS:-?}': the kernel refused no fork"
fi
if [ -n "$ID" ]; then
    wait_state "$ID" 'failed|succeeded|cancelled' 30 || fail "the objective did not end"
    J=$(status_json "$ID"); note "status: $J"
    S=$(jq -r .state <<<"$J" 2>/dev/null)
    [ "$S" = succeeded ] || fail "objective state is '$S', want succeeded (last attempt: $(jq -c "($last_attempt) | {outcome, exit_code}" <<<"$J" 2>/dev/null))"
    LOGS=$(timeout -k 5 20 orchctl logs "$ID" 2>&1)
    DONE=$(grep -o 'fork-loop-done .*' <<<"$LOGS" | head -n1)
    note "agent: ${DONE:-(no fork-loop-done line)}"
    if [ -n "$DONE" ]; then
        R=$(sed 's/.*refused=\([0-9]*\).*/\1/' <<<"$DONE"); P=$(sed 's/.*peak_tasks=\([0-9]*\).*/\1/' <<<"$DONE")
        [ "$R" -gt 0 ] || fail "the agent saw no refused fork"
        [ "$P" -le 20 ] || fail "the agent had $P tasks at once (pids.max 20)"
        grep -q 'released=yes' <<<"$DONE" || fail "the agent was not released by the check (SIGUSR1)"
    else
        fail "the agent did not finish its fork loop"
    fi
    # the agent's log in the transcript when anything failed
    [ -n "$CUR_FAIL" ] && { echo "## orchctl logs $ID"; echo "$LOGS"; } >> "$CUR_LOG"
fi
[ -n "$CUR_FAIL" ] && dump_cgroups
[ -n "$ID" ] && timeout 20 orchctl cancel "$ID" >/dev/null 2>&1
end

# ------------------------------------------------------------------ 4
begin cancel "cancel kills a setsid grandchild and empties the attempt cgroup"
run orchctl submit --retries 0 -- bash -c 'setsid sleep 1000 & sleep 1000'
ID=$(head -n1 <<<"$STDOUT")
[ "$RC" = 0 ] && [ -n "$ID" ] || fail "submit exited $RC"
if [ -n "$ID" ] && wait_running "$ID" 20; then
    attempt_cgroup "$APID"
    deadline=$(( $(date +%s) + 10 ))
    while [ "$(pgrep -fx 'sleep 1000' | wc -l)" -lt 2 ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
    SLEEPS=$(pgrep -fx 'sleep 1000' | tr '\n' ' ')
    note "sleep 1000 processes: $SLEEPS"
    GRAND=""
    for p in $SLEEPS; do
        [ "$(ps -o sid= -p "$p" | tr -d ' ')" = "$p" ] && GRAND=$p
    done
    if [ -n "$GRAND" ]; then
        note "setsid grandchild $GRAND (own session) in $(cgroup_of "$GRAND")"
        [ -z "$CG" ] || [ "$(cgroup_of "$GRAND")" = "$CG" ] || fail "the grandchild is not in the attempt cgroup"
    else
        fail "no setsid'd 'sleep 1000' found (processes: $SLEEPS)"
    fi
    run orchctl cancel "$ID"
    [ "$RC" = 0 ] || fail "orchctl cancel exited $RC"
    wait_state "$ID" cancelled 15 || fail "objective state is not cancelled"
    no_procs 'sleep 1000' 10 || fail "a 'sleep 1000' survived the cancel"
    [ -n "$GRAND" ] && [ -d "/proc/$GRAND" ] && fail "grandchild $GRAND is still alive"
    if [ -n "$CG" ]; then
        cgroup_gone "$CG" 10 || fail "attempt cgroup $CG still populated"
        note "after cancel: $( [ -d "$CG" ] && tr '\n' ' ' < "$CG/cgroup.events" || echo removed)"
    fi
    OUTCOME=$(jqs "$ID" "($last_attempt).outcome")
    note "last attempt outcome: $OUTCOME"
else
    [ -n "$ID" ] && fail "the attempt did not start running within 20 s"
fi
[ -n "$CUR_FAIL" ] && dump_cgroups
pkill -x -f 'sleep 1000' 2>/dev/null   # don't let a failure here spoil the later checks
end

# ------------------------------------------------------------------ 5
begin pause "pause freezes the attempt cgroup, resume thaws it"
run orchctl submit --retries 0 -- bash -c 'while :; do echo tick; sleep 0.2; done'
ID=$(head -n1 <<<"$STDOUT")
[ "$RC" = 0 ] && [ -n "$ID" ] || fail "submit exited $RC"
if [ -n "$ID" ] && wait_running "$ID" 20; then
    attempt_cgroup "$APID"
    deadline=$(( $(date +%s) + 15 ))
    while [ "$(log_lines "$ID")" -lt 3 ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.3; done
    [ "$(log_lines "$ID")" -ge 3 ] || fail "'orchctl logs' shows no ticks"
    run orchctl pause "$ID"
    [ "$RC" = 0 ] || fail "orchctl pause exited $RC"
    if [ -n "$CG" ]; then
        deadline=$(( $(date +%s) + 10 ))
        while ! grep -qx 'frozen 1' "$CG/cgroup.events" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
        note "after pause: cgroup.freeze=$(cat "$CG/cgroup.freeze" 2>/dev/null) events: $(tr '\n' ' ' < "$CG/cgroup.events" 2>/dev/null)"
        [ "$(cat "$CG/cgroup.freeze" 2>/dev/null)" = 1 ] || fail "cgroup.freeze is not 1 after pause"
        grep -qx 'frozen 1' "$CG/cgroup.events" 2>/dev/null || fail "cgroup.events does not say frozen 1"
    fi
    S=$(jqs "$ID" .state); note "state after pause: $S"
    [ "$S" = paused ] || fail "objective state is '$S' after pause, want paused"
    sleep 0.5   # a line written just before the freeze may still be on its way to the log
    A=$(log_lines "$ID"); sleep 2; B=$(log_lines "$ID")
    note "log ticks while paused: $A -> $B"
    [ "$A" = "$B" ] || fail "the log grew while paused ($A -> $B ticks)"
    [ -d "/proc/$APID" ] || fail "the attempt process died during pause"
    run orchctl resume "$ID"
    [ "$RC" = 0 ] || fail "orchctl resume exited $RC"
    if [ -n "$CG" ]; then
        deadline=$(( $(date +%s) + 10 ))
        while ! grep -qx 'frozen 0' "$CG/cgroup.events" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
        grep -qx 'frozen 0' "$CG/cgroup.events" 2>/dev/null || fail "cgroup.events does not say frozen 0 after resume"
    fi
    C=$(log_lines "$ID"); deadline=$(( $(date +%s) + 10 ))
    while [ "$(log_lines "$ID")" -le "$C" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.3; done
    D=$(log_lines "$ID"); note "log ticks after resume: $C -> $D"
    [ "$D" -gt "$C" ] || fail "the log did not grow after resume ($C -> $D ticks)"
    S=$(jqs "$ID" .state); [ "$S" = running ] || fail "objective state is '$S' after resume, want running"
    run orchctl cancel "$ID"
    [ "$RC" = 0 ] || fail "orchctl cancel exited $RC"
    wait_state "$ID" cancelled 15 || fail "objective not cancelled after resume + cancel"
    [ -z "$CG" ] || cgroup_gone "$CG" 10 || fail "attempt cgroup $CG still populated after cancel"
else
    [ -n "$ID" ] && fail "the attempt did not start running within 20 s"
fi
[ -n "$CUR_FAIL" ] && dump_cgroups
[ -n "$ID" ] && timeout 20 orchctl cancel "$ID" >/dev/null 2>&1
pkill -f -x 'bash -c while :; do echo tick; sleep 0.2; done' 2>/dev/null
end

# ------------------------------------------------------------------ 6
begin journal "the daemon's log lines reach the journal"
run journalctl -u orchd --no-pager -o cat
grep -q 'orchd ready' <<<"$STDOUT" || fail "no 'orchd ready' line in journalctl -u orchd"
end

# ------------------------------------------------------------------ 7
begin stop "systemctl stop orchd exits 0 and leaves no agent process"
run orchctl submit --retries 0 -- bash -c 'setsid sleep 999 & sleep 999'
STOP_ID=$(head -n1 <<<"$STDOUT")
[ "$RC" = 0 ] && [ -n "$STOP_ID" ] || fail "submit exited $RC"
[ -n "$STOP_ID" ] && { wait_running "$STOP_ID" 20 || fail "the agent did not start within 20 s"; }
note "before stop: $(pgrep -afx 'sleep 999' | tr '\n' ';')"
T=70 run systemctl stop orchd
[ "$RC" = 0 ] || fail "systemctl stop orchd exited $RC"
run systemctl is-active orchd
[ "$STDOUT" = inactive ] || fail "orchd is '$STDOUT' after stop, want inactive"
run systemctl show orchd -p Result -p ExecMainStatus
grep -qx 'ExecMainStatus=0' <<<"$STDOUT" || fail "orchd did not exit 0 ($(tr '\n' ' ' <<<"$STDOUT"))"
no_procs 'sleep 999' 5 || fail "an agent process outlived the daemon"
if [ -d "$SVC_CG" ] && ! grep -qx 'populated 0' "$SVC_CG/cgroup.events" 2>/dev/null; then
    fail "$SVC_CG is still populated"; dump_cgroups
fi
end

# ------------------------------------------------------------------ 8
begin restart "after a restart the stopped attempt is recorded as interrupted"
T=60 run systemctl start orchd
[ "$RC" = 0 ] || fail "systemctl start orchd exited $RC"
if [ "$RC" = 0 ] && [ -n "$STOP_ID" ]; then
    J=$(status_json "$STOP_ID"); note "status: $J"
    OUTCOME=$(jq -r '(.steps[0].attempts // [])[0].outcome' <<<"$J" 2>/dev/null)
    [ "$OUTCOME" = interrupted ] || fail "first attempt outcome is '$OUTCOME', want interrupted"
    timeout 20 orchctl cancel "$STOP_ID" >/dev/null 2>&1
    T=70 run systemctl stop orchd
    [ "$RC" = 0 ] || fail "second systemctl stop exited $RC"
    no_procs 'sleep 999' 5 || fail "an agent process outlived the second stop"
fi
end

# ------------------------------------------------------------------ results
journalctl -u orchd --no-pager -o short-monotonic > "$OUT/journal-orchd.txt" 2>&1
{
    for c in "${PASSED[@]}"; do echo "PASS $c"; done
    for c in "${FAILED[@]}"; do echo "FAIL $c"; done
} > "$OUT/summary.txt"
say "=== ${#PASSED[@]} passed, ${#FAILED[@]} failed${FAILED:+: ${FAILED[*]}}"
n=${#FAILED[@]}; [ "$n" -gt 100 ] && n=100
exit "$n"

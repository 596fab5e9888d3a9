#!/usr/bin/env bash
# Guest side of tests/vm/deb.sh: installs the built orch .deb on a clean Debian with
# systemd as PID 1 and checks the package end to end (see tests/vm/deb.sh).
set -uo pipefail

CMD_DIR=$(cd "$(dirname "$0")" && pwd)
OUT=${VM_TEST_OUT:-/tmp/vm-test-out}
mkdir -p "$OUT/checks"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive
unset ORCH_SOCKET
# Users' agents run in the caller's working directory: one every user may enter.
cd /tmp

T0=$(date +%s.%N)
ts() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%6.1fs", b-a}'; }
say() { echo "[guest $(ts)] $*"; }
PASSED=() FAILED=() CUR="" CUR_LOG="" CUR_FAIL=""
begin() {
    CUR=$1 CUR_FAIL=""
    CUR_LOG="$OUT/checks/$(printf '%02d' $(( ${#PASSED[@]} + ${#FAILED[@]} + 1 )))-$1.txt"
    : > "$CUR_LOG"; say "--- $1: $2"; echo "# $1: $2" >> "$CUR_LOG"
}
note() { echo "$*" >> "$CUR_LOG"; }
fail() { note "FAILURE: $*"; say "  failed: $*"; [ -n "$CUR_FAIL" ] || CUR_FAIL=$*; }
end() {
    if [ -z "$CUR_FAIL" ]; then PASSED+=("$CUR"); echo "PASS $CUR"
    else FAILED+=("$CUR"); echo "FAIL $CUR: $CUR_FAIL"; echo "FAIL $CUR: $CUR_FAIL" >> "$OUT/failures.txt"; fi
}
# [T=SECS] run [as USER] CMD...: sets RC and STDOUT; transcript to the check's file.
# (`as` is expanded here: timeout(1) execs its command and cannot run a shell function;
# given `as` it ran /usr/bin/as, absent here, hence the earlier exit 127.)
run() {
    local errf; errf=$(mktemp)
    if [ "$1" = as ]; then local u=$2; shift 2; set -- $(as_argv "$u") "$@"; fi
    STDOUT=$(timeout -k 5 "${T:-30}" "$@" 2>"$errf"); RC=$?
    { echo "\$ $*"; echo "rc=$RC"; [ -n "$STDOUT" ] && echo "$STDOUT"; [ -s "$errf" ] && sed 's/^/stderr: /' "$errf"; } >> "$CUR_LOG"
    rm -f "$errf"; return 0
}
# The command prefix that runs a command as USER (a login-like environment, no session).
as_argv() { echo runuser -u "$1" -- /usr/bin/env PATH=/usr/local/bin:/usr/bin:/bin HOME="/home/$1" XDG_RUNTIME_DIR="/run/user/$(id -u "$1")"; }
# until_true SECS CMD...: waits (0.2 s steps) until CMD succeeds
until_true() { local end=$(( $(date +%s) + $1 )); shift; until "$@"; do [ "$(date +%s)" -ge "$end" ] && return 1; sleep 0.2; done; }

# ------------------------------------------------------------------ 1
begin install "apt installs the .deb; orchd.socket listens, orchd.service waits"
# Under TCG man-db's index rebuild (a dpkg trigger) alone outlasted a 120 s cap: skip it.
echo 'man-db man-db/auto-update boolean false' | debconf-set-selections
rm -f /var/lib/man-db/auto-update
# (not --no-download: apt then refuses a local .deb, "Pathname to install is not absolute")
T=600 run apt-get install -y "$CMD_DIR/orch.deb"
[ "$RC" = 0 ] || fail "apt-get install exited $RC"
until_true 30 systemctl is-active --quiet orchd.socket || note "orchd.socket not active after 30 s"
run systemctl is-active orchd.socket; [ "$STDOUT" = active ] || fail "orchd.socket is '$STDOUT'"
run systemctl is-active orchd.service; [ "$STDOUT" = inactive ] || fail "orchd.service is '$STDOUT' before any client"
run stat -c '%U:%G %a' /run/orch/orchd.sock; [ "$STDOUT" = "root:orch 660" ] || fail "socket is '$STDOUT'"
run getent group orch; [ "$RC" = 0 ] || fail "no group orch"
end

# ------------------------------------------------------------------ 2
begin activation "the first orchctl call starts the system daemon"
T=60 run orchctl daemon status -o json
[ "$RC" = 0 ] || fail "daemon status exited $RC"
[ "$(jq -r .socket_activated <<<"$STDOUT")" = true ] || fail "not socket-activated"
run systemctl is-active orchd.service; [ "$STDOUT" = active ] || fail "orchd.service is '$STDOUT'"
run orchctl doctor; note "doctor rc=$RC"
end

# ------------------------------------------------------------------ 3
begin group-user "a member of group orch submits; the agent runs as that user; the journal filters by OBJECTIVE_ID"
useradd -m -G orch alice
T=60 run as alice orchctl submit --wait -- sh -c 'id -un > /tmp/agent-user'
ID=$(head -n1 <<<"$STDOUT")
[ "$RC" = 0 ] || fail "submit --wait exited $RC"
[ "$(cat /tmp/agent-user 2>/dev/null)" = alice ] || fail "the agent ran as '$(cat /tmp/agent-user 2>/dev/null)'"
run as alice orchctl daemon status -o json
[ "$(jq -r .socket_origin <<<"$STDOUT")" = system ] || fail "alice did not reach the system daemon by its socket"
run journalctl -u orchd --no-pager -o verbose "OBJECTIVE_ID=$ID"
[ -n "$ID" ] && grep -q "OBJECTIVE_ID=$ID" <<<"$STDOUT" || fail "journalctl OBJECTIVE_ID=$ID found nothing"
run journalctl --no-pager -o cat "OBJECTIVE_ID=$ID"
grep -q "objective submitted" <<<"$STDOUT" || fail "no 'objective submitted' line for $ID"
run journalctl --no-pager -o cat "OBJECTIVE_ID=0000NOSUCH"
[ -z "$STDOUT" ] || fail "an unknown OBJECTIVE_ID matched lines"
end

# ------------------------------------------------------------------ 4
begin man-completion "the man pages open; bash completes orchctl's subcommands"
for page in "orchctl" "orchctl-submit" "8 orchd" "5 orchd.toml"; do
    # shellcheck disable=SC2086
    run man -P cat $page
    [ "$RC" = 0 ] && [ -n "$STDOUT" ] || fail "man $page does not open"
done
run man -P cat orchctl-submit; grep -q -- "--retries" <<<"$STDOUT" || fail "orchctl-submit(1) lacks --retries"
run bash -c 'source /usr/share/bash-completion/completions/orchctl
    fn=$(complete -p orchctl | sed -n "s/.*-F \([^ ]*\) .*/\1/p")
    COMP_WORDS=(orchctl dae); COMP_CWORD=1; COMP_LINE="orchctl dae"; COMP_POINT=${#COMP_LINE}
    "$fn" orchctl dae orchctl; printf "%s\n" "${COMPREPLY[@]}"'
grep -qx "daemon" <<<"$STDOUT" || fail "bash completion of 'orchctl dae' gave: $STDOUT"
end

# ------------------------------------------------------------------ 5
begin user-service "a lingering user's own daemon runs beside the system one"
useradd -m bob
loginctl enable-linger bob
BOB=$(id -u bob)
until_true 60 systemctl is-active --quiet "user@$BOB.service" || fail "user@$BOB.service did not start"
T=60 run as bob systemctl --user enable --now orchd.service
[ "$RC" = 0 ] || fail "systemctl --user enable --now orchd exited $RC"
T=30 run as bob orchctl daemon status -o json
[ "$(jq -r .uid <<<"$STDOUT")" = "$BOB" ] || fail "bob reached uid $(jq -r .uid <<<"$STDOUT"), not his own daemon"
[ "$(jq -r .socket_origin <<<"$STDOUT")" = own ] || fail "bob's socket origin is not his own"
T=30 run as alice orchctl daemon status -o json
[ "$(jq -r .uid <<<"$STDOUT")" = 0 ] || fail "alice did not reach the system daemon"
T=60 run as bob orchctl submit --wait -- true
[ "$RC" = 0 ] || fail "bob's submit exited $RC"
# Work left running for the removal check.
T=30 run as alice orchctl submit -- sleep 777
T=30 run as bob orchctl submit -- sleep 778
until_true 30 pgrep -f 'sleep 77[78]' >/dev/null || fail "the sleeping agents did not start"
end

# ------------------------------------------------------------------ live restore
# A counting agent (root's, through the system daemon) runs through a package upgrade, a
# `systemctl reload` and a crash of orchd that systemd restarts; at the end it is one
# attempt of one process whose every line is in its log exactly once, in order.
cat > /tmp/count.sh <<'AGENT'
#!/bin/bash
i=0
while [ ! -e /tmp/count-stop ]; do i=$((i+1)); echo "n $i"; sleep 0.05; done
echo "end $i"
AGENT
chmod 0755 /tmp/count.sh
# orchctl with a deadline: with orchd down a client of the socket-activated unit waits.
oc() { timeout -k 2 20 orchctl "$@"; }
main_pid() { systemctl show -p MainPID --value orchd.service; }
status_json() { oc status "$CID" -o json 2>/dev/null; }
agent_pid() { status_json | jq -r '.steps[0].attempts[0].pid // empty'; }
n_attempts() { status_json | jq -r '.steps[0].attempts | length'; }
# The numbers of the agent's `n N` lines in its log, one a line.
numbered() { oc logs "$CID" 2>/dev/null | sed -n 's/^n \([0-9][0-9]*\)$/\1/p'; }
n_lines() { numbered | wc -l; }
more_output_than() { [ "$(n_lines)" -gt "$1" ]; }
daemon_field() { oc daemon status -o json 2>/dev/null | jq -r ".$1"; }
# check_agent WHAT: the agent is the same live process, still one attempt, and writing.
check_agent() {
    local seen; seen=$(n_lines)
    kill -0 "$APID" 2>/dev/null || fail "$1: the agent (pid $APID) died"
    [ "$(agent_pid)" = "$APID" ] || fail "$1: the attempt's pid is '$(agent_pid)', not $APID"
    [ "$(n_attempts)" = 1 ] || fail "$1: $(n_attempts) attempts"
    until_true 60 more_output_than "$seen" || fail "$1: no output after it ($seen lines)"
    note "$1: agent $APID alive, one attempt, $(n_lines) lines"
}

begin upgrade "apt installs a newer .deb while an agent runs: orchd re-executes in place, the agent keeps running"
T=60 run orchctl submit -- /tmp/count.sh
CID=$(head -n1 <<<"$STDOUT")
until_true 60 bash -c '[ -n "$(timeout 20 orchctl status '"$CID"' -o json | jq -r ".steps[0].attempts[0].pid // empty")" ]' \
    || fail "the counting agent did not start"
APID=$(agent_pid); note "objective $CID, agent pid $APID"
until_true 60 more_output_than 0 || fail "the agent wrote nothing"
OPID=$(main_pid); OSTART=$(daemon_field daemon_started_ms)
OVER=$(dpkg-query -W -f '${Version}' orch)
UP_T0=$(date +%s.%N)
T=600 run apt-get install -y "$CMD_DIR/orch-upgrade.deb"
[ "$RC" = 0 ] || fail "apt-get install of the newer package exited $RC"
note "apt-get install took $(awk -v a="$UP_T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
run dpkg-query -W -f '${Version}' orch
[ "$STDOUT" = "$(cat "$CMD_DIR/upgrade-version")" ] || fail "installed version '$STDOUT' after upgrading from $OVER"
[ "$(main_pid)" = "$OPID" ] || fail "orchd's pid went from $OPID to $(main_pid): restarted, not re-executed"
run orchctl daemon status -o json
[ "$(jq -r .daemon_started_ms <<<"$STDOUT")" != "$OSTART" ] || fail "orchd did not re-execute (same start time)"
[ "$(jq -r .pid <<<"$STDOUT")" = "$OPID" ] || fail "daemon status pid is not $OPID"
# The same binaries in both packages, so the version string is the same: what shows the
# new package's program runs is that orchd's image is the installed /usr/bin/orchd (the
# old file, replaced by dpkg, shows as "(deleted)" until the re-exec).
run orchd --version
[ "$(daemon_field version)" = "$(awk '{print $2}' <<<"$STDOUT")" ] \
    || fail "daemon status version differs from /usr/bin/orchd --version ($STDOUT)"
run readlink "/proc/$OPID/exe"
[ "$STDOUT" = /usr/bin/orchd ] || fail "orchd runs '$STDOUT', not the upgraded /usr/bin/orchd"
[ "$(stat -L -c %i "/proc/$OPID/exe")" = "$(stat -c %i /usr/bin/orchd)" ] || fail "orchd's image is not the installed file"
[ "$(daemon_field limits_backend)" = cgroup-v2 ] \
    || fail "after the upgrade the limits backend is '$(daemon_field limits_backend)': $(daemon_field limits_detail)"
check_agent "after the upgrade"
end

begin reload "systemctl reload orchd re-executes it in place; the agent keeps running"
OSTART=$(daemon_field daemon_started_ms)
T=120 run systemctl reload orchd.service
if [ "$RC" != 0 ]; then
    run systemctl status --no-pager -n 30 orchd.service
    fail "systemctl reload exited $RC"
fi
[ "$(main_pid)" = "$OPID" ] || fail "orchd's pid went from $OPID to $(main_pid)"
[ "$(daemon_field daemon_started_ms)" != "$OSTART" ] || fail "orchd did not re-execute"
[ "$(systemctl show -p SubState --value orchd.service)" = running ] \
    || fail "after the reload orchd.service is '$(systemctl show -p SubState --value orchd.service)', not running"
[ "$(daemon_field limits_backend)" = cgroup-v2 ] || fail "after the reload the limits backend is '$(daemon_field limits_backend)'"
check_agent "after the reload"
# Asked directly (not through systemctl), the re-execution must not look like a stop to
# systemd: it tells RELOADING=1, then READY=1, and the unit stays running.
OSTART=$(daemon_field daemon_started_ms)
T=120 run orchctl daemon upgrade
[ "$RC" = 0 ] || fail "orchctl daemon upgrade exited $RC"
substate() { systemctl show -p SubState --value orchd.service; }
until_true 30 bash -c '[ "$(systemctl show -p SubState --value orchd.service)" = running ]' \
    || fail "after orchctl daemon upgrade orchd.service is '$(substate)', not running"
[ "$(main_pid)" = "$OPID" ] || fail "orchd's pid went from $OPID to $(main_pid) after orchctl daemon upgrade"
[ "$(daemon_field daemon_started_ms)" != "$OSTART" ] || fail "orchctl daemon upgrade did not re-execute"
check_agent "after orchctl daemon upgrade"
[ "$(substate)" = running ] || fail "orchd.service went '$(substate)' after orchctl daemon upgrade"
end

begin crash-restart "orchd killed -9: systemd restarts it (live_restore = true), it re-attaches the agent"
run kill -9 "$OPID"
until_true 60 bash -c 'p=$(systemctl show -p MainPID --value orchd.service); [ "$p" != 0 ] && [ "$p" != '"$OPID"' ] && systemctl is-active --quiet orchd.service' \
    || fail "systemd did not restart orchd"
NPID=$(main_pid); note "orchd $OPID -> $NPID"
run systemctl status --no-pager -n 20 orchd.service
run cat /sys/fs/cgroup/system.slice/orchd.service/cgroup.subtree_control
T=60 run orchctl daemon status -o json
[ "$RC" = 0 ] || fail "the restarted orchd does not answer"
check_agent "after the crash"
end

begin agent-whole "the agent ends: one attempt, succeeded, every line once and in order"
touch /tmp/count-stop
until_true 60 bash -c '[ "$(timeout 20 orchctl status '"$CID"' -o json | jq -r .state)" = succeeded ]' \
    || fail "the objective is '$(status_json | jq -r .state)', not succeeded"
run orchctl status "$CID" -o json
[ "$(jq -r '.steps[0].attempts | length' <<<"$STDOUT")" = 1 ] || fail "not one attempt"
[ "$(jq -r '.steps[0].attempts[0].pid' <<<"$STDOUT")" = "$APID" ] || fail "the attempt's pid changed"
[ "$(jq -r '.steps[0].attempts[0].outcome' <<<"$STDOUT")" = success ] || fail "the attempt's outcome is not success"
numbered > /tmp/count-got
N=$(oc logs "$CID" | sed -n 's/^end \([0-9][0-9]*\)$/\1/p')
note "the agent printed $N lines"
[ -n "$N" ] && [ "$N" -gt 0 ] || fail "no end line in the log"
seq 1 "${N:-0}" | cmp -s - /tmp/count-got || fail "the log's lines are not 1..$N once each in order ($(wc -l < /tmp/count-got) numbered lines)"
end

begin restart "systemctl restart orchd drains (SIGTERM keeps its meaning): the attempt is interrupted and runs again"
rm -f /tmp/count-stop
T=60 run orchctl submit --retries 2 -- /tmp/count.sh
CID=$(head -n1 <<<"$STDOUT")
until_true 60 bash -c '[ -n "$(timeout 20 orchctl status '"$CID"' -o json | jq -r ".steps[0].attempts[0].pid // empty")" ]' \
    || fail "the counting agent did not start"
APID=$(agent_pid)
T=120 run systemctl restart orchd.service
[ "$RC" = 0 ] || fail "systemctl restart exited $RC"
until_true 30 bash -c "! kill -0 $APID 2>/dev/null" || fail "the agent $APID still runs after the drain"
until_true 60 bash -c '[ "$(timeout 20 orchctl status '"$CID"' -o json | jq -r ".steps[0].attempts | length")" -ge 2 ]' \
    || fail "no second attempt after the restart"
run orchctl status "$CID" -o json
[ "$(jq -r '.steps[0].attempts[0].outcome' <<<"$STDOUT")" = interrupted ] || fail "the first attempt's outcome is not interrupted"
touch /tmp/count-stop
until_true 60 bash -c '[ "$(timeout 20 orchctl status '"$CID"' -o json | jq -r .state)" = succeeded ]' || fail "the objective did not succeed"
end

# ------------------------------------------------------------------ removal
begin remove "apt remove stops every orchd and agent"
T=300 run apt-get remove -y orch
[ "$RC" = 0 ] || fail "apt-get remove exited $RC"
until_true 30 bash -c '! pgrep -x orchd >/dev/null' || fail "orchd still runs: $(pgrep -a -x orchd)"
until_true 30 bash -c '! pgrep -f "sleep 77[78]" >/dev/null' || fail "agents still run: $(pgrep -a -f 'sleep 77[78]')"
[ -e /etc/orch/orchd.toml ] || fail "remove deleted the config (only purge may)"
end

begin purge "apt purge removes state and config"
T=300 run apt-get purge -y orch
[ "$RC" = 0 ] || fail "apt-get purge exited $RC"
for p in /var/lib/orch /etc/orch /usr/bin/orchd; do [ ! -e "$p" ] || fail "$p is left"; done
end

# ------------------------------------------------------------------ results
journalctl --no-pager -o short-monotonic -u orchd -u orchd.socket > "$OUT/journal-orchd.txt" 2>&1
{ for c in "${PASSED[@]}"; do echo "PASS $c"; done; for c in "${FAILED[@]}"; do echo "FAIL $c"; done; } > "$OUT/summary.txt"
say "=== ${#PASSED[@]} passed, ${#FAILED[@]} failed${FAILED:+: ${FAILED[*]}}"
exit "${#FAILED[@]}"

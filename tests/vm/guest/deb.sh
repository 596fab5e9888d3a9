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
# [T=SECS] run CMD...: sets RC and STDOUT; transcript to the check's file
run() {
    local errf; errf=$(mktemp)
    STDOUT=$(timeout -k 5 "${T:-30}" "$@" 2>"$errf"); RC=$?
    { echo "\$ $*"; echo "rc=$RC"; [ -n "$STDOUT" ] && echo "$STDOUT"; [ -s "$errf" ] && sed 's/^/stderr: /' "$errf"; } >> "$CUR_LOG"
    rm -f "$errf"; return 0
}
as() { local u=$1; shift; runuser -u "$u" -- /usr/bin/env PATH=/usr/local/bin:/usr/bin:/bin HOME="/home/$u" XDG_RUNTIME_DIR="/run/user/$(id -u "$u")" "$@"; }
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

# ------------------------------------------------------------------ 6
begin remove "apt remove stops every orchd and agent"
T=300 run apt-get remove -y orch
[ "$RC" = 0 ] || fail "apt-get remove exited $RC"
until_true 30 bash -c '! pgrep -x orchd >/dev/null' || fail "orchd still runs: $(pgrep -a -x orchd)"
until_true 30 bash -c '! pgrep -f "sleep 77[78]" >/dev/null' || fail "agents still run: $(pgrep -a -f 'sleep 77[78]')"
[ -e /etc/orch/orchd.toml ] || fail "remove deleted the config (only purge may)"
end

# ------------------------------------------------------------------ 7
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

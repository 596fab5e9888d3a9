#!/usr/bin/env bash
# VM test: orchd's cgroup-v2 limits backend on a real systemd.
#
# Builds the release orchd/orchctl, stages them with systemd/orchd.service and
# tests/vm/guest/run.sh into a command dir, and boots a throw-away Debian 12
# VM (systemd as PID 1, journald, cgroup v2 with cpu memory pids io) with
# the shared run-vm-test.sh tool. The guest installs orchd as the system
# service and checks memory/pids limits, cancel, pause/resume, the journal
# and `systemctl stop` through orchctl (see tests/vm/guest/run.sh).
#
# Usage: tests/vm/run-vm-tests.sh        (as root: the first run builds the image)
#
# Environment:
#   ORCH_VM_TOOL      the VM tool (default: <repo>/../shared/tools/run-vm-test.sh)
#   ORCH_VM_CACHE     image cache dir (default: /var/cache/orch-vm)
#   ORCH_VM_RESULTS   results dir (default: <repo>/target/vm-results); gets
#                     out/ (summary.txt, failures.txt, checks/*, journal-orchd.txt,
#                     run.log, journal.txt), console.log, vm-tool.log
#   ORCH_VM_OPTIONAL  1: if the VM cannot run on this host (no qemu, no mirror,
#                     not root for the first image build, VM does not boot),
#                     print SKIPPED and exit 0 instead of failing
#   ORCH_VM_NO_BUILD  1: use the binaries already in target/release
#   ORCH_VM_POWERCUT  0: skip the power-cut test (tests/vm/powercut.sh; PC_CUTS=N)
#   VM_TIMEOUT, VM_MEM, VM_CPUS, VM_ACCEL, VM_MIRROR   passed to the tool
#
# Exit code: 0 all checks passed; the guest's code (number of failed checks,
# 100 when orchd did not start) when checks failed; 1 when the build failed;
# 3 when the VM could not run (0 with ORCH_VM_OPTIONAL=1).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TOOL=${ORCH_VM_TOOL:-$REPO/../shared/tools/run-vm-test.sh}
CACHE=${ORCH_VM_CACHE:-/var/cache/orch-vm}
RES=${ORCH_VM_RESULTS:-$REPO/target/vm-results}
# Baked into the cached image (part of its cache key): python3 for the memory
# hog and the pids check's fork loop, jq to read orchctl's JSON.
export VM_EXTRA_PACKAGES="python3-minimal jq"
export VM_TIMEOUT=${VM_TIMEOUT:-600}

say() { printf '[vm-tests %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
T0=$(date +%s)

# The VM could not run at all: loud failure, or SKIPPED when optional.
cannot_run() {
    if [ "${ORCH_VM_OPTIONAL:-0}" = 1 ]; then
        echo "VM TEST: SKIPPED: $*"
        exit 0
    fi
    echo "VM TEST: FAIL (the VM could not run): $*" >&2
    echo "         (set ORCH_VM_OPTIONAL=1 to skip instead on hosts that cannot run it)" >&2
    exit 3
}

# ------------------------------------------------------------ preflight
[ -f "$TOOL" ] || cannot_run "VM tool not found at $TOOL (set ORCH_VM_TOOL)"
[ -f "$REPO/systemd/orchd.service" ] || { echo "VM TEST: FAIL: $REPO/systemd/orchd.service is missing" >&2; exit 1; }
if [ "$(id -u)" != 0 ]; then
    # Without root the tool can neither install qemu nor build the image.
    command -v qemu-system-x86_64 >/dev/null || cannot_run "qemu-system-x86_64 is missing and installing it needs root"
    ls "$CACHE"/rootfs-*.img >/dev/null 2>&1 || cannot_run "no cached VM image in $CACHE and building one needs root"
fi

# ------------------------------------------------------------ build
if [ "${ORCH_VM_NO_BUILD:-0}" != 1 ]; then
    say "building release binaries"
    (cd "$REPO" && cargo build --release --locked --bin orchd --bin orchctl) \
        || { echo "VM TEST: FAIL: cargo build --release failed" >&2; exit 1; }
fi
BIN=${CARGO_TARGET_DIR:-$REPO/target}/release
case "$BIN" in /*) ;; *) BIN=$REPO/$BIN;; esac
for b in orchd orchctl; do
    [ -x "$BIN/$b" ] || { echo "VM TEST: FAIL: $BIN/$b not built" >&2; exit 1; }
done

# ------------------------------------------------------------ command dir
CMD=$(mktemp -d "${TMPDIR:-/tmp}/orch-vm-cmd.XXXXXX")
trap 'rm -rf "$CMD"' EXIT
install -m 0755 "$REPO/tests/vm/guest/run.sh" "$CMD/run.sh"
install -m 0755 "$BIN/orchd" "$BIN/orchctl" "$CMD/"
install -m 0644 "$REPO/systemd/orchd.service" "$CMD/orchd.service"
install -m 0644 "$REPO/systemd/orchd.socket" "$CMD/orchd.socket"

mkdir -p "$RES"
RES=$(cd "$RES" && pwd)
rm -rf "$RES/out" "$RES/console.log" "$RES/vm-tool.log" "$RES/console-stream.log"   # no stale result

# ------------------------------------------------------------ run
say "booting the VM (cache $CACHE, results $RES); the guest console follows"
set +e
VM_RESULTS_DIR=$RES "$TOOL" "$CACHE" "$CMD" \
    > >(tee "$RES/console-stream.log") 2> >(tee "$RES/vm-tool.log" >&2)
rc=$?
set -e
sleep 0.2   # let the tee processes flush
WALL=$(( $(date +%s) - T0 ))

echo
echo "================================ orch VM test ================================"
if [ ! -s "$RES/out/rc" ]; then
    if grep -aq 'VM-TEST-BEGIN' "$RES/console.log" 2>/dev/null; then
        # The guest booted and started the test, which did not finish: a test failure.
        echo "VM TEST: FAIL: the guest test did not finish (tool exit $rc; VM_TIMEOUT=${VM_TIMEOUT}s)"
        echo "console: $RES/console.log"
        [ -f "$RES/out/run.log" ] && echo "guest log: $RES/out/run.log"
        exit 1
    fi
    reason=$(grep -av '^\[ *[0-9.]*\]' "$RES/vm-tool.log" 2>/dev/null | tail -n 5 | tr '\n' ' ')
    cannot_run "no test result from the VM (tool exit $rc): ${reason:-see $RES/vm-tool.log}"
fi
grc=$(tr -dc 0-9 < "$RES/out/rc")
[ -f "$RES/out/summary.txt" ] && cat "$RES/out/summary.txt"
[ -f "$RES/out/failures.txt" ] && { echo "--- failures (details under $RES)"; cat "$RES/out/failures.txt"; }
[ "$grc" = 0 ] || "$REPO/tests/vm/show-failures.sh" "$RES/out"
echo "results: $RES (out/summary.txt, out/checks/, out/journal-orchd.txt, out/journal.txt, console.log)"
if [ "$grc" = 0 ]; then
    echo "VM TEST: PASS (${WALL}s)"
else
    echo "VM TEST: FAIL (guest exit $grc, ${WALL}s)"
fi

# ------------------------------------------------------------ power cuts
# orchd's state on its own disk, PC_CUTS (default 20) hard resets under load, each
# followed by a boot that checks what was acknowledged (tests/vm/powercut.sh).
if [ "${ORCH_VM_POWERCUT:-1}" = 1 ]; then
    say "power-cut test"
    set +e
    ORCH_VM_NO_BUILD=1 ORCH_VM_RESULTS=$RES ORCH_VM_TOOL=$TOOL ORCH_VM_CACHE=$CACHE \
        "$REPO/tests/vm/powercut.sh"
    prc=$?
    set -e
    if [ "$prc" = 3 ] && [ "${ORCH_VM_OPTIONAL:-0}" = 1 ]; then
        echo "POWERCUT: SKIPPED (the VM could not run)"
    elif [ "$prc" != 0 ] && [ "$grc" = 0 ]; then
        grc=1
    fi
fi
exit "$grc"

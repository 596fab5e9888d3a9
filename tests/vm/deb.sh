#!/usr/bin/env bash
# VM test of the .deb: installs target/packages/orch_<version>_amd64.deb on a clean
# Debian 12 with systemd as PID 1 (the shared run-vm-test.sh tool) and checks, in the
# guest (tests/vm/guest/deb.sh): socket activation on the first orchctl call; a member of
# group orch submits and the agent runs as that user; journalctl OBJECTIVE_ID= filters;
# the man pages open; bash completion; a lingering user's own daemon beside the system
# one, each user's orchctl reaching the right one; live restore through a package upgrade
# (a second .deb, same binaries, higher version), `systemctl reload` and a crash of orchd
# (an agent keeps running: one attempt, same pid, every line once), and that
# `systemctl restart` drains; apt remove leaves no process; apt purge removes state and
# config.
#
# Usage: tests/vm/deb.sh   (as root; builds the release binaries and the package with
#                           packaging/build.sh unless ORCH_VM_NO_BUILD=1, then uses the
#                           .deb already built; the upgrade .deb is always made here)
# Environment: ORCH_VM_TOOL, ORCH_VM_CACHE, ORCH_VM_RESULTS (default target/vm-results-deb),
# ORCH_VM_OPTIONAL, VM_TIMEOUT, as tests/vm/run-vm-tests.sh.
# Exit: 0 all passed; the number of failed checks; 1 build failed; 3 the VM could not run.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TOOL=${ORCH_VM_TOOL:-$REPO/../shared/tools/run-vm-test.sh}
CACHE=${ORCH_VM_CACHE:-/var/cache/orch-vm}
RES=${ORCH_VM_RESULTS:-$REPO/target/vm-results-deb}
# jq reads orchctl's JSON; man-db opens the man pages (part of the image's cache key).
export VM_EXTRA_PACKAGES="python3-minimal jq man-db"
export VM_TIMEOUT=${VM_TIMEOUT:-1200}
T0=$(date +%s)
say() { printf '[vm-deb %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
cannot_run() {
    if [ "${ORCH_VM_OPTIONAL:-0}" = 1 ]; then echo "VM DEB TEST: SKIPPED: $*"; exit 0; fi
    echo "VM DEB TEST: FAIL (the VM could not run): $*" >&2; exit 3
}
[ -f "$TOOL" ] || cannot_run "VM tool not found at $TOOL (set ORCH_VM_TOOL)"

if [ "${ORCH_VM_NO_BUILD:-0}" != 1 ]; then
    say "building the package"
    "$REPO/packaging/build.sh" --no-rpm --no-lintian || { echo "VM DEB TEST: FAIL: packaging/build.sh failed" >&2; exit 1; }
fi
OUT_DIR=${CARGO_TARGET_DIR:-$REPO/target}
case "$OUT_DIR" in /*) ;; *) OUT_DIR=$REPO/$OUT_DIR;; esac
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)
deb=$OUT_DIR/packages/orch_${version}_amd64.deb
[ -f "$deb" ] || { echo "VM DEB TEST: FAIL: no $deb (packaging/build.sh --no-rpm)" >&2; exit 1; }
# The upgrade the guest installs while an agent runs: the same binaries, a higher version.
up_version=$version+vmupgrade1
say "building the upgrade package $up_version"
"$REPO/packaging/build.sh" --no-build --no-rpm --no-lintian --version "$up_version" >/dev/null \
    || { echo "VM DEB TEST: FAIL: packaging/build.sh --version $up_version failed" >&2; exit 1; }
up_deb=$OUT_DIR/packages/orch_${up_version}_amd64.deb

CMD=$(mktemp -d "${TMPDIR:-/tmp}/orch-vm-deb.XXXXXX")
trap 'rm -rf "$CMD"' EXIT
install -m 0755 "$REPO/tests/vm/guest/deb.sh" "$CMD/run.sh"
install -m 0644 "$deb" "$CMD/orch.deb"
install -m 0644 "$up_deb" "$CMD/orch-upgrade.deb"
echo "$up_version-1" > "$CMD/upgrade-version"
mkdir -p "$RES"; RES=$(cd "$RES" && pwd)
rm -rf "$RES/out" "$RES/console.log" "$RES/vm-tool.log"

say "booting the VM with $(basename "$deb")"
set +e
VM_RESULTS_DIR=$RES "$TOOL" "$CACHE" "$CMD" > "$RES/console-stream.log" 2> "$RES/vm-tool.log"
rc=$?
set -e
WALL=$(( $(date +%s) - T0 ))
echo "================================ orch VM deb test ================================"
if [ ! -s "$RES/out/rc" ]; then
    if grep -aq 'VM-TEST-BEGIN' "$RES/console.log" 2>/dev/null; then
        echo "VM DEB TEST: FAIL: the guest test did not finish (tool exit $rc); console: $RES/console.log"
        exit 1
    fi
    cannot_run "no result from the VM (tool exit $rc): $(tail -n 3 "$RES/vm-tool.log" | tr '\n' ' ')"
fi
grc=$(tr -dc 0-9 < "$RES/out/rc")
[ -f "$RES/out/summary.txt" ] && cat "$RES/out/summary.txt"
[ -f "$RES/out/failures.txt" ] && { echo "--- failures (details under $RES/out/checks)"; cat "$RES/out/failures.txt"; }
[ "$grc" = 0 ] || "$REPO/tests/vm/show-failures.sh" "$RES/out"
if [ "$grc" = 0 ]; then echo "VM DEB TEST: PASS (${WALL}s)"; else echo "VM DEB TEST: FAIL (guest exit $grc, ${WALL}s)"; fi
exit "$grc"

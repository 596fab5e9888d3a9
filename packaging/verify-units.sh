#!/usr/bin/env bash
# Checks systemd/*.service with `systemd-analyze verify`, failing on any
# warning. The units name /usr/bin/orchd, which need not exist here, so each
# is checked as a temporary copy whose ExecStart points at a binary that does:
# ORCHD=PATH, else target/{release,debug}/orchd, else /bin/true (and ExecReload's
# /usr/bin/orchctl likewise: ORCHCTL=PATH, else target/.../orchctl, else /bin/true).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
command -v systemd-analyze >/dev/null || {
    echo "verify-units: systemd-analyze not found (apt-get install systemd)" >&2
    exit 1
}

orchd=${ORCHD:-}
if [[ -z $orchd ]]; then
    for candidate in "$root/target/release/orchd" "$root/target/debug/orchd" /bin/true; do
        if [[ -x $candidate ]]; then orchd=$candidate; break; fi
    done
fi

orchctl=${ORCHCTL:-}
if [[ -z $orchctl ]]; then
    for candidate in "$root/target/release/orchctl" "$root/target/debug/orchctl" /bin/true; do
        if [[ -x $candidate ]]; then orchctl=$candidate; break; fi
    done
fi
# The unit as checked here: its binaries where they are on this machine.
localize() { # localize UNIT_FILE
    sed -e "s|^ExecStart=/usr/bin/orchd|ExecStart=$orchd|" \
        -e "s|^ExecReload=/usr/bin/orchctl|ExecReload=$orchctl|" "$1"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

status=0
check() { # check UNIT_FILE [systemd-analyze options...]
    local unit=$1; shift
    local copy="$tmp/orchd.service"
    localize "$unit" >"$copy"
    grep -q "^ExecStart=$orchd" "$copy" || {
        echo "verify-units: $unit has no ExecStart=/usr/bin/orchd line" >&2
        status=1
        return
    }
    local out
    # --man=no: no man pages to look up; --recursive-errors=no: do not judge
    # the units this one merely orders itself after.
    out=$(systemd-analyze "$@" verify --man=no --recursive-errors=no "$copy" 2>&1) || {
        echo "verify-units: $unit: systemd-analyze failed:" >&2
        echo "$out" >&2
        status=1
        return
    }
    if [[ -n $out ]]; then
        echo "verify-units: $unit: warnings:" >&2
        echo "$out" >&2
        status=1
        return
    fi
    echo "verify-units: $unit ok"
}

check "$root/systemd/orchd.service"
# The socket unit, beside the service it activates (which names the socket it needs).
cp "$root/systemd/orchd.socket" "$tmp/orchd.socket"
localize "$root/systemd/orchd.service" >"$tmp/orchd.service"
if out=$(systemd-analyze verify --man=no --recursive-errors=no "$tmp/orchd.socket" 2>&1) && [[ -z $out ]]; then
    echo "verify-units: $root/systemd/orchd.socket ok"
else
    echo "verify-units: $root/systemd/orchd.socket:" >&2
    echo "$out" >&2
    status=1
fi
# User units are resolved as the user manager would (%t, %S, %E, default.target).
# The user manager needs a runtime directory; CI (root, no login session) has none.
if [[ -z ${XDG_RUNTIME_DIR:-} || ! -d ${XDG_RUNTIME_DIR:-/nonexistent} ]]; then
    export XDG_RUNTIME_DIR="$tmp/runtime"
    mkdir -m 0700 "$XDG_RUNTIME_DIR"
fi
check "$root/systemd/orchd-user.service" --user

exit $status

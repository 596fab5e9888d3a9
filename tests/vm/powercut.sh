#!/usr/bin/env bash
# Power-cut test: orchd's state on its own virtual disk, a load of submits (with
# checkpoints and attempt ends in flight), a hard reset of the guest without sync
# (`echo b > /proc/sysrq-trigger`), then a boot on the same state disk that checks every
# objective the client saw acknowledged is there, the store opens, and no event seq is
# reused. Repeated CUTS times (default 20), then a last boot that only checks.
#
# The record of what was acknowledged survives the cut because it is not on the guest's
# disks: the guest prints `ACK <id>` on the serial console as soon as `orchctl submit`
# returns, and `SEQ <n>` for every event a watcher receives (published = durable); the
# host reads them from the console file and hands the lists to the next boot on its
# command disk.
#
# Boots without systemd (the kernel runs tests/vm/guest/powercut-init.sh as PID 1), so a
# boot costs seconds even under TCG. Uses the Debian image and kernel cached by the VM
# tool (built on first use by running the tool once).
#
# Usage: tests/vm/powercut.sh            (as root; ORCH_VM_NO_BUILD=1 uses target/release)
# Environment: ORCH_VM_TOOL, ORCH_VM_CACHE, ORCH_VM_RESULTS (as run-vm-tests.sh),
#   ORCH_VM_BIN (directory of orchd/orchctl, default target/release),
#   PC_CUTS (default 20), PC_BOOT_TIMEOUT (s per boot, default 120), VM_MEM, VM_CPUS.
# Exit code: 0 every check passed; 1 a check failed or a boot gave no verdict; 3 the VM
# could not run.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TOOL=${ORCH_VM_TOOL:-$REPO/../shared/tools/run-vm-test.sh}
CACHE=${ORCH_VM_CACHE:-/var/cache/orch-vm}
RES=${ORCH_VM_RESULTS:-$REPO/target/vm-results}/powercut
CUTS=${PC_CUTS:-20}
BOOT_TIMEOUT=${PC_BOOT_TIMEOUT:-300}
export VM_EXTRA_PACKAGES="python3-minimal jq"   # the same image as run-vm-tests.sh

say() { printf '[powercut %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
T0=$(date +%s)

# ------------------------------------------------------------ the cached image and kernel
# The tool's cache key (kept in step with run-vm-test.sh's RECIPE_VERSION and PACKAGES).
find_image() {
    local key
    key=$(printf '%s\n' 5 mmdebstrap bookworm linux-image-cloud-amd64 \
        "systemd,systemd-sysv,dbus,udev,kmod,e2fsprogs,procps,libpam-systemd,${VM_EXTRA_PACKAGES// /,}" \
        | sha256sum | cut -c1-12)
    IMG="$CACHE/rootfs-bookworm-$key.img"
    KERNEL="$CACHE/vmlinuz-bookworm-$key"
    [ -f "$IMG" ] && [ -f "$KERNEL" ]
}
if ! find_image; then
    say "no cached image: building it with the VM tool"
    probe=$(mktemp -d); printf '#!/bin/sh\nexit 0\n' > "$probe/run.sh"; chmod +x "$probe/run.sh"
    "$TOOL" "$CACHE" "$probe" >/dev/null 2>&1 || true
    rm -rf "$probe"
    find_image || { echo "POWERCUT: FAIL (the VM could not run): no image in $CACHE" >&2; exit 3; }
fi
command -v qemu-system-x86_64 >/dev/null || { echo "POWERCUT: FAIL (the VM could not run): no qemu" >&2; exit 3; }

if [ "${ORCH_VM_NO_BUILD:-0}" != 1 ]; then
    say "building release binaries"
    (cd "$REPO" && cargo build --release --locked --bin orchd --bin orchctl)
fi
BIN=${ORCH_VM_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release}
case "$BIN" in /*) ;; *) BIN=$REPO/$BIN;; esac

# ------------------------------------------------------------ disks
rm -rf "$RES"; mkdir -p "$RES"
WORK=$(mktemp -d /tmp/orch-powercut.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
STATE=$WORK/state.img
truncate -s 512M "$STATE"
mkfs.ext4 -q -F -L ORCHSTATE "$STATE"
mkdir -p "$WORK/cmd"
install -m 0755 "$BIN/orchd" "$BIN/orchctl" "$REPO/tests/vm/guest/powercut-init.sh" "$WORK/cmd/"
: > "$WORK/cmd/acked.txt"
echo 0 > "$WORK/cmd/maxseq"

# ------------------------------------------------------------ boots
fails=0 cuts=0 boots=$((CUTS + 1)) checked=0
for boot in $(seq 1 "$boots"); do
    if [ "$boot" -le "$CUTS" ]; then echo cut > "$WORK/cmd/mode"; else echo final > "$WORK/cmd/mode"; fi
    echo "$boot" > "$WORK/cmd/boot"
    mkfs.ext4 -q -F -L PCCMD -d "$WORK/cmd" "$WORK/cmd.img" 256M
    console=$RES/console-$(printf '%02d' "$boot").log
    : > "$console"
    tb=$(date +%s)
    set +e
    timeout -k 5 "$BOOT_TIMEOUT" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -machine q35 \
        -m "${VM_MEM:-1024}" -smp "${VM_CPUS:-2}" -display none -monitor none -nic none -no-reboot \
        -serial "file:$console" -kernel "$KERNEL" \
        -append "root=/dev/nvme0n1 rw rootfstype=ext4 console=ttyS0 panic=-1 quiet init=/bin/bash -- -c \"mount -t proc proc /proc; mount -t devtmpfs dev /dev; modprobe -a virtio_pci virtio_blk; for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vdb ] && break; sleep 0.3; done; mount -t ext4 -o ro /dev/vda /mnt && exec /mnt/powercut-init.sh; sleep 3\"" \
        -drive "file=$IMG,format=raw,if=none,id=root,snapshot=on" -device nvme,drive=root,serial=vmroot \
        -drive "file=$WORK/cmd.img,format=raw,if=virtio" \
        -drive "file=$STATE,format=raw,if=virtio" >/dev/null 2>"$RES/qemu-$boot.err"
    qrc=$?
    set -e
    # What this boot acknowledged and saw published, for the next one to check.
    grep -a '^ACK 01' "$console" | tr -d '\r' | cut -d' ' -f2 >> "$WORK/cmd/acked.txt" || true
    max=$( (cat "$WORK/cmd/maxseq"; grep -a '^SEQ [0-9]' "$console" | tr -d '\r' | cut -d' ' -f2 || true) | sort -n | tail -n1)
    echo "$max" > "$WORK/cmd/maxseq"
    check=$(grep -a '^PC CHECK' "$console" | tr -d '\r' | tail -n1 || true)
    acks=$(grep -ac '^ACK 01' "$console" || true)
    say "boot $boot: $(($(date +%s) - tb))s, qemu rc=$qrc, ${check:-no verdict}, acknowledged this boot: $acks"
    grep -a '^PC \(orchd\|missing\)' "$console" | tr -d '\r' | sed 's/^/    /' >&2 || true
    case "$check" in
        "PC CHECK ok"*) ;;
        *) fails=$((fails + 1)); say "boot $boot FAILED (console: $console)";;
    esac
    if [ "$boot" -le "$CUTS" ]; then
        # The kernel's own line is synchronous; the script's may still sit in the UART.
        if grep -aq '^PC CUT\|sysrq: Resetting' "$console"; then cuts=$((cuts + 1)); else fails=$((fails + 1)); say "boot $boot: no cut happened"; fi
    fi
    [[ "$check" =~ acked=([0-9]+) ]] && checked=$((checked + BASH_REMATCH[1]))
done
cp "$WORK/cmd/acked.txt" "$RES/acked.txt"
WALL=$(( $(date +%s) - T0 ))
total=$(sort -u "$RES/acked.txt" | wc -l)
{
    echo "power cuts: $cuts of $CUTS survived with every check passing: $([ "$fails" = 0 ] && echo yes || echo "no ($fails failures)")"
    echo "objectives acknowledged: $total; objective checks after cuts: $checked; highest event seq published: $(cat "$WORK/cmd/maxseq")"
    echo "wall time: ${WALL}s"
} | tee "$RES/summary.txt"
if [ "$fails" = 0 ]; then echo "POWERCUT: PASS (${WALL}s)"; exit 0; fi
echo "POWERCUT: FAIL (${WALL}s; consoles under $RES)"
exit 1

#!/bin/bash
# PID 1 of one boot of the power-cut test (see tests/vm/powercut.sh). No systemd: the
# kernel runs this straight from the command disk, so a boot costs seconds under TCG.
#
# /dev/vda (ext4, mounted read-only at /mnt by the kernel command line): orchd, orchctl, this script, and from the host:
#   acked.txt  ids of objectives the client saw acknowledged in earlier boots
#   maxseq     the highest event seq a watcher saw published in earlier boots
#   mode       "cut" (check, load, hard reset) or "final" (check, power off)
# /dev/vdb (ext4): orchd's state, the same disk on every boot.
#
# Everything the host needs goes out on the serial console as it happens (it survives
# the reset): `ACK <id>` once `orchctl submit` returned the id, `SEQ <n>` for each event
# a watcher received, `CHECK ...` lines with what this boot found.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LANG=C.UTF-8
mountpoint -q /proc || mount -t proc proc /proc
mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
exec >/dev/ttyS0 2>&1
say() { echo "PC $*"; }
off() { sync; echo "${1:-o}" > /proc/sysrq-trigger; sleep 10; }

# The kernel command line mounted the command disk at /mnt before running this.
mkdir -p /state
ln -sfn /mnt /cmd 2>/dev/null || true
mount -t ext4 /dev/vdb /state || { say "CHECK fail cannot mount the state disk"; off; }
MODE=$(cat /cmd/mode 2>/dev/null || echo final)
BOOT=$(cat /cmd/boot 2>/dev/null || echo 0)
SOCK=/run/orchd.sock
# Generous: under TCG on a loaded host one call can take many seconds.
ctl() { timeout -k 2 120 /cmd/orchctl --socket "$SOCK" "$@"; }

# ---------------------------------------------------------------- start orchd on the state disk
/cmd/orchd --socket "$SOCK" --state-dir /state/orch --limits-backend rlimit --max-parallel 4 \
    --grace-period 1s > /tmp/orchd.log 2>&1 &
ORCHD=$!
up=0
for _ in $(seq 1 300); do
    if ctl daemon status -o json > /tmp/status.json 2>/dev/null; then up=1; break; fi
    kill -0 "$ORCHD" 2>/dev/null || break
    sleep 0.1
done
if [ "$up" != 1 ]; then
    say "CHECK fail boot=$BOOT orchd did not start on the state disk:"
    tail -n 20 /tmp/orchd.log | sed 's/^/PC orchd: /'
    off
fi
# What recovery found, and anything the store had to repair (sled logs it).
grep -E "recovery done|migrating|corrupt|repair|zeroing" /tmp/orchd.log | sed 's/^/PC orchd: /'

# ---------------------------------------------------------------- check what earlier boots acknowledged
if [ -s /cmd/acked.txt ]; then
    ctl list --limit 0 -o json 2>/dev/null | jq -r '.[].id' | sort > /tmp/present.txt
    sort -u /cmd/acked.txt > /tmp/acked.txt
    acked=$(wc -l < /tmp/acked.txt)
    missing=$(comm -23 /tmp/acked.txt /tmp/present.txt | wc -l)
    last=$(jq -r '.last_event_seq' /tmp/status.json)
    maxseq=$(cat /cmd/maxseq 2>/dev/null || echo 0)
    verdict=ok
    [ "$missing" = 0 ] || verdict=fail
    [ "$last" -ge "$maxseq" ] || verdict=fail
    say "CHECK $verdict boot=$BOOT acked=$acked missing=$missing present=$(wc -l < /tmp/present.txt) last_event_seq=$last max_seq_seen=$maxseq"
    comm -23 /tmp/acked.txt /tmp/present.txt | sed 's/^/PC missing: /'
else
    say "CHECK ok boot=$BOOT first boot"
fi

if [ "$MODE" != cut ]; then
    ctl daemon status -o json | jq -c '{last_event_seq, counts}' | sed 's/^/PC status: /'
    kill -TERM "$ORCHD"; wait "$ORCHD"
    umount /state
    say "DONE"
    off o
fi

# ---------------------------------------------------------------- load, then a hard reset without sync
# Every published event's seq goes out as it arrives.
ctl watch -o json 2>/dev/null | jq --unbuffered -r '"SEQ \(.seq)"' &
cat > /tmp/plan.sh <<'EOF'
for i in 1 2 3; do
  echo "::orch-checkpoint::{\"i\":$i,\"pad\":\"$(head -c 2000 /dev/zero | tr '\0' c)\"}"
  head -c 20000 /dev/zero | tr '\0' o; echo
  sleep 0.$((RANDOM % 3))
done
EOF
submitter() {
    local n=0 id
    while :; do
        n=$((n + 1))
        id=$(ctl submit --name "pc-$BOOT-$1-$n" -- bash /tmp/plan.sh 2>/tmp/submit-$1.err | head -n1)
        case "$id" in
            01*) echo "ACK $id"; echo "$id" >> /tmp/acks ;;
            *) say "submit failed: $(head -c 300 /tmp/submit-$1.err)"; sleep 0.5 ;;
        esac
    done
}
submitter a &
submitter b &
# Cut once a few submits were acknowledged (1 to 3), a moment later: more submits,
# checkpoints and attempt ends are in flight then.
want=$((1 + RANDOM % 3))
for _ in $(seq 1 600); do
    [ "$(wc -l < /tmp/acks 2>/dev/null || echo 0)" -ge "$want" ] && break
    sleep 0.1
done
sleep "0.$((RANDOM % 10))"
say "CUT boot=$BOOT"
# Not `sync`: only the serial line is let out before the reset.
sleep 0.2
echo b > /proc/sysrq-trigger
sleep 10

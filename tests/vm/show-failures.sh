#!/bin/bash
# tests/vm/show-failures.sh OUT: prints what a failed VM run left in OUT (the guest's out/
# directory): each failed check's transcript and the end of orchd's journal, so that a CI
# log that keeps only stdout still says why a check failed.
out=${1:?usage: show-failures.sh OUT}
[ -f "$out/failures.txt" ] || exit 0
sed -n 's/^FAIL \([^:]*\):.*/\1/p' "$out/failures.txt" | sort -u | while read -r name; do
    for f in "$out"/checks/*-"$name".txt; do
        [ -f "$f" ] || continue
        echo "=============== $(basename "$f") (last 80 lines)"
        tail -n 80 "$f"
    done
done
if [ -f "$out/journal-orchd.txt" ]; then
    echo "=============== journal-orchd.txt (last 120 lines)"
    tail -n 120 "$out/journal-orchd.txt"
fi

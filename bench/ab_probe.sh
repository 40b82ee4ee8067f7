#!/usr/bin/env bash
# Interleaved A/B of two echo_probe builds (for example the last commit
# before a change and the change): every (shape, backend) is run REPEATS
# times, the two builds taking turns, so a busy moment of a shared machine
# hits both alike. Prints the median us per round trip of each build, the
# min..max spread, and the ratio new/old. The rig is in-process: server and
# clients share one loop (see echo_probe), so this compares the engine's own
# cost per round trip, not a network setup.
#
#   bench/ab_probe.sh OLD_ECHO_PROBE NEW_ECHO_PROBE [REPEATS]
#
# Build the old one from a worktree, e.g.:
#   git worktree add /tmp/old <commit> && (cd /tmp/old && cargo build --release -p uvring-bench --bin echo_probe)
set -euo pipefail
old=$1
new=$2
repeats=${3:-5}
shapes=("1 64 100000" "64 64 3000" "64 16384 300")
printf '%-22s %22s %22s %8s\n' "shape" "old us (min..max)" "new us (min..max)" "new/old"
for shape in "${shapes[@]}"; do
  read -r conns size rounds <<<"$shape"
  for backend in epoll io_uring; do
    o=()
    n=()
    for ((i = 0; i < repeats; i++)); do
      # Alternate which build goes first in each turn.
      if ((i % 2 == 0)); then order=(old new); else order=(new old); fi
      for who in "${order[@]}"; do
        bin=$old
        [[ $who == new ]] && bin=$new
        us=$("$bin" "$backend" "$conns" "$size" "$rounds" | sed -E 's/.*\(([0-9.]+) us each\).*/\1/')
        if [[ $who == old ]]; then o+=("$us"); else n+=("$us"); fi
      done
    done
    stats() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f (%.2f..%.2f)", m, a[1], a[NR]}'; }
    med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
    so=$(stats "${o[@]}")
    sn=$(stats "${n[@]}")
    ratio=$(awk -v a="$(med "${n[@]}")" -v b="$(med "${o[@]}")" 'BEGIN {printf "%.3f", a/b}')
    printf '%-22s %22s %22s %8s\n' "$backend ${conns}c/${size}B" "$so" "$sn" "$ratio"
  done
done

#!/usr/bin/env bash
# Reprise's simulator beside turmoil and madsim: the same three workloads
# (benches/peers/src/spec.rs) on all three, interleaved, then a table of medians.
#
#   bash benches/peers/run.sh            # 9 repetitions of the full workloads
#   REPS=3 bash benches/peers/run.sh     # fewer
#   SMOKE=1 REPS=1 bash benches/peers/run.sh   # tiny workloads: does everything still run?
#   INSTRUCTIONS=1 bash benches/peers/run.sh    # also count instructions (valgrind)
#
# Builds two release binaries: `peers` (Reprise and turmoil, a workspace package) and
# `peers-madsim` (its own workspace under `--cfg madsim`, in target/madsim so that the
# cfg does not rebuild the main target directory). Each repetition runs every workload on
# every simulator, each in a fresh process with one untimed warm-up run, the simulators'
# order reversed every other repetition so that a drift in machine load favours none of
# them. The figure is thread CPU time per operation (see `spec::bench`). With
# INSTRUCTIONS=1, each workload also runs once per simulator under callgrind, counting
# only the simulator's run function: instructions do not depend on the machine's load.
set -euo pipefail
cd "$(dirname "$0")/../.."

REPS="${REPS:-9}"
EXTRA=()
[[ -n "${SMOKE:-}" ]] && EXTRA+=(--smoke)

echo "building (release) ..." >&2
cargo build --release --locked -q -p reprise-peers
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$PWD/target/madsim" \
  cargo build --release --locked -q --manifest-path benches/peers-madsim/Cargo.toml
peers=target/release/peers
madsim=target/madsim/release/peers-madsim

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

run() { # run SIM WORKLOAD REP
  local line
  if [[ "$1" == madsim ]]; then
    line="$("$madsim" --workload "$2" --reps 1 --warmup 1 "${EXTRA[@]}" | grep ' rep=')"
  else
    line="$("$peers" --sim "$1" --workload "$2" --reps 1 --warmup 1 "${EXTRA[@]}" | grep ' rep=')"
  fi
  echo "${line/rep=1/rep=$3}" | tee -a "$out" >&2
}

for ((rep = 1; rep <= REPS; rep++)); do
  if ((rep % 2)); then order=(reprise turmoil madsim); else order=(madsim turmoil reprise); fi
  for workload in rtt sleeps loss; do
    for sim in "${order[@]}"; do
      run "$sim" "$workload" "$rep"
    done
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# Medians of us_per_op per (workload, sim), then the table.
awk '
  {
    for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
    key = f["workload"] SUBSEP f["sim"]
    n[key]++; v[key, n[key]] = f["us_per_op"]
  }
  function median(key,   i, j, t, m, a) {
    m = n[key]
    for (i = 1; i <= m; i++) a[i] = v[key, i]
    for (i = 2; i <= m; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
  }
  END {
    split("rtt sleeps loss", ws, " ")
    printf "%-8s %5s %14s %14s %14s %16s %15s\n", "workload", "reps", "reprise us/op", "turmoil us/op", "madsim us/op", "turmoil/reprise", "madsim/reprise"
    for (k = 1; k <= 3; k++) {
      w = ws[k]
      r = median(w SUBSEP "reprise"); t = median(w SUBSEP "turmoil"); s = median(w SUBSEP "madsim")
      printf "%-8s %5d %14.3f %14.3f %14.3f %15.1fx %14.1fx\n", w, n[w SUBSEP "reprise"], r, t, s, t / r, s / r
    }
  }
' "$out"

[[ -z "${INSTRUCTIONS:-}" ]] && exit 0
command -v valgrind >/dev/null || { echo "INSTRUCTIONS=1 needs valgrind" >&2; exit 1; }
echo >&2
echo "counting instructions (callgrind, one run each) ..." >&2
declare -A ir
for workload in rtt sleeps loss; do
  for sim in reprise turmoil madsim; do
    if [[ "$sim" == madsim ]]; then
      cmd=("$madsim" --workload "$workload")
      fn="peers_madsim::run"
    else
      cmd=("$peers" --sim "$sim" --workload "$workload")
      fn="reprise_peers::on_$sim::run"
    fi
    ir[$workload,$sim]="$(valgrind --tool=callgrind --callgrind-out-file=/dev/null \
      --collect-atstart=no "--toggle-collect=$fn" "${cmd[@]}" --reps 1 --warmup 0 "${EXTRA[@]}" 2>&1 |
      awk '/Collected :/ { print $4 }')"
  done
done
ops() { # ops WORKLOAD: the operation counts of spec::Sizes
  if [[ -n "${SMOKE:-}" ]]; then
    case "$1" in rtt) echo 200 ;; sleeps) echo 500 ;; loss) echo 200 ;; esac
  else
    case "$1" in rtt) echo 10000 ;; sleeps) echo 10000 ;; loss) echo 1000 ;; esac
  fi
}
printf "%-8s %16s %16s %16s %16s %15s\n" workload "reprise instr/op" "turmoil instr/op" "madsim instr/op" turmoil/reprise madsim/reprise
for workload in rtt sleeps loss; do
  n="$(ops "$workload")"
  awk -v w="$workload" -v n="$n" -v r="${ir[$workload,reprise]}" -v t="${ir[$workload,turmoil]}" \
    -v s="${ir[$workload,madsim]}" \
    'BEGIN { printf "%-8s %16.0f %16.0f %16.0f %15.1fx %14.1fx\n", w, r / n, t / n, s / n, t / r, s / r }'
done

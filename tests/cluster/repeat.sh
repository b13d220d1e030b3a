#!/usr/bin/env bash
# Runs the cluster fault scenarios N times each, each run with its own seed, and prints a Markdown table of the runs: seed, outcome, time, the victim,
# how fast its partitions answered 503, how fast the links came back, the requests and
# what the checker found. Bugs in this area are probabilistic: CI runs each scenario
# once, this runs them many times (docs/cluster-testing.md).
#
#   tests/cluster/repeat.sh [-n RUNS] [-s FIRST_SEED] [-o DIR] [SCENARIO...]
#
# SCENARIO       step 1: kill (T2), partition (T3); step 2, replicated over etcd:
#                repl-kill (T2), repl-partition (T3), repl-quorum (T4), repl-rebalance
#                (preferred leaders come back), repl-dlq (dead letters replicated,
#                listed once, through a failover). Default: kill
#                partition.
# -n RUNS        runs per scenario (default 10)
# -s FIRST_SEED  seeds FIRST_SEED, FIRST_SEED+1, ... (default: random ones); a failed
#                run is replayed with NERVE_SCENARIO_SEED=<its seed>
# -o DIR         where each run's output and results.jsonl go (default: a temp dir)
# NERVE_BIN      the nerve binary (default: build/runtime/nerve of this tree)
# NERVE_ETCD     the etcd binary of the repl-* scenarios (default: /usr/bin/etcd)
#
# Exit status: 0 when every run passed (or skipped), 1 otherwise.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
runs=10
first_seed=""
out=""
while getopts "n:s:o:h" opt; do
  case "$opt" in
    n) runs="$OPTARG" ;;
    s) first_seed="$OPTARG" ;;
    o) out="$OPTARG" ;;
    *) sed -n '2,/^[^#]/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(kill partition)
module_of() {
  case "$1" in
    kill|partition) echo "test_${1}_scenario" ;;
    repl-kill|repl-partition|repl-quorum|repl-rebalance|repl-dlq) echo "test_replicated_${1#repl-}" ;;
    *) echo "" ;;
  esac
}
for s in "${scenarios[@]}"; do
  m="$(module_of "$s")"
  [ -n "$m" ] && [ -f "$here/$m.py" ] || {
    echo "repeat.sh: no scenario '$s' (kill, partition, repl-kill, repl-partition, repl-quorum, repl-rebalance, repl-dlq)" >&2
    exit 2
  }
done
export NERVE_BIN="${NERVE_BIN:-$root/build/runtime/nerve}"
[ -x "$NERVE_BIN" ] || { echo "repeat.sh: $NERVE_BIN is not built (make build, or set NERVE_BIN)" >&2; exit 2; }
out="${out:-$(mktemp -d /tmp/nerve-repeat-XXXXXX)}"
mkdir -p "$out"
results="$out/results.jsonl"
: > "$results"
python="$(command -v /usr/bin/python3 || command -v python3)"

failed=0
for s in "${scenarios[@]}"; do
  for i in $(seq 1 "$runs"); do
    if [ -n "$first_seed" ]; then
      seed=$((first_seed + i - 1))
    else
      seed=$(( (RANDOM << 15 | RANDOM) + 1 ))
    fi
    log="$out/$s-$i-seed$seed.log"
    printf '[repeat] %s run %d/%d, seed %d ... ' "$s" "$i" "$runs" "$seed" >&2
    if (cd "$here" && NERVE_SCENARIO_SEED="$seed" NERVE_SCENARIO_RESULTS="$results" \
          PYTHONDONTWRITEBYTECODE=1 "$python" -m unittest -v "$(module_of "$s")") >"$log" 2>&1; then
      if grep -q '^OK (skipped=' "$log"; then echo "skipped ($(grep -o "skipped [\"'].*" "$log" | head -1))" >&2; else echo "pass" >&2; fi
    else
      failed=$((failed + 1))
      echo "FAIL (see $log)" >&2
    fi
  done
done

"$python" - "$results" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
def cell(r, *keys):
    for k in keys:
        if k in r:
            return r[k]
    return ""
print("| scenario | seed | outcome | s | victim (partitions) | 503 / failover worst ms "
      "| fault s | relinked / rejoined s | requests | 503 indeterminate | events ok/fail/info "
      "| checker |")
print("|:--|--:|:--|--:|:--|--:|--:|--:|--:|--:|--:|:--|")
for r in rows:
    ev = r.get("events", {})
    bad = [k for k, v in (r.get("checker") or {}).items() if v]
    checker = ("FAIL: " + ", ".join(bad)) if bad else ("valid" if r.get("checker") else "-")
    if r.get("outcome") == "FAIL":
        checker += " / " + r.get("error", "")[:120].replace("|", "/")
    print(f"| {r['scenario']} | {r['seed']} | {r.get('outcome')} | {r.get('seconds', '')} "
          f"| {cell(r, 'victim')} ({cell(r, 'victim_partitions')}) "
          f"| {cell(r, 'dead_503_worst_ms', 'cut_503_worst_ms', 'failover_worst_ms', 'resumed_worst_ms')} "
          f"| {cell(r, 'outage_s', 'cut_s')} "
          f"| {cell(r, 'relinked_s', 'rejoined_s')} | {cell(r, 'requests')} "
          f"| {r.get('statuses', {}).get('503-indeterminate', 0)} "
          f"| {ev.get('ok', '')}/{ev.get('fail', '')}/{ev.get('info', '')} | {checker} |")
EOF
echo "[repeat] $(wc -l < "$results") runs, $failed failed; logs and results.jsonl in $out" >&2
[ "$failed" -eq 0 ]

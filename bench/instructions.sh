#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind (callgrind), for meshwork-proxy and another build of it.
#
# Throughput on this VM drifts by several percent between runs and even between two copies of one binary in one run
# (docs/benchmarks.md, "A/A run"), which is too coarse to see a 1-2% cost. Instruction counts are not: the same
# binary given the same requests executes nearly the same instructions. This script runs each proxy under callgrind
# (one worker thread, as bench/run.sh does), sends a warm-up, zeroes the counters, sends exactly N requests at a
# fixed open-loop rate through it to the shared harness's origin, and reports the proxy's user-space instructions
# per request. What it does not see: kernel time (the syscalls per request are the same for builds that do the same
# socket I/O) and cache or branch effects.
#
#   bench/instructions.sh --against /path/to/other/meshwork-proxy [--rounds 3] [--requests 6000] [--rate 300]
#
# Needs valgrind (apt-get install valgrind) and the harness's origin and load generator built
# (cd ../shared/bench && cargo build --release -p bench-origin -p bench-loadgen).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED_BENCH="${MESHWORK_SHARED_BENCH:-$ROOT/../shared/bench}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
OTHER="" ROUNDS=3 REQUESTS=6000 RATE=300
while [[ $# -gt 0 ]]; do
  case "$1" in
    --against) OTHER="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --requests) REQUESTS="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    *) echo "instructions.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ -x "$OTHER" ]] || { echo "instructions.sh: --against BIN (an executable meshwork-proxy) is required" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "instructions.sh: valgrind is not installed" >&2; exit 2; }
for b in bench-origin bench-loadgen; do
  [[ -x "$SHARED_BENCH/target/release/$b" ]] || { echo "instructions.sh: build $b in $SHARED_BENCH first" >&2; exit 2; }
done
cargo build --profile bench-lto --quiet --manifest-path "$ROOT/Cargo.toml" -p meshwork-proxy --bin meshwork-proxy
OURS="$TARGET/bench-lto/meshwork-proxy"
OUT="$(mktemp -d /tmp/meshwork-instructions.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

taskset -c 0 "$SHARED_BENCH/target/release/bench-origin" --listen 127.0.0.1:18080 >"$OUT/origin.log" 2>&1 &
PIDS+=($!)

# wait_ready URL SECONDS: poll until the URL answers 200, or fail.
wait_ready() {
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null --max-time 2 "$1"; do
    (( SECONDS < deadline )) || { echo "instructions.sh: $1 not ready after $2 s" >&2; return 1; }
    sleep 1
  done
}

# measure NAME BIN ROUND: prints "NAME ROUND requests instructions".
measure() {
  local name="$1" bin="$2" round="$3" cg="$OUT/$1-$3.callgrind"
  env MESHWORK_LOG=off taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$cg" \
    "$bin" --workers 1 --manifests "$ROOT/bench/manifests" --admin 127.0.0.1:18119 >"$OUT/$name-$round.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_ready http://127.0.0.1:18119/ready 300
  wait_ready http://127.0.0.1:18110/ 60
  taskset -c 0 "$SHARED_BENCH/target/release/bench-loadgen" --url http://127.0.0.1:18110/ --rate "$RATE" \
    --duration 5 --warmup 0 --connections 50 >/dev/null
  callgrind_control -z "$pid" >/dev/null
  local secs=$(( REQUESTS / RATE ))
  taskset -c 0 "$SHARED_BENCH/target/release/bench-loadgen" --url http://127.0.0.1:18110/ --rate "$RATE" \
    --duration "$secs" --warmup 0 --connections 50 >"$OUT/$name-$round.json"
  callgrind_control -d "$pid" >/dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$OUT/$name-$round.json" "$cg" "$name" "$round" <<'EOF'
import glob, json, sys
load = json.load(open(sys.argv[1]))
ok = load["ok_2xx"]
if ok != load["scheduled_total"] or load["errors"] or load["non_2xx"]:
    sys.exit(f"instructions.sh: {sys.argv[3]} round {sys.argv[4]}: not every request succeeded: {load}")
# The dump made after zeroing is the file with a ".N" suffix; its "summary:"/"totals:" line is the Ir total.
dumps = [f for f in glob.glob(sys.argv[2] + ".*") if not f.endswith(".log")]
total = 0
for f in dumps:
    for line in open(f):
        if line.startswith(("summary:", "totals:")):
            total = max(total, int(line.split()[1]))
            break
print(f"{sys.argv[3]} {sys.argv[4]} {ok} {total} {total / ok:.0f}")
EOF
}

echo "name round requests instructions per-request"
for round in $(seq 1 "$ROUNDS"); do
  measure meshwork "$OURS" "$round"
  measure other "$OTHER" "$round"
done | tee "$OUT/results.txt"
echo "raw data: $OUT"

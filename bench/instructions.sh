#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind (callgrind).
#
# Throughput on this VM drifts by several percent between runs and even between two copies of one binary in one run
# (docs/benchmarks.md, "A/A run"), which is too coarse to see a 1-2% cost. Instruction counts are not: the same
# binary given the same requests executes nearly the same instructions. This script runs proxies under callgrind
# (one worker thread each, as bench/run.sh does), sends a warm-up, zeroes the counters, sends exactly N requests at
# a fixed open-loop rate through them to the shared harness's origin, and reports the proxies' user-space
# instructions per request. What it does not see: kernel time (compare syscalls per request with `strace -c`; they
# are the same for builds that do the same socket I/O) and cache or branch effects.
#
#   bench/instructions.sh --against /path/to/other/meshwork-proxy [--rounds 3] [--requests 6000] [--rate 300]
#                         [--other-args "--default-request-timeout 0s"]   # arguments for the other build only
#                         [--other-manifests bench/manifests-accesslog]   # manifests for the other build only
#       # meshwork-proxy as a plain gateway (bench/manifests), this tree's build against another build
#   bench/instructions.sh --hop [--rounds 3] [--requests 6000] [--rate 300]
#       # one mesh hop (bench/mesh-hop.sh: client proxy -> sidecar -> origin), plaintext against mutual TLS; the
#       # count is both proxies' instructions per request
#
# MESHWORK_BENCH_BIN=DIR uses the binaries in DIR instead of building this tree's.
# Needs valgrind (apt-get install valgrind) and the harness's origin and load generator built
# (cd ../shared/bench && cargo build --release -p bench-origin -p bench-loadgen).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED_BENCH="${MESHWORK_SHARED_BENCH:-$ROOT/../shared/bench}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
OTHER="" OTHER_ARGS="" OTHER_MANIFESTS="$ROOT/bench/manifests" HOP=0 ROUNDS=3 REQUESTS=6000 RATE=300
while [[ $# -gt 0 ]]; do
  case "$1" in
    --against) OTHER="$2"; shift 2 ;;
    --other-args) OTHER_ARGS="$2"; shift 2 ;;
    --other-manifests) OTHER_MANIFESTS="$(cd "$2" && pwd)"; shift 2 ;;
    --hop) HOP=1; shift ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --requests) REQUESTS="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    *) echo "instructions.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ -x "$OTHER" || "$HOP" == 1 ]] || {
  echo "instructions.sh: --against BIN (an executable meshwork-proxy) or --hop is required" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "instructions.sh: valgrind is not installed" >&2; exit 2; }
for b in bench-origin bench-loadgen; do
  [[ -x "$SHARED_BENCH/target/release/$b" ]] || { echo "instructions.sh: build $b in $SHARED_BENCH first" >&2; exit 2; }
done
# MESHWORK_BENCH_BIN: a directory holding meshwork-proxy (and meshwork) already built, instead of this tree's.
BIN="${MESHWORK_BENCH_BIN:-}"
if [[ -z "$BIN" ]]; then
  cargo build --profile bench-lto --quiet --manifest-path "$ROOT/Cargo.toml" -p meshwork-proxy --bin meshwork-proxy
  if (( HOP == 1 )); then
    cargo build --profile bench-lto --quiet --manifest-path "$ROOT/Cargo.toml" -p meshwork-control --bin meshwork
  fi
  BIN="$TARGET/bench-lto"
fi
export MESHWORK_BENCH_BIN="$BIN"
OURS="$BIN/meshwork-proxy"
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

# send NAME ROUND PID...: a warm-up, then the PIDs' counters zeroed, exactly REQUESTS requests at RATE to
# 127.0.0.1:18110, and the counters dumped. The load generator's report goes to $OUT/NAME-ROUND.json.
send() {
  local name="$1" round="$2"; shift 2
  taskset -c 0 "$SHARED_BENCH/target/release/bench-loadgen" --url http://127.0.0.1:18110/ --rate "$RATE" \
    --duration 5 --warmup 0 --connections 50 >/dev/null
  for p in "$@"; do callgrind_control -z "$p" >/dev/null; done
  taskset -c 0 "$SHARED_BENCH/target/release/bench-loadgen" --url http://127.0.0.1:18110/ --rate "$RATE" \
    --duration $(( REQUESTS / RATE )) --warmup 0 --connections 50 >"$OUT/$name-$round.json"
  for p in "$@"; do callgrind_control -d "$p" >/dev/null; done
}

# report NAME ROUND CALLGRIND_FILE...: checks that every request succeeded and prints
# "NAME ROUND requests instructions per-request", the instructions summed over the given processes' dumps.
report() {
  python3 - "$OUT" "$@" <<'PY'
import glob, json, sys
out, name, rnd, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
load = json.load(open(f"{out}/{name}-{rnd}.json"))
ok = load["ok_2xx"]
if ok != load["scheduled_total"] or load["errors"] or load["non_2xx"]:
    sys.exit(f"instructions.sh: {name} round {rnd}: not every request succeeded: {load}")
total = 0
for cg in files:
    # The dump made after zeroing is the file with a ".N" suffix; its "summary:"/"totals:" line is the Ir total.
    dumps = glob.glob(cg + ".*")
    if len(dumps) != 1:
        sys.exit(f"instructions.sh: expected one dump for {cg}, found {dumps}")
    for line in open(dumps[0]):
        if line.startswith(("summary:", "totals:")):
            total += int(line.split()[1])
            break
print(f"{name} {rnd} {ok} {total} {total / ok:.0f}")
PY
}

# measure NAME BIN MANIFESTS ROUND [ARGS...]: one meshwork-proxy as a plain gateway under callgrind.
measure() {
  local name="$1" bin="$2" manifests="$3" round="$4" cg="$OUT/$1-$4.callgrind"
  shift 4
  env MESHWORK_LOG=off taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$cg" \
    "$bin" --workers 1 --manifests "$manifests" --admin 127.0.0.1:18119 "$@" >"$OUT/$name-$round.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_ready http://127.0.0.1:18119/ready 300
  wait_ready http://127.0.0.1:18110/ 60
  send "$name" "$round" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  report "$name" "$round" "$cg"
}

# measure_hop MODE ROUND: one mesh hop (plain or mtls) with both proxies under callgrind.
measure_hop() {
  local mode="$1" round="$2" state="$OUT/hop-$1-$2.state" base="$OUT/$1-$2"
  MESHWORK_BENCH_WRAP="valgrind --tool=callgrind --callgrind-out-file=$base-{name}.callgrind" \
    "$ROOT/bench/mesh-hop.sh" "$mode" 18110 18200 "$state" >"$base.log" 2>&1 &
  local hop=$!
  PIDS+=("$hop")
  for _ in $(seq 600); do [[ -s "$state" ]] && break; sleep 0.1; done
  local sidecar gateway
  sidecar="$(sed -n 's/.*sidecar=\([0-9]*\).*/\1/p' "$state")"
  gateway="$(sed -n 's/.*gateway=\([0-9]*\).*/\1/p' "$state")"
  wait_ready http://127.0.0.1:18110/ 300
  send "$mode" "$round" "$sidecar" "$gateway"
  kill -TERM "$hop"; wait "$hop" 2>/dev/null || true
  report "$mode" "$round" "$base-sidecar.callgrind" "$base-gateway.callgrind"
}

echo "name round requests instructions per-request"
for round in $(seq 1 "$ROUNDS"); do
  if (( HOP == 1 )); then
    measure_hop plain "$round"
    measure_hop mtls "$round"
  else
    measure meshwork "$OURS" "$ROOT/bench/manifests" "$round"
    # shellcheck disable=SC2086 # OTHER_ARGS is a list of arguments
    measure other "$OTHER" "$OTHER_MANIFESTS" "$round" $OTHER_ARGS
  fi
done | tee "$OUT/results.txt"
echo "raw data: $OUT"

#!/usr/bin/env bash
# Retry-storm run: an upstream failing 50% of requests (meshwork-demo echo, /flaky/50), a constant offered load
# (the shared harness's open-loop bench-loadgen), and two meshwork gateways retrying 5xx up to 3 times, one with
# the default retry budget (20% + 10/s) and one without. Reports how many requests the upstream received per
# offered request, and the success rate, for each.
#
#   bench/retry-storm.sh [RATE] [SECONDS]      # default 400 req/s for 10 s
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED_BENCH="${MESHWORK_SHARED_BENCH:-$ROOT/../shared/bench}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
RATE="${1:-400}"
SECS="${2:-10}"
LOADGEN="$SHARED_BENCH/target/release/bench-loadgen"
cargo build --profile bench-lto --quiet --manifest-path "$ROOT/Cargo.toml" -p meshwork-proxy --bins
[[ -x "$LOADGEN" ]] || cargo build --release --quiet --manifest-path "$SHARED_BENCH/Cargo.toml" -p bench-loadgen
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
MESHWORK_LOG=off "$TARGET/bench-lto/meshwork-demo" echo --port 18140 & pids+=($!)
for mode in on off; do
  port=$([[ $mode == on ]] && echo 18130 || echo 18131)
  MESHWORK_LOG=off "$TARGET/bench-lto/meshwork-proxy" --manifests "$ROOT/bench/storm-budget-$mode" --workers 1 \
    --admin 127.0.0.1:$((port + 20)) & pids+=($!)
done
for port in 18140 18130 18131; do
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done
count() { curl -s http://127.0.0.1:18140/_demo/count | sed 's/.*"requests":\([0-9]*\).*/\1/'; }
echo "| retry budget | offered req/s | offered | upstream requests | upstream / offered | retries sent | budget refusals | success |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for mode in on off; do
  port=$([[ $mode == on ]] && echo 18130 || echo 18131)
  before=$(count)
  out=$("$LOADGEN" --url "http://127.0.0.1:$port/flaky/50" --rate "$RATE" --duration "$SECS" --warmup 0 --connections 50 --timeout 5)
  after=$(count)
  metrics=$(curl -s "http://127.0.0.1:$((port + 20))/metrics")
  m() { echo "$metrics" | grep "^$1{cluster=\"service/default/upstream\"}" | awk '{print $2}'; }
  offered=$(m meshwork_upstream_requests_total)
  upstream=$((after - before))
  ok=$(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["ok_2xx"])' 2>/dev/null || echo "?")
  python3 - "$mode" "$RATE" "$offered" "$upstream" "$(m meshwork_retries_total)" "$(m meshwork_retry_budget_exhausted_total)" "$ok" <<'PY'
import sys
mode, rate, offered, upstream, retries, refused, ok = sys.argv[1:]
offered, upstream = int(offered), int(upstream)
succ = f"{int(ok) / offered:.1%}" if ok.isdigit() and offered else ok
print(f"| {mode} | {rate} | {offered} | {upstream} | {upstream / offered:.2f} | {retries} | {refused} | {succ} |")
PY
  echo "$out" > "/tmp/retry-storm-$mode.json"
done

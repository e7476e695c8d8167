#!/usr/bin/env bash
# Side-by-side benchmark: meshwork-proxy (standalone gateway, one worker thread, pinned to one core) next to nginx,
# HAProxy, Pingora and a naive hyper proxy, in one run of the shared harness (../shared/bench, see its README).
#
#   bench/run.sh                 # full run (~7 min; first time also builds the harness, ~2 min)
#   bench/run.sh --quick         # smoke test
#   bench/run.sh --repeat 3      # three runs and a spread table
#   bench/run.sh --wasm          # meshwork-proxy with 0, 1 and 5 header-only Wasm filters (meshwork-plugin-sdk), 1 such
#                                # filter written with the official proxy-wasm crate, and nginx, in one run
#   bench/run.sh --resilience    # meshwork-proxy with no policy and with a TrafficPolicy using every feature (and nginx)
#   bench/run.sh --observability # all off, access log on, tracing at 1% and 100% (live OTLP receiver), and nginx
#   bench/run.sh --against BIN   # meshwork-proxy next to another meshwork-proxy binary BIN (e.g. built from an older
#                                # commit: what a change costs) and nginx, in one run
#   (bench/retry-storm.sh: upstream load under a 50% failing upstream, retry budget on and off)
# Any option is passed on to ../shared/bench/run.sh. Results land in ../shared/bench/results/<timestamp>/.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED_BENCH="${MESHWORK_SHARED_BENCH:-$ROOT/../shared/bench}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ -x "$SHARED_BENCH/run.sh" ]] || { echo "bench/run.sh: no harness at $SHARED_BENCH (set MESHWORK_SHARED_BENCH)" >&2; exit 2; }
cargo build --profile bench-lto --quiet --manifest-path "$ROOT/Cargo.toml" -p meshwork-proxy --bin meshwork-proxy
PROXY="env MESHWORK_LOG=off $TARGET/bench-lto/meshwork-proxy --workers 1 --wasm-cache-dir $TARGET/bench-wasm-cache"
if [[ "${1:-}" == "--wasm" ]]; then
  shift
  cargo build --release --quiet --target wasm32-wasip1 --manifest-path "$ROOT/plugins/Cargo.toml"
  exec "$SHARED_BENCH/run.sh" --only nginx,meshwork,meshwork-wasm1,meshwork-wasm1pw,meshwork-wasm5 \
    --extra "name=meshwork port=18110 cmd=$PROXY --manifests $ROOT/bench/manifests --admin 127.0.0.1:18119" \
    --extra "name=meshwork-wasm1 port=18111 cmd=$PROXY --manifests $ROOT/bench/manifests-wasm1 --admin 127.0.0.1:18120" \
    --extra "name=meshwork-wasm1pw port=18113 cmd=$PROXY --manifests $ROOT/bench/manifests-wasm1-proxywasm --admin 127.0.0.1:18123" \
    --extra "name=meshwork-wasm5 port=18115 cmd=$PROXY --manifests $ROOT/bench/manifests-wasm5 --admin 127.0.0.1:18121" \
    "$@"
fi
if [[ "${1:-}" == "--resilience" ]]; then
  shift
  exec "$SHARED_BENCH/run.sh" --only nginx,meshwork,meshwork-policy \
    --extra "name=meshwork port=18110 cmd=$PROXY --manifests $ROOT/bench/manifests --admin 127.0.0.1:18119" \
    --extra "name=meshwork-policy port=18112 cmd=$PROXY --manifests $ROOT/bench/manifests-policy --admin 127.0.0.1:18122" \
    "$@"
fi
if [[ "${1:-}" == "--observability" ]]; then
  # Issue 13: all off (metrics only: they are always on), access log on, tracing at 1% and at 100% with a live
  # OTLP/HTTP receiver (bench/otlp-sink.py), next to nginx. Each variant on its own port.
  shift
  OBS_DIR="$(mktemp -d)"
  for v in accesslog:18116 trace1:18117 trace100:18118; do
    mkdir -p "$OBS_DIR/${v%%:*}"
    cp "$ROOT/bench/manifests-${v%%:*}/mesh.yaml" "$OBS_DIR/${v%%:*}/"
    sed "s/port: 18110/port: ${v##*:}/" "$ROOT/bench/manifests/bench.yaml" > "$OBS_DIR/${v%%:*}/bench.yaml"
  done
  python3 "$ROOT/bench/otlp-sink.py" 18130 &
  SINK=$!
  trap 'kill $SINK 2>/dev/null || true' EXIT
  "$SHARED_BENCH/run.sh" --only nginx,meshwork,meshwork-accesslog,meshwork-trace1,meshwork-trace100 \
    --extra "name=meshwork port=18110 cmd=$PROXY --manifests $ROOT/bench/manifests --admin 127.0.0.1:18119" \
    --extra "name=meshwork-accesslog port=18116 cmd=$PROXY --manifests $OBS_DIR/accesslog --admin 127.0.0.1:18126" \
    --extra "name=meshwork-trace1 port=18117 cmd=$PROXY --manifests $OBS_DIR/trace1 --admin 127.0.0.1:18127" \
    --extra "name=meshwork-trace100 port=18118 cmd=$PROXY --manifests $OBS_DIR/trace100 --admin 127.0.0.1:18128" \
    "$@"
  exit $?
fi
if [[ "${1:-}" == "--against" ]]; then
  OTHER="$2"; shift 2
  OTHER_DIR="$(mktemp -d)"
  sed 's/port: 18110/port: 18111/' "$ROOT/bench/manifests/bench.yaml" > "$OTHER_DIR/bench.yaml"
  exec "$SHARED_BENCH/run.sh" --only nginx,meshwork,meshwork-before \
    --extra "name=meshwork port=18110 cmd=$PROXY --manifests $ROOT/bench/manifests --admin 127.0.0.1:18119" \
    --extra "name=meshwork-before port=18111 cmd=env MESHWORK_LOG=off $OTHER --workers 1 --manifests $OTHER_DIR --admin 127.0.0.1:18120" \
    "$@"
fi
exec "$SHARED_BENCH/run.sh" \
  --extra "name=meshwork port=18110 cmd=env MESHWORK_LOG=off $TARGET/bench-lto/meshwork-proxy --manifests $ROOT/bench/manifests --workers 1 --admin 127.0.0.1:18119" \
  "$@"

#!/usr/bin/env bash
# Side-by-side benchmark: meshwork-proxy (standalone gateway, one worker thread, pinned to one core) next to nginx,
# HAProxy, Pingora and a naive hyper proxy, in one run of the shared harness (../shared/bench, see its README).
#
#   bench/run.sh                 # full run (~7 min; first time also builds the harness, ~2 min)
#   bench/run.sh --quick         # smoke test
#   bench/run.sh --repeat 3      # three runs and a spread table
# Any option is passed on to ../shared/bench/run.sh. Results land in ../shared/bench/results/<timestamp>/.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED_BENCH="${MESHWORK_SHARED_BENCH:-$ROOT/../shared/bench}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ -x "$SHARED_BENCH/run.sh" ]] || { echo "bench/run.sh: no harness at $SHARED_BENCH (set MESHWORK_SHARED_BENCH)" >&2; exit 2; }
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" -p meshwork-proxy --bin meshwork-proxy
exec "$SHARED_BENCH/run.sh" \
  --extra "name=meshwork port=18110 cmd=env MESHWORK_LOG=off $TARGET/release/meshwork-proxy --manifests $ROOT/bench/manifests --workers 1 --admin 127.0.0.1:18119" \
  "$@"

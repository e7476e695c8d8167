#!/usr/bin/env bash
# One mesh hop for the benchmark harness, in the foreground: a client-side proxy on 127.0.0.1:PORT -> the origin's
# sidecar (inbound 127.0.0.1:BASE+1) -> the harness's origin (127.0.0.1:18080), both meshwork-proxy with one
# worker, with a control plane that certifies them (bootstrap tokens, 24 h certificates).
#
#   bench/mesh-hop.sh plain|mtls PORT BASE [STATE_FILE]
#
# plain: Mesh spec.mtls.mode DISABLED (both proxies still hold certificates; the hop is plaintext).
# mtls:  Mesh spec.mtls.mode STRICT (the hop is mutual TLS 1.3, pooled, with the SPIFFE ID checked).
# Ports used: PORT (the hop's entry), BASE (control plane), BASE+1 (sidecar inbound), BASE+2 (sidecar outbound),
# BASE+3 / BASE+4 (admin of the client proxy / the sidecar).
#
# The client-side proxy runs as a gateway (a Gateway listener with one catch-all route to the origin service):
# the harness's load generators send `Host: 127.0.0.1:PORT`, and a sidecar's outbound listener routes by service
# name. Both run the same routed path -> upstream pool -> mTLS connector.
#
# The control plane is started detached (it is not in this script's process tree, so the harness's CPU and memory
# figures are the two proxies' alone) and stopped with the proxies. STATE_FILE, if given, receives the state
# directory (CA, for bench/tls-probe.py) and the PIDs: "state=DIR sidecar=PID gateway=PID".
# MESHWORK_BENCH_WRAP, if set, is a command prefix for both proxies (bench/instructions.sh --hop puts each under
# valgrind with it); "{name}" in it becomes "sidecar" or "gateway".
set -euo pipefail
MODE="$1"; PORT="$2"; BASE="$3"; STATE_FILE="${4:-}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${MESHWORK_BENCH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/bench-lto}"
case "$MODE" in plain) MTLS=DISABLED ;; mtls) MTLS=STRICT ;; *) echo "mode: plain or mtls" >&2; exit 2 ;; esac
DIR="$(mktemp -d -t meshwork-hop-XXXXXX)"
mkdir "$DIR/manifests"
cat > "$DIR/manifests/hop.yaml" <<EOF
apiVersion: meshwork.dev/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec: {mtls: {mode: $MTLS}}
---
apiVersion: meshwork.dev/v1alpha1
kind: Workload
metadata: {name: origin}
spec: {service: origin, command: "true"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: client}
spec: {listeners: [{name: http, port: $PORT}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: origin}
spec:
  parentRefs: [{name: client}]
  rules: [{backendRefs: [{name: origin}]}]
EOF
export MESHWORK_LOG="${MESHWORK_LOG:-off}"
# Detached: the subshell exits at once, so the control plane is re-parented and leaves this process tree.
( "$BIN/meshwork" control --listen "127.0.0.1:$BASE" --warmup 1s --manifests "$DIR/manifests" \
    >"$DIR/cp.log" 2>&1 & echo $! > "$DIR/cp.pid" )
CP="$(cat "$DIR/cp.pid")"
PIDS=()
stop() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  kill -TERM "$CP" 2>/dev/null || true
  rm -rf "$DIR"
}
trap 'stop; exit 0' TERM INT
trap stop EXIT
for _ in $(seq 200); do
  [[ -f "$DIR/manifests/.meshwork/ca.pem" && -f "$DIR/manifests/.meshwork/token.key" ]] && break
  sleep 0.05
done
token() { "$BIN/meshwork" token create --state-dir "$DIR/manifests/.meshwork" "$@"; }
SIDECAR_TOKEN="$(token --service origin --node origin-0)"
GATEWAY_TOKEN="$(token --gateway --service client --node client-0)"
WRAP="${MESHWORK_BENCH_WRAP:-}"
# shellcheck disable=SC2086 # WRAP is a command prefix, split into words on purpose
MESHWORK_BOOTSTRAP_TOKEN="$SIDECAR_TOKEN" ${WRAP//\{name\}/sidecar} "$BIN/meshwork-proxy" --workers 1 \
  --control-plane "http://127.0.0.1:$BASE" --role sidecar --service origin --node-id origin-0 \
  --inbound "127.0.0.1:$((BASE + 1))" --outbound "127.0.0.1:$((BASE + 2))" --app 127.0.0.1:18080 \
  --admin "127.0.0.1:$((BASE + 4))" &
PIDS+=($!)
# shellcheck disable=SC2086
MESHWORK_BOOTSTRAP_TOKEN="$GATEWAY_TOKEN" ${WRAP//\{name\}/gateway} "$BIN/meshwork-proxy" --workers 1 \
  --control-plane "http://127.0.0.1:$BASE" --role gateway --service client --node-id client-0 \
  --admin "127.0.0.1:$((BASE + 3))" &
PIDS+=($!)
[[ -n "$STATE_FILE" ]] && echo "state=$DIR/manifests/.meshwork sidecar=${PIDS[0]} gateway=${PIDS[1]}" > "$STATE_FILE"
wait

#!/usr/bin/env bash
# The mesh-hop mTLS benchmark (issue 12), side by side in one run of the shared harness (../shared/bench):
#
#   meshwork-hop-plain  client proxy -> origin's sidecar -> origin, meshwork, plaintext hop (mTLS DISABLED)
#   meshwork-hop-mtls   the same hop over mutual TLS 1.3 (STRICT), pooled
#   nginx-hop-tls       two nginx doing the same hop with TLS and client certificates (proxy_ssl_certificate)
#   nginx-hop-plain     the same two nginx, plaintext
#
# Each target is two proxies (bench/mesh-hop.sh, bench/nginx-hop.sh), both pinned to the proxy CPU, so the
# harness's CPU figures are for both proxies of the hop. Then, outside the harness (bench/tls-probe.py), the
# server side of each TLS hop: full handshakes per server CPU-second on fresh connections, and RSS per 1,000 idle
# mutual-TLS connections.
#
#   bench/mtls.sh                  # one run (~5 min harness + ~1 min probes; first time also builds, ~6 min)
#   bench/mtls.sh --repeat 3       # three harness runs and a spread table, then the probes
#   bench/mtls.sh --probes-only    # just the handshake and idle-connection probes
# Other options go to ../shared/bench/run.sh (e.g. --no-build, --quick). Latency at 2,000 req/s only.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED_BENCH="${MESHWORK_SHARED_BENCH:-$ROOT/../shared/bench}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ -x "$SHARED_BENCH/run.sh" ]] || { echo "bench/mtls.sh: no harness at $SHARED_BENCH" >&2; exit 2; }
cargo build --profile bench-lto --quiet --manifest-path "$ROOT/Cargo.toml" -p meshwork-proxy -p meshwork-control --bins
export MESHWORK_BENCH_BIN="$TARGET/bench-lto"
probes_only=0
args=()
for a in "$@"; do [[ "$a" == --probes-only ]] && probes_only=1 || args+=("$a"); done

if (( ! probes_only )); then
  "$SHARED_BENCH/run.sh" --only meshwork-hop-plain,meshwork-hop-mtls,nginx-hop-tls,nginx-hop-plain --rates 2000 \
    --extra "name=meshwork-hop-plain port=18110 cmd=$ROOT/bench/mesh-hop.sh plain 18110 18130" \
    --extra "name=meshwork-hop-mtls port=18111 cmd=$ROOT/bench/mesh-hop.sh mtls 18111 18140" \
    --extra "name=nginx-hop-tls port=18112 cmd=$ROOT/bench/nginx-hop.sh tls 18112 18150" \
    --extra "name=nginx-hop-plain port=18113 cmd=$ROOT/bench/nginx-hop.sh plain 18113 18160" \
    "${args[@]}"
fi

# ---- probes: the server side of each TLS hop ---------------------------------------------------------------------
[[ -x "$SHARED_BENCH/target/release/bench-origin" ]] || { echo "bench/mtls.sh: build the harness first" >&2; exit 2; }
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
taskset -c 0 "$SHARED_BENCH/target/release/bench-origin" --listen 127.0.0.1:18080 >/dev/null 2>&1 &
PIDS+=($!)
taskset -c 1 "$ROOT/bench/mesh-hop.sh" mtls 18111 18140 "$WORK/mesh.state" &
PIDS+=($!)
taskset -c 1 "$ROOT/bench/nginx-hop.sh" tls 18112 18150 "$WORK/nginx.state" &
PIDS+=($!)
taskset -c 1 "$ROOT/bench/mesh-hop.sh" plain 18110 18130 "$WORK/plain.state" &
PIDS+=($!)
for port in 18110 18111 18112; do
  for _ in $(seq 300); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.1
  done
  curl -sf -o /dev/null "http://127.0.0.1:$port/" || { echo "bench/mtls.sh: the hop on $port does not answer" >&2; exit 1; }
done
get() { sed -n "s/.*$2=\([^ ]*\).*/\1/p" "$1"; }
STATE="$(get "$WORK/mesh.state" state)"; SIDECAR="$(get "$WORK/mesh.state" sidecar)"
CERTS="$(get "$WORK/nginx.state" certs)"; BACK="$(get "$WORK/nginx.state" back)"
# A client SVID for the probe, signed by the mesh CA: one URI SAN, not a CA, digitalSignature.
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/probe.key" \
  -subj "/O=meshwork bench" -out "$WORK/probe.csr" 2>/dev/null
printf 'subjectAltName=URI:spiffe://cluster.local/ns/default/sa/bench-probe\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth,serverAuth\n' > "$WORK/probe.ext"
openssl x509 -req -in "$WORK/probe.csr" -CA "$STATE/ca.pem" -CAkey "$STATE/ca-key.pem" -CAcreateserial \
  -days 1 -extfile "$WORK/probe.ext" -out "$WORK/probe.crt" 2>/dev/null
PROBE="taskset -c 0 python3 $ROOT/bench/tls-probe.py"
echo "== full handshakes with client certificates, server side of the hop (TLS 1.3, ECDSA P-256, no resumption)"
$PROBE handshakes --target 127.0.0.1:18141 --pid "$SIDECAR" --ca "$STATE/ca.pem" --cert "$WORK/probe.crt" --key "$WORK/probe.key" | sed 's/^/meshwork sidecar inbound: /'
$PROBE handshakes --target 127.0.0.1:18151 --pid "$BACK" --ca "$CERTS/ca.crt" --cert "$CERTS/client.crt" --key "$CERTS/client.key" --server-name origin.mesh | sed 's/^/nginx (ssl_verify_client on): /'
echo "== 1,000 idle mutual-TLS connections (one request each), server side"
$PROBE idle --target 127.0.0.1:18141 --pid "$SIDECAR" --ca "$STATE/ca.pem" --cert "$WORK/probe.crt" --key "$WORK/probe.key" | sed 's/^/meshwork sidecar inbound: /'
$PROBE idle --target 127.0.0.1:18151 --pid "$BACK" --ca "$CERTS/ca.crt" --cert "$CERTS/client.crt" --key "$CERTS/client.key" --server-name origin.mesh | sed 's/^/nginx (ssl_verify_client on): /'
echo "== the same, plaintext (baseline)"
$PROBE idle --plaintext --target 127.0.0.1:18131 --pid "$(get "$WORK/plain.state" sidecar)" | sed 's/^/meshwork sidecar inbound (mTLS DISABLED): /'

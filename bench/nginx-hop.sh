#!/usr/bin/env bash
# nginx doing the mesh hop of bench/mesh-hop.sh, in the foreground: a client-side nginx on 127.0.0.1:PORT -> a
# server-side nginx on 127.0.0.1:BASE+1 -> the harness's origin (127.0.0.1:18080), one worker process each, keep-alive
# pools on both legs, as the shared harness configures nginx.
#
#   bench/nginx-hop.sh plain|tls PORT BASE [STATE_FILE]
#
# tls: the hop is TLS with client certificates both ways, the way a mesh does it without a mesh: the client side
# presents a certificate (proxy_ssl_certificate) and verifies the server's against a CA and a name
# (proxy_ssl_verify), with session reuse; the server side requires and verifies the client's (ssl_verify_client).
# TLS 1.3 only and ECDSA P-256 keys, like meshwork's mTLS. plain: the same two nginx without TLS.
# STATE_FILE, if given, receives "certs=DIR back=PID" (for bench/tls-probe.py: ca.crt, client.crt, client.key).
set -euo pipefail
MODE="$1"; PORT="$2"; BASE="$3"; STATE_FILE="${4:-}"
case "$MODE" in plain|tls) ;; *) echo "mode: plain or tls" >&2; exit 2 ;; esac
DIR="$(mktemp -d -t nginx-hop-XXXXXX)"
BACK=$((BASE + 1))
cert() { # NAME EXTENSIONS: an ECDSA P-256 key and a certificate signed by the hop's CA
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$DIR/$1.key" \
    -subj "/CN=$1" -out "$DIR/$1.csr" 2>/dev/null
  printf '%s\n' "$2" > "$DIR/$1.ext"
  openssl x509 -req -in "$DIR/$1.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" -CAcreateserial \
    -days 2 -extfile "$DIR/$1.ext" -out "$DIR/$1.crt" 2>/dev/null
}
if [[ "$MODE" == tls ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$DIR/ca.key" \
    -subj "/CN=nginx hop CA" -days 2 -out "$DIR/ca.crt" 2>/dev/null
  cert server "subjectAltName=DNS:origin.mesh
basicConstraints=CA:FALSE
keyUsage=digitalSignature
extendedKeyUsage=serverAuth"
  cert client "subjectAltName=DNS:client.mesh
basicConstraints=CA:FALSE
keyUsage=digitalSignature
extendedKeyUsage=clientAuth"
  SCHEME=https
  BACK_LISTEN="listen 127.0.0.1:$BACK ssl backlog=4096;
        ssl_protocols TLSv1.3;
        ssl_certificate $DIR/server.crt;
        ssl_certificate_key $DIR/server.key;
        ssl_client_certificate $DIR/ca.crt;
        ssl_verify_client on;
        ssl_session_cache shared:hop:1m;"
  CLIENT_TLS="proxy_ssl_protocols TLSv1.3;
            proxy_ssl_certificate $DIR/client.crt;
            proxy_ssl_certificate_key $DIR/client.key;
            proxy_ssl_trusted_certificate $DIR/ca.crt;
            proxy_ssl_verify on;
            proxy_ssl_name origin.mesh;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;"
else
  SCHEME=http
  BACK_LISTEN="listen 127.0.0.1:$BACK backlog=4096;"
  CLIENT_TLS=""
fi
conf() { # NAME LISTEN UPSTREAM SCHEME EXTRA
  mkdir -p "$DIR/$1"
  cat > "$DIR/$1/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
pid nginx.pid;
error_log nginx-error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path tmp_client_body;
    proxy_temp_path tmp_proxy;
    fastcgi_temp_path tmp_fastcgi;
    uwsgi_temp_path tmp_uwsgi;
    scgi_temp_path tmp_scgi;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    upstream next {
        server $3;
        keepalive 128;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        $2
        location / {
            proxy_pass $4://next;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            $5
        }
    }
}
EOF
}
conf back "$BACK_LISTEN" 127.0.0.1:18080 http ""
conf front "listen 127.0.0.1:$PORT backlog=4096;" "127.0.0.1:$BACK" "$SCHEME" "$CLIENT_TLS"
PIDS=()
stop() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap 'stop; exit 0' TERM INT
trap stop EXIT
nginx -p "$DIR/back" -c "$DIR/back/nginx.conf" &
PIDS+=($!)
nginx -p "$DIR/front" -c "$DIR/front/nginx.conf" &
PIDS+=($!)
[[ -n "$STATE_FILE" ]] && echo "certs=$DIR back=${PIDS[0]}" > "$STATE_FILE"
wait

#!/usr/bin/env python3
"""A live OTLP/HTTP receiver for benchmarks: accepts protobuf POSTs to /v1/traces, reads them whole and answers
200 with an empty ExportTraceServiceResponse; counts requests and bytes (printed on SIGTERM). What a collector
does for the proxy's exporter, without the cost of a real one on the machine being measured.

    bench/otlp-sink.py [PORT]   # default 18130
"""
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

received = {"requests": 0, "bytes": 0}


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        self.rfile.read(n)
        received["requests"] += 1
        received["bytes"] += n
        status = 200 if self.path == "/v1/traces" else 404
        self.send_response(status)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 18130
    server = ThreadingHTTPServer(("127.0.0.1", port), Sink)

    def stop(*_):
        print(f"otlp-sink: {received['requests']} exports, {received['bytes']} bytes", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()

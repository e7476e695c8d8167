#!/usr/bin/env python3
"""TLS figures the shared harness does not take (it measures pooled keep-alive traffic): what a server costs per
full handshake with client certificates, and how much memory it holds per idle mutual-TLS connection.

  tls-probe.py handshakes --target 127.0.0.1:P --pid PID --ca CA --cert C --key K [--seconds 10] [--workers 2]
  tls-probe.py idle       --target 127.0.0.1:P --pid PID --ca CA --cert C --key K [--connections 1000]
  tls-probe.py idle       --target 127.0.0.1:P --pid PID --plaintext [--connections 1000]   (the same, no TLS)

handshakes: fresh TCP connections, each a full TLS 1.3 handshake with a client certificate (no session reuse),
closed right after, for --seconds, from --workers client processes; prints the rate achieved and the server's
handshakes per CPU-second (its whole process tree's utime+stime over the same interval; the clients are Python and
may be the bottleneck, so the per-CPU-second figure is the one to compare).
idle: opens --connections mutual-TLS connections, sends one GET on each (a pooled mesh connection has carried a
request), keeps them all open and idle, and prints the server's RSS growth per 1,000 connections (VmRSS summed over
its process tree: nginx's master + worker).

Standard library only. Every socket has a timeout; every loop is bounded by time or count.
"""
import argparse
import multiprocessing
import os
import resource
import socket
import ssl
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree(pid):
    """pid and every descendant, from /proc."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / CLK_TCK


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def context(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    # Mesh certificates name a SPIFFE ID (a URI SAN), not a host: the chain is verified, the name is not.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def connect(ctx, host, port, server_name):
    raw = socket.create_connection((host, port), timeout=5)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_name)
    except Exception:
        raw.close()
        raise


def handshake_worker(args, deadline, out):
    host, port = args.target.rsplit(":", 1)
    ctx = context(args)
    ok = failed = 0
    while time.monotonic() < deadline:
        try:
            s = connect(ctx, host, int(port), args.server_name)
            s.close()
            ok += 1
        except (OSError, ssl.SSLError):
            failed += 1
    out.put((ok, failed))


def handshakes(args):
    pids = tree(args.pid)
    cpu0 = cpu_seconds(pids)
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    out = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=handshake_worker, args=(args, deadline, out))
               for _ in range(args.workers)]
    for w in workers:
        w.start()
    results = [out.get(timeout=args.seconds + 30) for _ in workers]
    for w in workers:
        w.join(timeout=10)
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(tree(args.pid)) - cpu0
    ok = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    per_cpu = ok / cpu if cpu > 0 else float("inf")
    print(f"handshakes target={args.target} ok={ok} failed={failed} seconds={elapsed:.1f} "
          f"rate={ok / elapsed:.0f}/s server_cpu_s={cpu:.2f} per_server_cpu_s={per_cpu:.0f}")
    return 0 if failed == 0 else 1


def idle(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, port = args.target.rsplit(":", 1)
    ctx = None if args.plaintext else context(args)
    before = rss_kib(tree(args.pid))
    conns = []
    request = b"GET / HTTP/1.1\r\nhost: origin\r\n\r\n"
    try:
        for _ in range(args.connections):
            if ctx is None:
                s = socket.create_connection((host, int(port)), timeout=5)
            else:
                s = connect(ctx, host, int(port), args.server_name)
            s.sendall(request)
            got = b""
            while b"\r\n\r\n" not in got:  # headers, then the body by its length
                chunk = s.recv(65536)
                if not chunk:
                    raise OSError("closed before answering")
                got += chunk
            head, _, body = got.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
            if not head.startswith(b"HTTP/1.1 200"):
                raise OSError(f"answer: {head.splitlines()[0]!r}")
            conns.append(s)
        time.sleep(2)
        after = rss_kib(tree(args.pid))
        alive = sum(1 for s in conns if s.fileno() >= 0)
    finally:
        for s in conns:
            s.close()
    per_k = (after - before) * 1000 / max(1, len(conns))
    print(f"idle target={args.target} connections={alive} rss_before_kib={before} rss_after_kib={after} "
          f"per_1000_kib={per_k:.0f}")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["handshakes", "idle"])
    p.add_argument("--target", required=True)
    p.add_argument("--pid", type=int, required=True, help="the server's PID (its process tree is measured)")
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--plaintext", action="store_true", help="idle: plain TCP connections (a baseline)")
    p.add_argument("--server-name", default=None, help="SNI (default: none)")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--connections", type=int, default=1000)
    args = p.parse_args()
    if not args.plaintext and not (args.ca and args.cert and args.key):
        p.error("--ca, --cert and --key are required (or --plaintext, with idle)")
    if args.plaintext and args.mode != "idle":
        p.error("--plaintext goes with idle only")
    sys.exit(handshakes(args) if args.mode == "handshakes" else idle(args))


if __name__ == "__main__":
    main()

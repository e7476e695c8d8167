//! Connection deadlines, body bounds, the connection cap and the drain (issue 11, items 1 and 5), on real sockets
//! on 127.0.0.1 with paused time: a client that is silent, slow or greedy loses its connection at the deadline,
//! and one that behaves keeps it. The handler reads the whole body and answers through `error::reply`, as the
//! request path does.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{serve_with, Downstream, FdBudget, Limits};
use crate::error::{self, ProxyError};
use crate::upstream::body::ClientBodyFailed;
use crate::upstream::client_body::{BodyLimits, ClientBody};

const SECOND: Duration = Duration::from_secs(1);

fn limits() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        h2_keepalive: Some(Duration::from_secs(30)),
        max_connections: 100,
        body: BodyLimits {
            max_bytes: Some(10_000),
            min_rate: Some(240),
            grace: Duration::from_secs(5),
        },
    }
}

/// Reads the whole body; `/slow` waits 120 s first. Answers 200 `got N`, or the proxy's reply to a body error.
async fn handler(req: Request<ClientBody>, _peer: Downstream) -> Response<Full<Bytes>> {
    if req.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    match req.into_body().collect().await {
        Ok(b) => Response::new(Full::new(Bytes::from(format!(
            "got {}",
            b.to_bytes().len()
        )))),
        Err(e) => {
            let e = e.downcast::<ClientBodyFailed>().unwrap();
            let r = error::reply(&ProxyError::ClientBody(*e));
            let (parts, body) = r.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            Response::from_parts(parts, Full::new(bytes))
        }
    }
}

struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(limits: Limits) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    let budget = FdBudget::new(1000);
    let task = tokio::spawn(serve_with(
        l,
        handler,
        rx,
        Duration::from_secs(5),
        Arc::new(limits),
        budget,
        super::PerConnection::default(),
    ));
    Server { addr, stop, task }
}

/// Longer than any deadline here: a wait that reaches it is a failure, not a hang (time is paused, so it costs
/// nothing).
const BOUND: Duration = Duration::from_secs(900);

async fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    tokio::time::timeout(BOUND, s.read(buf))
        .await
        .expect("the connection neither answered nor closed")
}

/// Reads until the peer closes (or resets); returns what was read.
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match read_some(s, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response (headers and a Content-Length body); returns its status and body.
async fn read_response(s: &mut TcpStream) -> (u16, String) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if data.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                let body = String::from_utf8_lossy(&data[end + 4..end + 4 + len]).into_owned();
                return (status, body);
            }
        }
        let n = read_some(s, &mut buf).await.unwrap();
        assert!(n > 0, "closed before a whole response: {data:?}");
        data.extend_from_slice(&buf[..n]);
    }
}

async fn get(s: &mut TcpStream, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    read_response(s).await
}

/// Writes `bytes` one per second, stopping early if the peer has gone.
async fn trickle(s: &mut TcpStream, bytes: &[u8]) -> usize {
    for (i, b) in bytes.iter().enumerate() {
        if s.write_all(&[*b]).await.is_err() {
            return i;
        }
        tokio::time::sleep(SECOND).await;
    }
    bytes.len()
}

fn about(elapsed: Duration, expected: Duration) -> bool {
    elapsed >= expected && elapsed <= expected + Duration::from_secs(2)
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_dropped_at_the_header_timeout() {
    let srv = start(limits()).await;
    let t0 = Instant::now();
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    assert_eq!(read_to_close(&mut s).await, "");
    assert!(
        about(t0.elapsed(), Duration::from_secs(10)),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn an_http2_preface_sent_a_byte_a_second_is_dropped_at_the_header_timeout() {
    let srv = start(limits()).await;
    let t0 = Instant::now();
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let (mut r, mut w) = s.split();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let (sent, closed_at) = tokio::join!(
        async {
            let mut sent = 0;
            for b in preface {
                if w.write_all(&[*b]).await.is_err() {
                    break;
                }
                sent += 1;
                tokio::time::sleep(SECOND).await;
            }
            sent
        },
        async {
            let mut buf = [0u8; 64];
            let read = async { while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {} };
            tokio::time::timeout(BOUND, read)
                .await
                .expect("never closed");
            t0.elapsed()
        }
    );
    assert!(sent < preface.len(), "the whole preface went through");
    assert!(about(closed_at, Duration::from_secs(10)), "{closed_at:?}");
    let _ = &mut s;
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout_and_not_before() {
    let srv = start(limits()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    assert_eq!(get(&mut s, "/").await, (200, "got 0".into()));
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(get(&mut s, "/").await.0, 200, "still open after 59 s idle");
    let idle_from = Instant::now();
    assert_eq!(read_to_close(&mut s).await, "");
    assert!(
        about(idle_from.elapsed(), Duration::from_secs(60)),
        "{:?}",
        idle_from.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_later_request_whose_headers_trickle_is_dropped_at_the_header_timeout() {
    let srv = start(limits()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    assert_eq!(get(&mut s, "/").await.0, 200);
    let t0 = Instant::now();
    let sent = trickle(
        &mut s,
        b"GET / HTTP/1.1\r\nhost: t\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
    )
    .await;
    assert!(sent < 20, "sent {sent} bytes before the close");
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_request_in_flight_is_not_cut_by_the_idle_timeout() {
    let srv = start(limits()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let t0 = Instant::now();
    assert_eq!(get(&mut s, "/slow").await, (200, "got 0".into()));
    assert!(t0.elapsed() >= Duration::from_secs(120));
}

#[tokio::test(start_paused = true)]
async fn a_body_trickled_a_byte_a_second_gets_408_after_the_grace_period() {
    let srv = start(limits()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 1000\r\n\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    let (mut r, mut w) = s.split();
    let (_, (status, body)) = tokio::join!(
        async {
            for _ in 0..1000 {
                if w.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(SECOND).await;
            }
        },
        async {
            let mut buf = Vec::new();
            let read = r.read_to_end(&mut buf);
            tokio::time::timeout(BOUND, read)
                .await
                .expect("never closed")
                .ok();
            let text = String::from_utf8_lossy(&buf).into_owned();
            (text[9..12].to_string(), text)
        }
    );
    assert_eq!(status, "408", "{body}");
    assert!(body.contains("slower than 240 bytes/s"), "{body}");
    assert!(
        about(t0.elapsed(), Duration::from_secs(5)),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_at_a_fair_rate_passes_however_long_it_takes() {
    let srv = start(limits()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 6000\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..20 {
        s.write_all(&[b'x'; 300]).await.unwrap();
        tokio::time::sleep(SECOND).await;
    }
    assert_eq!(read_response(&mut s).await, (200, "got 6000".into()));
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_maximum_gets_413() {
    let srv = start(limits()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("1000\r\n{}\r\n", "y".repeat(4096));
    for _ in 0..3 {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let (status, body) = read_response(&mut s).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("exceeds 10000 bytes"), "{body}");
}

#[tokio::test(start_paused = true)]
async fn connections_over_the_cap_get_a_503_and_room_comes_back() {
    let srv = start(Limits {
        max_connections: 2,
        ..limits()
    })
    .await;
    let mut a = TcpStream::connect(srv.addr).await.unwrap();
    let mut b = TcpStream::connect(srv.addr).await.unwrap();
    assert_eq!(get(&mut a, "/").await.0, 200);
    assert_eq!(get(&mut b, "/").await.0, 200);
    let mut c = TcpStream::connect(srv.addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let refused = read_to_close(&mut c).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused:?}");
    assert!(refused.contains("too many connections"), "{refused:?}");
    let mut silent = TcpStream::connect(srv.addr).await.unwrap();
    assert_eq!(
        read_to_close(&mut silent).await,
        "",
        "a silent one is just closed"
    );
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut d = TcpStream::connect(srv.addr).await.unwrap();
    assert_eq!(get(&mut d, "/").await.0, 200);
    let _ = &mut b;
}

#[tokio::test(start_paused = true)]
async fn an_idle_http2_connection_gets_goaway_at_the_idle_timeout() {
    let srv = start(limits()).await;
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(srv.addr).await.unwrap());
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("http://t/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    let idle_from = Instant::now();
    tokio::time::timeout(BOUND, conn)
        .await
        .expect("no GOAWAY")
        .unwrap()
        .unwrap();
    assert!(
        about(idle_from.elapsed(), Duration::from_secs(60)),
        "{:?}",
        idle_from.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn draining_closes_idle_connections_and_lets_a_request_in_flight_finish() {
    let srv = start(Limits {
        idle_timeout: Duration::from_secs(600),
        ..limits()
    })
    .await;
    let mut idle = TcpStream::connect(srv.addr).await.unwrap();
    assert_eq!(get(&mut idle, "/").await.0, 200);
    let mut busy = TcpStream::connect(srv.addr).await.unwrap();
    busy.write_all(b"GET / HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\n\r\nab")
        .await
        .unwrap();
    tokio::time::sleep(SECOND).await;
    let t0 = Instant::now();
    srv.stop.send(true).unwrap();
    assert_eq!(
        read_to_close(&mut idle).await,
        "",
        "the idle connection closes at once"
    );
    assert!(t0.elapsed() < SECOND);
    busy.write_all(b"c").await.unwrap();
    let answer = read_to_close(&mut busy).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        answer.to_lowercase().contains("connection: close"),
        "{answer:?}"
    );
    assert!(
        TcpStream::connect(srv.addr).await.is_err(),
        "no longer accepting"
    );
    srv.task.await.unwrap();
}

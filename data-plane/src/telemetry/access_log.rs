//! Access logs: one line per request, JSON or text, as the Mesh's `spec.accessLog` says (carried in the snapshot as
//! [`AccessLogConfig`]). Lines are formatted and written by a thread of their own, fed through a bounded queue: a
//! slow disk or a full pipe never holds a request; what does not fit is dropped and counted.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use http::{Method, Version};

use super::trace::TraceId;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

pub use crate::config::snapshot::AccessLogConfig;

/// Lines waiting to be written; beyond this, lines are dropped (and counted).
const QUEUE: usize = 4096;

/// The most bytes of one client-sent field (path, authority, request id) a line carries: queued lines own copies
/// of what they log, so the queue's memory is bounded (about `QUEUE` x 3 x this at worst), and no request's whole
/// header block stays alive while its line waits.
pub const MAX_FIELD: usize = 2048;

/// A client-sent field as a line carries it: at most `MAX_FIELD` bytes, bytes that are not UTF-8 shown as U+FFFD
/// (a client cannot hide a field by sending them).
pub fn bounded(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_FIELD)]).into_owned()
}

/// What one request leaves in the log.
pub struct Entry {
    pub config: Arc<AccessLogConfig>,
    pub start: SystemTime,
    pub duration: Duration,
    /// The trace the request belongs to, when the proxy traces (sampled or not).
    pub trace_id: Option<TraceId>,
    pub request_id: Option<String>,
    pub method: Method,
    pub version: Version,
    /// As the client sent them (at most `MAX_FIELD` bytes each): the authority (from the request line, else
    /// `host`) and the path with its query.
    pub authority: Option<String>,
    pub path: String,
    pub listener: Arc<str>,
    pub route: Option<Arc<str>>,
    pub destination_service: Option<Arc<str>>,
    /// The caller: the mTLS peer's SPIFFE ID, or the service this sidecar's outbound listener speaks for.
    pub source: Option<String>,
    pub downstream: SocketAddr,
    /// The endpoint of the last attempt upstream, if one was made.
    pub upstream: Option<SocketAddr>,
    /// Attempts made upstream (retries included; 0: none was made).
    pub attempts: u32,
    /// 0: the client went away before a response was made.
    pub status: u16,
    pub bytes_sent: u64,
    /// Why the request ended the way it did (`-`: nothing to say); see docs/observability.md.
    pub flags: &'static str,
}

/// The proxy's access log writer (started on first use) and its counters.
#[derive(Debug, Default)]
pub struct AccessLog {
    writer: OnceLock<Writer>,
    counters: Arc<Counters>,
    /// Set by `close`: the writer writes what is queued and ends.
    closing: Arc<AtomicBool>,
}

#[derive(Debug)]
struct Writer {
    queue: SyncSender<Entry>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

impl AccessLog {
    /// Queues a line; drops it (counted) if the writer is behind.
    pub fn submit(&self, entry: Entry) {
        let writer = self.writer.get_or_init(|| self.start());
        match writer.queue.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// At shutdown: the writer writes what is queued and ends; waits for it at most `limit`.
    pub fn close(&self, limit: Duration) {
        self.closing.store(true, Relaxed);
        let Some(writer) = self.writer.get() else {
            return;
        };
        let thread = writer
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(thread) = thread else {
            return;
        };
        thread.thread().unpark();
        let step = Duration::from_millis(5);
        for _ in 0..limit.as_millis() / step.as_millis() {
            if thread.is_finished() {
                break;
            }
            std::thread::sleep(step);
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }

    fn start(&self) -> Writer {
        let (tx, rx) = sync_channel(QUEUE);
        let (counters, closing) = (self.counters.clone(), self.closing.clone());
        let spawned = std::thread::Builder::new()
            .name("meshwork-access-log".into())
            .spawn(move || write_lines(&rx, &counters, &closing));
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the access log writer; access log lines are dropped");
                None
            }
        };
        Writer {
            queue: tx,
            thread: Mutex::new(thread),
        }
    }
}

/// `meshwork_access_log_lines_total{result="written|dropped|failed"}`: dropped when the writer was behind (the
/// queue was full), failed when the target could not be opened or written.
impl Collector for AccessLog {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "meshwork_access_log_lines",
            "Access log lines by what became of them",
            None,
            MetricType::Counter,
        )?;
        let c = &self.counters;
        for (result, n) in [
            ("written", &c.written),
            ("dropped", &c.dropped),
            ("failed", &c.failed),
        ] {
            let labels = [("result", result)];
            ConstCounter::new(n.load(Relaxed)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Where lines go now; reopened when the configured path changes.
struct Target {
    path: Arc<str>,
    out: Option<BufWriter<Box<dyn Write + Send>>>,
}

/// How often the writer wakes to write what has queued up. Sleeping between batches (not waiting on the queue)
/// means a request never has to wake the writer: queueing a line costs no system call.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

fn write_lines(rx: &Receiver<Entry>, counters: &Counters, closing: &AtomicBool) {
    let mut target: Option<Target> = None;
    let mut clock = Clock::default();
    let mut line = String::new();
    loop {
        // Woken early (unparked) only by `close`.
        let last = closing.load(Relaxed);
        if !last {
            std::thread::park_timeout(FLUSH_INTERVAL);
        }
        loop {
            let entry = match rx.try_recv() {
                Ok(entry) => entry,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    flush(&mut target, counters);
                    return;
                }
            };
            if target.as_ref().is_none_or(|t| t.path != entry.config.path) {
                flush(&mut target, counters);
                target = Some(open(&entry.config.path));
            }
            line.clear();
            format_entry(&entry, &mut clock, &mut line);
            let written = target
                .as_mut()
                .and_then(|t| t.out.as_mut())
                .is_some_and(|out| out.write_all(line.as_bytes()).is_ok());
            let counter = if written {
                &counters.written
            } else {
                &counters.failed
            };
            counter.fetch_add(1, Relaxed);
        }
        flush(&mut target, counters);
        if last {
            return;
        }
    }
}

fn flush(target: &mut Option<Target>, counters: &Counters) {
    if let Some(out) = target.as_mut().and_then(|t| t.out.as_mut()) {
        if out.flush().is_err() {
            counters.failed.fetch_add(1, Relaxed);
        }
    }
}

fn open(path: &Arc<str>) -> Target {
    let out: Option<Box<dyn Write + Send>> = match &**path {
        "stdout" => Some(Box::new(std::io::stdout())),
        "stderr" => Some(Box::new(std::io::stderr())),
        file => match OpenOptions::new().create(true).append(true).open(file) {
            Ok(f) => Some(Box::new(f)),
            Err(e) => {
                tracing::error!(path = file, error = %e, "cannot open the access log file; its lines are dropped");
                None
            }
        },
    };
    Target {
        path: path.clone(),
        out: out.map(|o| BufWriter::with_capacity(64 * 1024, o)),
    }
}

/// RFC 3339 timestamps, the date and time formatted once per second.
#[derive(Default)]
struct Clock {
    second: u64,
    prefix: String,
}

impl Clock {
    /// `2026-12-01T02:50:30.123Z`.
    fn write(&mut self, at: SystemTime, out: &mut String) {
        let since = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        if self.prefix.is_empty() || self.second != since.as_secs() {
            self.second = since.as_secs();
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(self.second);
            let format =
                time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
            self.prefix = time::OffsetDateTime::from(whole)
                .format(format)
                .unwrap_or_default();
        }
        out.push_str(&self.prefix);
        out.push('.');
        push_padded(out, since.subsec_millis().into(), 3);
        out.push('Z');
    }
}

fn push_num(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

/// Milliseconds with three decimals (microsecond precision).
fn push_millis(out: &mut String, d: Duration) {
    let micros = d.as_micros() as u64;
    push_num(out, micros / 1000);
    out.push('.');
    push_padded(out, micros % 1000, 3);
}

fn push_addr(out: &mut String, addr: SocketAddr) {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => {
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_num(out, octet.into());
            }
        }
        std::net::IpAddr::V6(ip) => {
            out.push('[');
            let _ = write!(out, "{ip}");
            out.push(']');
        }
    }
    out.push(':');
    push_num(out, addr.port().into());
}

/// A JSON string (quoted and escaped), or `null`. Runs of bytes that need no escaping (nearly all of them) are
/// copied whole.
fn push_json(out: &mut String, v: Option<&str>) {
    let Some(v) = v else {
        out.push_str("null");
        return;
    };
    out.push('"');
    let bytes = v.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0..=0x1f | 0x7f => "",
            _ => continue,
        };
        // `i` is at an ASCII byte, so both slices end on character boundaries.
        out.push_str(&v[run..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escaped);
        }
        run = i + 1;
    }
    out.push_str(&v[run..]);
    out.push('"');
}

/// A field of the text format: `-` if missing; quotes, backslashes and control characters escaped.
fn push_text(out: &mut String, v: Option<&str>, quoted: bool) {
    if quoted {
        out.push('"');
    }
    match v {
        None => out.push('-'),
        Some(v) => {
            for c in v.chars() {
                match c {
                    '"' | '\\' => {
                        out.push('\\');
                        out.push(c);
                    }
                    c if c.is_control() || (c == ' ' && !quoted) => {
                        let _ = write!(out, "\\u{{{:x}}}", c as u32);
                    }
                    c => out.push(c),
                }
            }
        }
    }
    if quoted {
        out.push('"');
    }
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// One line, newline-terminated. Written field by field (not through `serde_json::Value`, which cost ten times as
/// much per line, counted with `bench/instructions.sh`).
fn format_entry(e: &Entry, clock: &mut Clock, out: &mut String) {
    let request_id = e.request_id.as_deref();
    let authority = e.authority.as_deref();
    let path = e.path.as_str();
    if !e.config.json {
        out.push('[');
        clock.write(e.start, out);
        out.push_str("] \"");
        out.push_str(e.method.as_str());
        out.push(' ');
        push_text(out, Some(path), false);
        out.push(' ');
        out.push_str(version(e.version));
        out.push_str("\" ");
        push_num(out, e.status.into());
        out.push(' ');
        out.push_str(e.flags);
        out.push(' ');
        push_num(out, e.bytes_sent);
        out.push(' ');
        push_millis(out, e.duration);
        out.push(' ');
        push_text(out, request_id, true);
        out.push(' ');
        push_text(out, authority, true);
        for field in [
            Some(&*e.listener),
            e.route.as_deref(),
            e.destination_service.as_deref(),
            e.source.as_deref(),
        ] {
            out.push(' ');
            push_text(out, field, false);
        }
        out.push(' ');
        push_addr(out, e.downstream);
        out.push(' ');
        match e.upstream {
            Some(a) => push_addr(out, a),
            None => out.push('-'),
        }
        out.push(' ');
        push_num(out, e.attempts.into());
        out.push(' ');
        match &e.trace_id {
            Some(t) => out.push_str(&t.hex()),
            None => out.push('-'),
        }
        out.push('\n');
        return;
    }
    out.push_str("{\"start_time\":\"");
    clock.write(e.start, out);
    out.push_str("\",\"trace_id\":");
    match &e.trace_id {
        Some(t) => {
            out.push('"');
            out.push_str(&t.hex());
            out.push('"');
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"request_id\":");
    push_json(out, request_id);
    out.push_str(",\"method\":");
    push_json(out, Some(e.method.as_str()));
    out.push_str(",\"authority\":");
    push_json(out, authority);
    out.push_str(",\"path\":");
    push_json(out, Some(path));
    out.push_str(",\"protocol\":\"");
    out.push_str(version(e.version));
    out.push_str("\",\"status\":");
    push_num(out, e.status.into());
    out.push_str(",\"response_flags\":\"");
    out.push_str(e.flags);
    out.push_str("\",\"duration_ms\":");
    push_millis(out, e.duration);
    out.push_str(",\"bytes_sent\":");
    push_num(out, e.bytes_sent);
    out.push_str(",\"listener\":");
    push_json(out, Some(&e.listener));
    out.push_str(",\"route\":");
    push_json(out, e.route.as_deref());
    out.push_str(",\"destination_service\":");
    push_json(out, e.destination_service.as_deref());
    out.push_str(",\"source\":");
    push_json(out, e.source.as_deref());
    out.push_str(",\"downstream_address\":\"");
    push_addr(out, e.downstream);
    out.push_str("\",\"upstream_address\":");
    match e.upstream {
        Some(a) => {
            out.push('"');
            push_addr(out, a);
            out.push('"');
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"attempts\":");
    push_num(out, e.attempts.into());
    out.push_str("}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(json: bool) -> Entry {
        Entry {
            config: Arc::new(AccessLogConfig {
                json,
                path: Arc::from("stdout"),
                sampling_ppm: 1_000_000,
            }),
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_547_200_123),
            duration: Duration::from_micros(1500),
            trace_id: Some(TraceId([0xab; 16])),
            request_id: Some("abc".into()),
            method: Method::POST,
            version: Version::HTTP_11,
            authority: Some("shop.example\"".into()),
            path: "/cart?x=1".into(),
            listener: Arc::from("http"),
            route: Some(Arc::from("HTTPRoute/default/shop/rule/0/match/0")),
            destination_service: None,
            source: None,
            downstream: "127.0.0.1:5000"
                .parse()
                .unwrap_or(SocketAddr::from(([0; 4], 0))),
            upstream: Some(SocketAddr::from(([10, 0, 0, 7], 8080))),
            attempts: 2,
            status: 503,
            bytes_sent: 12,
            flags: "UH",
        }
    }

    #[test]
    fn a_json_line_has_every_field() {
        let mut line = String::new();
        format_entry(&entry(true), &mut Clock::default(), &mut line);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(v["start_time"], "2025-12-01T00:00:00.123Z", "{line}");
        assert_eq!(v["status"], 503);
        assert_eq!(v["response_flags"], "UH");
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(
            v["authority"], "shop.example\"",
            "quoted, not broken: {line}"
        );
        assert_eq!(v["destination_service"], serde_json::Value::Null);
        assert_eq!(v["downstream_address"], "127.0.0.1:5000");
        assert_eq!(v["upstream_address"], "10.0.0.7:8080");
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["trace_id"], "abababababababababababababababab");
    }

    #[test]
    fn a_text_line_escapes_what_the_client_sent() {
        let mut line = String::new();
        format_entry(&entry(false), &mut Clock::default(), &mut line);
        assert_eq!(
            line,
            "[2025-12-01T00:00:00.123Z] \"POST /cart?x=1 HTTP/1.1\" 503 UH 12 1.500 \"abc\" \"shop.example\\\"\" http HTTPRoute/default/shop/rule/0/match/0 - - 127.0.0.1:5000 10.0.0.7:8080 2 abababababababababababababababab\n"
        );
    }

    #[test]
    fn sampling_keeps_about_its_share() {
        let cfg = AccessLogConfig {
            json: true,
            path: Arc::from("stdout"),
            sampling_ppm: 250_000,
        };
        let kept = (0..20_000).filter(|_| cfg.sampled()).count();
        assert!((4_000..6_000).contains(&kept), "{kept} of 20000 at 25%");
        let none = AccessLogConfig {
            sampling_ppm: 0,
            ..cfg.clone()
        };
        assert!(!(0..1000).any(|_| none.sampled()));
    }

    /// A plain GET line: the fields a test does not care about at their simplest.
    fn plain_entry(config: Arc<AccessLogConfig>, status: u16) -> Entry {
        Entry {
            config,
            start: SystemTime::UNIX_EPOCH,
            duration: Duration::ZERO,
            trace_id: None,
            request_id: None,
            method: Method::GET,
            version: Version::HTTP_2,
            authority: None,
            path: "/".into(),
            listener: Arc::from("http"),
            route: None,
            destination_service: None,
            source: None,
            downstream: SocketAddr::from(([127, 0, 0, 1], 1)),
            upstream: None,
            attempts: 0,
            status,
            bytes_sent: 0,
            flags: "-",
        }
    }

    #[test]
    fn what_a_client_sends_cannot_break_a_line() {
        let mut e = plain_entry(entry(true).config, 200);
        e.authority = Some(bounded(b"a\t\"b\\"));
        e.request_id = Some("x\" y".into());
        let mut line = String::new();
        format_entry(&e, &mut Clock::default(), &mut line);
        assert_eq!(line.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(v["authority"], "a\t\"b\\", "{line}");
        assert_eq!(v["request_id"], "x\" y", "{line}");
        e.config = entry(false).config;
        line.clear();
        format_entry(&e, &mut Clock::default(), &mut line);
        assert!(line.contains(r#" "x\" y" "a\u{9}\"b\\" "#), "{line}");
    }

    #[test]
    fn close_writes_what_is_queued_before_the_proxy_exits() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("access.log");
        let log = AccessLog::default();
        let config = Arc::new(AccessLogConfig {
            json: true,
            path: Arc::from(path.to_string_lossy().as_ref()),
            sampling_ppm: 1_000_000,
        });
        for status in [200, 503] {
            log.submit(plain_entry(config.clone(), status));
        }
        log.close(Duration::from_secs(5));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert_eq!(log.counters().written.load(Relaxed), 2);
    }
}

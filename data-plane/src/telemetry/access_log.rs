//! Access logs: one line per request, JSON or text, as the Mesh's `spec.accessLog` says (carried in the snapshot as
//! [`AccessLogConfig`]). As Envoy does it: the request's own thread formats its line (from borrowed fields: no
//! copies, no allocation) and appends it to a shared, bounded buffer; a writer thread of its own takes what has
//! gathered every 100 ms and writes it. A slow disk or a full pipe never holds a request; lines beyond the bound
//! are dropped and counted.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use http::{Method, Version};

use super::trace::TraceId;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

pub use crate::config::snapshot::AccessLogConfig;

/// The most bytes of lines waiting to be written; beyond this, lines are dropped (and counted).
const MAX_PENDING: usize = 4 << 20;

/// The most bytes of one client-sent field (path, authority, request id) a line carries (and a request keeps for
/// it), so that a line stays bounded whatever the client sent.
pub const MAX_FIELD: usize = 2048;

/// A client-sent field as a line carries it: at most `MAX_FIELD` bytes, bytes that are not UTF-8 shown as U+FFFD
/// (a client cannot hide a field by sending them).
pub fn bounded(bytes: &[u8]) -> String {
    let bytes = &bytes[..bytes.len().min(MAX_FIELD)];
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// What one request leaves in the log, borrowed from the request's record while its line is formatted.
pub struct Entry<'a> {
    pub config: &'a AccessLogConfig,
    pub start: SystemTime,
    pub duration: Duration,
    /// The trace the request belongs to, when the proxy traces (sampled or not).
    pub trace_id: Option<TraceId>,
    pub request_id: Option<&'a str>,
    pub method: &'a Method,
    pub version: Version,
    /// As the client sent them (at most `MAX_FIELD` bytes each): the authority (from the request line, else
    /// `host`) and the path with its query.
    pub authority: Option<&'a str>,
    pub path: &'a str,
    pub listener: &'a str,
    pub route: Option<&'a str>,
    pub destination_service: Option<&'a str>,
    /// The caller: the mTLS peer's SPIFFE ID, or the service this sidecar's outbound listener speaks for.
    pub source: Option<&'a str>,
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

/// The proxy's access log: the lines waiting to be written, and the writer (started on first use).
#[derive(Debug, Default)]
pub struct AccessLog {
    pending: Arc<Mutex<Pending>>,
    writer: OnceLock<Writer>,
    counters: Arc<Counters>,
    /// Set by `close`: the writer writes what is pending and ends.
    closing: Arc<AtomicBool>,
}

/// Formatted lines waiting for the writer, in the order they were made, grouped by where they go (the path
/// changes only when the Mesh's does).
#[derive(Debug, Default)]
struct Pending {
    chunks: Vec<Chunk>,
    bytes: usize,
    /// The writer has been woken for what is pending (it clears this when it takes it).
    woken: bool,
    /// Buffers the writer has written and handed back, for the next chunks (no allocation, no fresh pages).
    spare: Vec<Vec<u8>>,
}

/// The writer thread: its handle (for `close`) and a way to wake it.
#[derive(Debug)]
struct Writer {
    handle: Mutex<Option<JoinHandle<()>>>,
    thread: Option<std::thread::Thread>,
}

/// What became of a line offered to `Pending`.
#[derive(Debug, PartialEq, Eq)]
enum Pushed {
    Queued,
    /// Queued, and `FLUSH_SIZE` bytes are waiting: the writer should be woken.
    QueuedWake,
    Dropped,
}

/// When this many bytes are waiting the writer is woken rather than left to its next look (as Envoy's access log
/// flushes at 64 KiB): a busy proxy's log is written in pieces of about this size, and what waits stays small.
const FLUSH_SIZE: usize = 64 * 1024;
/// Handed-back buffers kept for reuse (larger ones are freed).
const SPARE_BUFFERS: usize = 4;
const SPARE_CAPACITY: usize = 4 * FLUSH_SIZE;

#[derive(Debug)]
struct Chunk {
    path: Arc<str>,
    text: Vec<u8>,
    lines: u64,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

thread_local! {
    /// Each request thread's line buffer and date cache (formatting happens outside the shared buffer's lock).
    static LINE: RefCell<(String, Clock)> = RefCell::new((String::with_capacity(512), Clock::default()));
}

impl AccessLog {
    /// Formats the line and queues it; drops it (counted) if the writer is too far behind.
    pub fn submit(&self, entry: &Entry<'_>) {
        let writer = self.writer.get_or_init(|| self.start());
        LINE.with(|cell| {
            let mut cell = cell.borrow_mut();
            let (line, clock) = &mut *cell;
            line.clear();
            format_entry(entry, clock, line);
            let pushed = self
                .lock_pending()
                .push(&entry.config.path, line.as_bytes());
            match pushed {
                Pushed::Queued => {}
                Pushed::QueuedWake => {
                    if let Some(t) = &writer.thread {
                        t.unpark();
                    }
                }
                Pushed::Dropped => {
                    self.counters.dropped.fetch_add(1, Relaxed);
                }
            }
        });
    }

    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// At shutdown: the writer writes what is pending and ends; waits for it at most `limit`.
    pub fn close(&self, limit: Duration) {
        self.closing.store(true, Relaxed);
        let Some(writer) = self.writer.get() else {
            return;
        };
        let thread = writer
            .handle
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
        let (pending, counters, closing) = (
            self.pending.clone(),
            self.counters.clone(),
            self.closing.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("meshwork-access-log".into())
            .spawn(move || write_lines(&pending, &counters, &closing));
        let handle = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the access log writer; access log lines are dropped");
                None
            }
        };
        Writer {
            thread: handle.as_ref().map(|h| h.thread().clone()),
            handle: Mutex::new(handle),
        }
    }
}

impl Pending {
    /// Appends a line bound for `path`, unless `MAX_PENDING` bytes are waiting already.
    fn push(&mut self, path: &Arc<str>, line: &[u8]) -> Pushed {
        if self.bytes + line.len() > MAX_PENDING {
            return Pushed::Dropped;
        }
        self.bytes += line.len();
        let wake = self.bytes >= FLUSH_SIZE && !self.woken;
        self.woken |= wake;
        match self.chunks.last_mut() {
            Some(chunk) if chunk.path == *path => {
                chunk.text.extend_from_slice(line);
                chunk.lines += 1;
            }
            _ => {
                let mut text = self
                    .spare
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(2 * FLUSH_SIZE));
                text.extend_from_slice(line);
                self.chunks.push(Chunk {
                    path: path.clone(),
                    text,
                    lines: 1,
                });
            }
        }
        if wake {
            Pushed::QueuedWake
        } else {
            Pushed::Queued
        }
    }

    /// What is pending, taken by the writer (`chunks` is a list to reuse for the next ones).
    fn take(&mut self, chunks: Vec<Chunk>) -> Vec<Chunk> {
        self.bytes = 0;
        self.woken = false;
        std::mem::replace(&mut self.chunks, chunks)
    }

    /// The writer hands back a written buffer.
    fn give_back(&mut self, mut text: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS && text.capacity() <= SPARE_CAPACITY {
            text.clear();
            self.spare.push(text);
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
    out: Option<Box<dyn Write + Send>>,
}

/// How often the writer looks for lines when it is not woken (`FLUSH_SIZE`): a quiet proxy's lines wait at most
/// this long. Between wake-ups, queueing a line costs no system call.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

fn write_lines(pending: &Mutex<Pending>, counters: &Counters, closing: &AtomicBool) {
    let mut target: Option<Target> = None;
    // The list the chunks came in, kept for the next ones.
    let mut spare: Vec<Chunk> = Vec::new();
    loop {
        // Woken early (unparked) by `FLUSH_SIZE` bytes waiting, or by `close`.
        let last = closing.load(Relaxed);
        if !last {
            std::thread::park_timeout(FLUSH_INTERVAL);
        }
        let mut chunks = pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(std::mem::take(&mut spare));
        for chunk in &chunks {
            if target.as_ref().is_none_or(|t| t.path != chunk.path) {
                flush(&mut target, counters);
                target = Some(open(&chunk.path));
            }
            let written = target
                .as_mut()
                .and_then(|t| t.out.as_mut())
                .is_some_and(|out| out.write_all(&chunk.text).is_ok());
            let counter = if written {
                &counters.written
            } else {
                &counters.failed
            };
            counter.fetch_add(chunk.lines, Relaxed);
        }
        flush(&mut target, counters);
        {
            let mut p = pending.lock().unwrap_or_else(PoisonError::into_inner);
            for chunk in chunks.drain(..) {
                p.give_back(chunk.text);
            }
        }
        spare = chunks;
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
        out,
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

/// `ip:port` (`[ip]:port` for IPv6). IPv4, by far the common case, is put together in a stack buffer: through
/// `itoa` per octet it cost several hundred instructions per address.
fn push_addr(out: &mut String, addr: SocketAddr) {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => {
            let mut buf = [0u8; 15];
            let mut n = 0;
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            out.push_str(std::str::from_utf8(&buf[..n]).unwrap_or("?"));
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

fn push_hex(out: &mut String, bytes: &[u8; 16]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (b, pair) in bytes.iter().zip(buf.chunks_exact_mut(2)) {
        pair[0] = HEX[(b >> 4) as usize];
        pair[1] = HEX[(b & 15) as usize];
    }
    out.push_str(std::str::from_utf8(&buf).unwrap_or("?"));
}

/// Whether an eight-byte word holds a `"`, a `\`, DEL or a control character (the classic "has a byte less
/// than n" and "has a zero byte" tests; bytes of multi-byte UTF-8 characters never match).
fn word_needs_escaping(word: [u8; 8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let x = u64::from_le_bytes(word);
    let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    let special = has_zero(x ^ (ONES * u64::from(b'"')))
        | has_zero(x ^ (ONES * u64::from(b'\\')))
        | has_zero(x ^ (ONES * 0x7f));
    control | special != 0
}

/// Where the first word that may need escaping starts (`bytes.len()`: none does), eight bytes at a time, the
/// last few padded with a harmless byte. Nearly every field is clean throughout, so escaping costs a couple of
/// instructions per byte instead of a branch per byte.
fn first_dirty_word(bytes: &[u8]) -> usize {
    let mut chunks = bytes.chunks_exact(8);
    for (i, chunk) in chunks.by_ref().enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if word_needs_escaping(word) {
            return i * 8;
        }
    }
    let tail = chunks.remainder();
    let mut word = [b'a'; 8];
    word[..tail.len()].copy_from_slice(tail);
    if word_needs_escaping(word) {
        bytes.len() - tail.len()
    } else {
        bytes.len()
    }
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
    let clean = first_dirty_word(bytes);
    if clean == bytes.len() {
        out.push_str(v);
        out.push('"');
        return;
    }
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate().skip(clean) {
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
fn format_entry(e: &Entry<'_>, clock: &mut Clock, out: &mut String) {
    let (request_id, authority, path) = (e.request_id, e.authority, e.path);
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
        for field in [Some(e.listener), e.route, e.destination_service, e.source] {
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
            Some(t) => push_hex(out, &t.0),
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
            push_hex(out, &t.0);
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
    push_json(out, Some(e.listener));
    out.push_str(",\"route\":");
    push_json(out, e.route);
    out.push_str(",\"destination_service\":");
    push_json(out, e.destination_service);
    out.push_str(",\"source\":");
    push_json(out, e.source);
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

    fn config(json: bool) -> AccessLogConfig {
        AccessLogConfig {
            json,
            path: Arc::from("stdout"),
            sampling_ppm: 1_000_000,
        }
    }

    fn entry(config: &AccessLogConfig) -> Entry<'_> {
        Entry {
            config,
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_547_200_123),
            duration: Duration::from_micros(1500),
            trace_id: Some(TraceId([0xab; 16])),
            request_id: Some("abc"),
            method: &Method::POST,
            version: Version::HTTP_11,
            authority: Some("shop.example\""),
            path: "/cart?x=1",
            listener: "http",
            route: Some("HTTPRoute/default/shop/rule/0/match/0"),
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
        format_entry(&entry(&config(true)), &mut Clock::default(), &mut line);
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
        format_entry(&entry(&config(false)), &mut Clock::default(), &mut line);
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
    fn plain_entry(config: &AccessLogConfig, status: u16) -> Entry<'_> {
        Entry {
            config,
            start: SystemTime::UNIX_EPOCH,
            duration: Duration::ZERO,
            trace_id: None,
            request_id: None,
            method: &Method::GET,
            version: Version::HTTP_2,
            authority: None,
            path: "/",
            listener: "http",
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
        let (json, text) = (config(true), config(false));
        let authority = bounded(b"a\t\"b\\");
        let mut e = plain_entry(&json, 200);
        e.authority = Some(&authority);
        e.request_id = Some("x\" y");
        let mut line = String::new();
        format_entry(&e, &mut Clock::default(), &mut line);
        assert_eq!(line.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(v["authority"], "a\t\"b\\", "{line}");
        assert_eq!(v["request_id"], "x\" y", "{line}");
        e.config = &text;
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
            log.submit(&plain_entry(&config, status));
        }
        log.close(Duration::from_secs(5));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert_eq!(log.counters().written.load(Relaxed), 2);
    }

    #[test]
    fn json_strings_match_serde_json_for_every_special_byte_at_every_position() {
        let specials = ["\"", "\\", "\n", "\u{7f}", "\u{1}", "é", "日本", "\t"];
        for len in 0..20 {
            for special in specials {
                for at in 0..=len {
                    let mut v = "a".repeat(len);
                    v.insert_str(at, special);
                    let mut out = String::new();
                    push_json(&mut out, Some(&v));
                    let back: String = serde_json::from_str(&out).unwrap_or_default();
                    assert_eq!(back, v, "{out}");
                }
            }
        }
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for ip in [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [10, 9, 99, 100],
            [255, 255, 255, 255],
            [1, 20, 200, 5],
        ] {
            let addr = SocketAddr::from((ip, 8080));
            let mut out = String::new();
            push_addr(&mut out, addr);
            assert_eq!(out, addr.to_string());
        }
        let v6: SocketAddr = "[::1]:443".parse().unwrap_or(SocketAddr::from(([0; 4], 0)));
        let mut out = String::new();
        push_addr(&mut out, v6);
        assert_eq!(out, "[::1]:443");
    }

    #[test]
    fn lines_beyond_the_pending_bound_are_refused() {
        let mut pending = Pending::default();
        let path: Arc<str> = Arc::from("stdout");
        let line = vec![b'x'; 1024];
        let fits = MAX_PENDING / line.len();
        let pushed: Vec<Pushed> = (0..fits).map(|_| pending.push(&path, &line)).collect();
        assert!(!pushed.contains(&Pushed::Dropped));
        let wakes = pushed.iter().filter(|p| **p == Pushed::QueuedWake).count();
        assert_eq!(wakes, 1, "the writer is woken once for what waits");
        assert_eq!(
            pending.push(&path, &line),
            Pushed::Dropped,
            "the bound is kept"
        );
        assert_eq!(pending.chunks.len(), 1, "one path, one chunk");
        assert_eq!(pending.chunks[0].lines as usize, fits);
        let other: Arc<str> = Arc::from("/tmp/other.log");
        let mut pending = Pending::default();
        for (to, line) in [(&path, b"a\n"), (&other, b"b\n"), (&path, b"c\n")] {
            assert_eq!(pending.push(to, line), Pushed::Queued);
        }
        let order: Vec<&str> = pending.chunks.iter().map(|c| &*c.path).collect();
        assert_eq!(
            order,
            ["stdout", "/tmp/other.log", "stdout"],
            "lines keep their order"
        );
        // What the writer hands back is reused for the next chunk.
        let taken = pending.take(Vec::new());
        assert_eq!(taken.len(), 3);
        for chunk in taken {
            pending.give_back(chunk.text);
        }
        assert_eq!(pending.spare.len(), 3);
        pending.push(&path, b"d\n");
        assert_eq!(pending.spare.len(), 2, "a spare buffer was taken");
    }
}

//! Access logs: one line per request, JSON or text, as the Mesh's `spec.accessLog` says (carried in the snapshot as
//! [`AccessLogConfig`]). Lines are formatted and written by a thread of their own, fed through a bounded queue: a
//! slow disk or a full pipe never holds a request; what does not fit is dropped and counted.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Version};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

pub use crate::config::snapshot::AccessLogConfig;

/// Lines waiting to be written; beyond this, lines are dropped (and counted).
const QUEUE: usize = 4096;

/// What one request leaves in the log.
pub struct Entry {
    pub config: Arc<AccessLogConfig>,
    pub start: SystemTime,
    pub duration: Duration,
    pub request_id: Option<HeaderValue>,
    pub method: Method,
    pub version: Version,
    pub authority: Option<String>,
    /// Path and query as the client sent them.
    pub path: String,
    pub listener: Arc<str>,
    pub route: Option<Arc<str>>,
    pub destination_service: Option<Arc<str>>,
    /// The caller: the mTLS peer's SPIFFE ID, or the service this sidecar's outbound listener speaks for.
    pub source: Option<String>,
    pub downstream: SocketAddr,
    /// 0: the client went away before a response was made.
    pub status: u16,
    pub bytes_sent: u64,
    /// Why the request ended the way it did (`-`: nothing to say); see docs/observability.md.
    pub flags: &'static str,
}

/// The proxy's access log writer (started on first use) and its counters.
#[derive(Debug, Default)]
pub struct AccessLog {
    queue: OnceLock<SyncSender<Entry>>,
    counters: Arc<Counters>,
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
        let queue = self.queue.get_or_init(|| self.start());
        match queue.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn start(&self) -> SyncSender<Entry> {
        let (tx, rx) = sync_channel(QUEUE);
        let counters = self.counters.clone();
        let spawned = std::thread::Builder::new()
            .name("meshwork-access-log".into())
            .spawn(move || write_lines(&rx, &counters));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access log writer; access log lines are dropped");
        }
        tx
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

fn write_lines(rx: &Receiver<Entry>, counters: &Counters) {
    let mut target: Option<Target> = None;
    let mut line = String::new();
    while let Ok(mut entry) = rx.recv() {
        loop {
            if target.as_ref().is_none_or(|t| t.path != entry.config.path) {
                flush(&mut target, counters);
                target = Some(open(&entry.config.path));
            }
            line.clear();
            format_entry(&entry, &mut line);
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
            // Flush once the queue is empty: a burst becomes one write, a lone line goes out at once.
            match rx.try_recv() {
                Ok(next) => entry = next,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        flush(&mut target, counters);
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

/// One line, newline-terminated.
fn format_entry(e: &Entry, out: &mut String) {
    let start = time::OffsetDateTime::from(e.start)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let millis = e.duration.as_secs_f64() * 1000.0;
    let request_id = e.request_id.as_ref().and_then(|v| v.to_str().ok());
    let version = match e.version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    };
    if e.config.json {
        let v = serde_json::json!({
            "start_time": start,
            "request_id": request_id,
            "method": e.method.as_str(),
            "authority": e.authority,
            "path": e.path,
            "protocol": version,
            "status": e.status,
            "response_flags": e.flags,
            "duration_ms": (millis * 1000.0).round() / 1000.0,
            "bytes_sent": e.bytes_sent,
            "listener": &*e.listener,
            "route": e.route.as_deref(),
            "destination_service": e.destination_service.as_deref(),
            "source": e.source,
            "downstream_address": e.downstream.to_string(),
        });
        let _ = writeln!(out, "{v}");
    } else {
        let dash = |v: Option<&str>| v.unwrap_or("-").to_string();
        let _ = writeln!(
            out,
            "[{start}] \"{} {} {version}\" {} {} {} {millis:.3} \"{}\" \"{}\" {} {} {} {} {}",
            e.method,
            e.path.escape_debug(),
            e.status,
            e.flags,
            e.bytes_sent,
            dash(request_id).escape_debug(),
            dash(e.authority.as_deref()).escape_debug(),
            e.listener,
            dash(e.route.as_deref()),
            dash(e.destination_service.as_deref()),
            dash(e.source.as_deref()),
            e.downstream,
        );
    }
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
            request_id: Some(HeaderValue::from_static("abc")),
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
            status: 503,
            bytes_sent: 12,
            flags: "UH",
        }
    }

    #[test]
    fn a_json_line_has_every_field() {
        let mut line = String::new();
        format_entry(&entry(true), &mut line);
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
    }

    #[test]
    fn a_text_line_escapes_what_the_client_sent() {
        let mut line = String::new();
        format_entry(&entry(false), &mut line);
        assert_eq!(
            line,
            "[2025-12-01T00:00:00.123Z] \"POST /cart?x=1 HTTP/1.1\" 503 UH 12 1.500 \"abc\" \"shop.example\\\"\" http HTTPRoute/default/shop/rule/0/match/0 - - 127.0.0.1:5000\n"
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
}

//! Spans leave the proxy here: the request path queues each finished request's spans (never waiting: a full
//! queue drops them, counted), and one thread of the proxy's own batches them and sends them with
//! opentelemetry-otlp's exporter (OTLP/gRPC or OTLP/HTTP) to the collector the current configuration names. A
//! slow or absent collector fills the queue and costs dropped spans, never a request's time.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::time::Instant;

use opentelemetry::trace::{
    SpanContext, SpanId as OtelSpanId, SpanKind, Status, TraceFlags, TraceId as OtelTraceId,
    TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use super::settings::{Protocol, TraceConfig};
use super::span::{Kind, SpanRecord, Value};

/// Who the proxy is, for every span's resource (`service.name` unless the configuration names one).
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub service: String,
    pub namespace: String,
    pub node_id: String,
    pub role: &'static str,
}

/// One request's spans and the configuration they were made under (a live change switches the collector).
struct Batch {
    config: Arc<TraceConfig>,
    spans: Vec<SpanRecord>,
}

/// The proxy's span exporter (its thread starts with the first traced request) and its counters.
#[derive(Debug, Default)]
pub struct Tracer {
    identity: OnceLock<Identity>,
    sender: OnceLock<Sender>,
    counters: Arc<Counters>,
    closing: Arc<AtomicBool>,
}

#[derive(Debug)]
struct Sender {
    queue: SyncSender<Batch>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

impl Tracer {
    /// Names the proxy in its spans' resource (once, at start).
    pub fn identify(&self, identity: Identity) {
        let _ = self.identity.set(identity);
    }

    /// Queues a finished request's spans; drops them (counted) when the exporter is behind.
    pub fn submit(&self, config: &Arc<TraceConfig>, spans: Vec<SpanRecord>) {
        if spans.is_empty() {
            return;
        }
        let n = spans.len() as u64;
        let sender = self.sender.get_or_init(|| self.start(config.max_queue));
        let batch = Batch {
            config: config.clone(),
            spans,
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            sender.queue.try_send(batch)
        {
            self.counters.dropped.fetch_add(n, Relaxed);
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// At shutdown: the exporter sends what is queued (within its timeout) and ends; waits at most `limit`.
    pub fn close(&self, limit: Duration) {
        self.closing.store(true, Relaxed);
        let Some(sender) = self.sender.get() else {
            return;
        };
        let thread = sender
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(thread) = thread else {
            return;
        };
        let until = Instant::now() + limit;
        while !thread.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }

    fn start(&self, queue: usize) -> Sender {
        let (tx, rx) = sync_channel(queue.max(1));
        let identity = self.identity.get().cloned().unwrap_or_default();
        let (counters, closing) = (self.counters.clone(), self.closing.clone());
        let spawned = std::thread::Builder::new()
            .name("meshwork-trace-export".into())
            .spawn(move || run(&rx, &identity, &counters, &closing));
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the span exporter: spans are dropped");
                None
            }
        };
        Sender {
            queue: tx,
            thread: Mutex::new(thread),
        }
    }
}

impl Collector for Tracer {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "meshwork_trace_spans",
            "Spans by what became of them: exported, dropped (the exporter's queue was full), failed (the collector refused them or could not be reached)",
            None,
            MetricType::Counter,
        )?;
        let c = &self.counters;
        for (result, n) in [
            ("exported", &c.exported),
            ("dropped", &c.dropped),
            ("failed", &c.failed),
        ] {
            ConstCounter::new(n.load(Relaxed))
                .encode(family.encode_family(&[("result", result)])?)?;
        }
        Ok(())
    }
}

/// The exporter for one configuration.
struct Current {
    config: Arc<TraceConfig>,
    exporter: Option<opentelemetry_otlp::SpanExporter>,
}

/// The exporter thread: batches of up to `max_batch` spans, sent when full or `schedule_delay` after the first
/// span of the batch, one export at a time (each bounded by the configuration's timeout).
fn run(rx: &Receiver<Batch>, identity: &Identity, counters: &Counters, closing: &AtomicBool) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "span exporter: no runtime; spans are dropped");
            return;
        }
    };
    let mut current: Option<Current> = None;
    let mut pending: Vec<SpanRecord> = Vec::new();
    let mut due: Option<Instant> = None;
    let mut warned: Option<Instant> = None;
    loop {
        let wait = due.map_or(Duration::from_millis(100), |d| {
            d.saturating_duration_since(Instant::now())
        });
        let received = rx.recv_timeout(wait.min(Duration::from_millis(100)));
        let closing_now = closing.load(Relaxed);
        match received {
            Ok(batch) => {
                let same = current.as_ref().is_some_and(|c| *c.config == *batch.config);
                if !same {
                    send(&runtime, &mut current, &mut pending, counters, &mut warned);
                    // The gRPC channel is made inside the runtime it will run on.
                    let _entered = runtime.enter();
                    current = Some(exporter_for(batch.config, identity));
                }
                pending.extend(batch.spans);
                let max = current.as_ref().map_or(512, |c| c.config.max_batch);
                let delay = current
                    .as_ref()
                    .map_or(Duration::from_secs(5), |c| c.config.schedule_delay);
                due.get_or_insert_with(|| Instant::now() + delay);
                if pending.len() >= max {
                    send(&runtime, &mut current, &mut pending, counters, &mut warned);
                    due = None;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if due.is_some_and(|d| Instant::now() >= d) || closing_now {
            send(&runtime, &mut current, &mut pending, counters, &mut warned);
            due = None;
        }
        if closing_now && rx.try_recv().is_err() {
            break;
        }
    }
}

fn exporter_for(config: Arc<TraceConfig>, identity: &Identity) -> Current {
    let built = match config.protocol {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.endpoint.clone())
            .with_timeout(config.timeout)
            .build(),
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(config.endpoint.clone())
            .with_timeout(config.timeout)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_headers(Default::default())
            .build(),
    };
    let exporter = match built {
        Ok(mut e) => {
            e.set_resource(&resource(&config, identity));
            Some(e)
        }
        Err(e) => {
            tracing::warn!(endpoint = %config.endpoint, error = %e, "span exporter cannot be made: spans are dropped");
            None
        }
    };
    Current { config, exporter }
}

fn resource(config: &TraceConfig, identity: &Identity) -> Resource {
    let mut attrs = vec![
        KeyValue::new("service.name", identity.service.clone()),
        KeyValue::new("service.namespace", identity.namespace.clone()),
        KeyValue::new("service.instance.id", identity.node_id.clone()),
        KeyValue::new("meshwork.proxy.role", identity.role),
        KeyValue::new("telemetry.sdk.name", "meshwork-proxy"),
        KeyValue::new("telemetry.sdk.language", "rust"),
        KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
    ];
    for (k, v) in &config.resource {
        attrs.retain(|a| a.key.as_str() != k);
        attrs.push(KeyValue::new(k.clone(), v.clone()));
    }
    Resource::builder_empty().with_attributes(attrs).build()
}

/// Exports what is pending with the current exporter; spans it could not send are counted as failed.
fn send(
    runtime: &tokio::runtime::Runtime,
    current: &mut Option<Current>,
    pending: &mut Vec<SpanRecord>,
    counters: &Counters,
    warned: &mut Option<Instant>,
) {
    if pending.is_empty() {
        return;
    }
    let n = pending.len() as u64;
    let spans: Vec<SpanData> = pending.drain(..).map(span_data).collect();
    let Some(exporter) = current.as_mut().and_then(|c| c.exporter.as_mut()) else {
        counters.failed.fetch_add(n, Relaxed);
        return;
    };
    match runtime.block_on(exporter.export(spans)) {
        Ok(()) => {
            counters.exported.fetch_add(n, Relaxed);
        }
        Err(e) => {
            counters.failed.fetch_add(n, Relaxed);
            // At most one warning a minute: a collector that is down must not flood the proxy's log.
            if warned.is_none_or(|w| w.elapsed() > Duration::from_secs(60)) {
                *warned = Some(Instant::now());
                let endpoint = current
                    .as_ref()
                    .map(|c| c.config.endpoint.clone())
                    .unwrap_or_default();
                tracing::warn!(%endpoint, error = %e, spans = n, "span export failed (warned at most once a minute)");
            }
        }
    }
}

fn span_data(s: SpanRecord) -> SpanData {
    let mut events = SpanEvents::default();
    events.events = s
        .events
        .into_iter()
        .map(|e| opentelemetry::trace::Event::new(e.name, e.time, attributes(e.attributes), 0))
        .collect();
    events.dropped_count = s.dropped_events;
    let context = SpanContext::new(
        OtelTraceId::from_bytes(s.trace_id.0),
        OtelSpanId::from_bytes(s.span_id.0),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    SpanData {
        span_context: context,
        parent_span_id: s
            .parent
            .map_or(OtelSpanId::INVALID, |p| OtelSpanId::from_bytes(p.0)),
        parent_span_is_remote: s.parent_remote,
        span_kind: match s.kind {
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
        },
        name: Cow::Owned(s.name),
        start_time: s.start,
        end_time: s.end,
        attributes: attributes(s.attributes),
        dropped_attributes_count: 0,
        events,
        links: SpanLinks::default(),
        status: match s.error {
            Some(description) => Status::Error {
                description: Cow::Borrowed(description),
            },
            None => Status::Unset,
        },
        instrumentation_scope: InstrumentationScope::builder("meshwork-proxy")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    }
}

fn attributes(attrs: Vec<(&'static str, Value)>) -> Vec<KeyValue> {
    attrs
        .into_iter()
        .map(|(k, v)| match v {
            Value::Static(s) => KeyValue::new(k, s),
            Value::Shared(s) => KeyValue::new(k, s.to_string()),
            Value::Owned(s) => KeyValue::new(k, s),
            Value::Int(i) => KeyValue::new(k, i),
        })
        .collect()
}

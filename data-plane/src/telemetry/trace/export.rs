//! Spans leave the proxy here: the request path queues each finished request's spans (never waiting: a full
//! queue drops them, counted), and one thread of the proxy's own batches them, encodes them as OTLP (`otlp.rs`)
//! and sends them over OTLP/HTTP (hyper) or OTLP/gRPC (tonic) to the collector the current configuration names,
//! one export at a time, each within the configured timeout. A slow or absent collector fills the queue and
//! costs dropped spans, never a request's time.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use super::otlp::Encoder;
use super::settings::{Protocol, TraceConfig};
use super::span::SpanRecord;

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
    /// Spans queued since the exporter last looked: a full batch wakes it.
    queued: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Sender {
    queue: SyncSender<Batch>,
    thread: Mutex<Option<JoinHandle<()>>>,
    waker: Option<std::thread::Thread>,
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
        match sender.queue.try_send(batch) {
            Ok(()) => {
                // A full batch waiting wakes the exporter (else it looks within `POLL`): under load it sends as
                // batches fill, and what waits stays small.
                let before = self.queued.fetch_add(n as usize, Relaxed);
                let max = config.max_batch.max(1);
                if before < max && before + n as usize >= max {
                    if let Some(t) = &sender.waker {
                        t.unpark();
                    }
                }
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(n, Relaxed);
            }
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
        thread.thread().unpark();
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
        let (counters, closing, queued) = (
            self.counters.clone(),
            self.closing.clone(),
            self.queued.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("meshwork-trace-export".into())
            .spawn(move || run(&rx, &identity, &counters, &closing, &queued));
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the span exporter: spans are dropped");
                None
            }
        };
        Sender {
            queue: tx,
            waker: thread.as_ref().map(|t| t.thread().clone()),
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

/// Where one configuration's exports go.
enum Destination {
    Http(Box<Client<HttpConnector, Full<Bytes>>>, http::Uri),
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    /// The endpoint could not be used (the reason was logged): exports count as failed.
    Unusable,
}

/// The exporter for one configuration.
struct Current {
    config: Arc<TraceConfig>,
    resource: Vec<(String, String)>,
    destination: Destination,
}

/// How often the exporter looks at its queue while spans are coming (`IDLE_POLL` when the last look found none);
/// between looks, a full batch waiting (`max_batch` spans) wakes it. Looking rather than being woken for every
/// request means queueing spans costs no system call but once a batch. At the default queue of 2,048 requests'
/// spans, a look every 10 ms keeps up with 200,000 traced requests a second.
const POLL: Duration = Duration::from_millis(10);
const IDLE_POLL: Duration = Duration::from_millis(100);

/// The exporter thread: batches of up to `max_batch` spans, sent when full (noticed at its next look) or
/// `schedule_delay` after the first span of the batch, one export at a time (each bounded by the configuration's
/// timeout).
fn run(
    rx: &Receiver<Batch>,
    identity: &Identity,
    counters: &Counters,
    closing: &AtomicBool,
    queued: &AtomicUsize,
) {
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
    let mut out = Exporter {
        runtime,
        current: None,
        pending: Vec::new(),
        encoder: Encoder::default(),
        warned: None,
    };
    let mut due: Option<Instant> = None;
    let mut poll = IDLE_POLL;
    loop {
        let closing_now = closing.load(Relaxed);
        if !closing_now {
            let wait = due.map_or(poll, |d| {
                d.saturating_duration_since(Instant::now()).min(poll)
            });
            std::thread::park_timeout(wait);
        }
        poll = IDLE_POLL;
        queued.store(0, Relaxed);
        loop {
            match rx.try_recv() {
                Ok(batch) => {
                    poll = POLL;
                    out.take(batch, identity, counters, &mut due);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    out.send(counters);
                    return;
                }
            }
        }
        // Closing: what was still queued goes out with this last export, then the thread ends.
        if due.is_some_and(|d| Instant::now() >= d) || closing_now {
            out.send(counters);
            due = None;
        }
        if closing_now {
            break;
        }
    }
}

/// The exporter thread's state.
struct Exporter {
    runtime: tokio::runtime::Runtime,
    current: Option<Current>,
    pending: Vec<SpanRecord>,
    encoder: Encoder,
    warned: Option<Instant>,
}

impl Exporter {
    /// One request's spans join the pending batch (sent first if they come under another configuration); a
    /// full batch is sent at once, else `due` says when.
    fn take(
        &mut self,
        batch: Batch,
        identity: &Identity,
        counters: &Counters,
        due: &mut Option<Instant>,
    ) {
        let same = self
            .current
            .as_ref()
            .is_some_and(|c| *c.config == *batch.config);
        if !same {
            self.send(counters);
            self.current = Some(self.destination_for(batch.config, identity));
        }
        self.pending.extend(batch.spans);
        let (max, delay) = self
            .current
            .as_ref()
            .map_or((512, Duration::from_secs(5)), |c| {
                (c.config.max_batch, c.config.schedule_delay)
            });
        due.get_or_insert_with(|| Instant::now() + delay);
        if self.pending.len() >= max {
            self.send(counters);
            *due = None;
        }
    }

    fn destination_for(&self, config: Arc<TraceConfig>, identity: &Identity) -> Current {
        let destination = match config.protocol {
            Protocol::HttpProtobuf => match config.endpoint.parse::<http::Uri>() {
                Ok(uri) => {
                    let mut connector = HttpConnector::new();
                    connector.set_connect_timeout(Some(config.timeout));
                    let client = Client::builder(TokioExecutor::new())
                        .pool_idle_timeout(Duration::from_secs(30))
                        .build(connector);
                    Destination::Http(Box::new(client), uri)
                }
                Err(e) => unusable(&config, &e.to_string()),
            },
            Protocol::Grpc => {
                match tonic::transport::Endpoint::from_shared(config.endpoint.clone()) {
                    Ok(endpoint) => {
                        // The channel is made inside the runtime it will run on.
                        let _entered = self.runtime.enter();
                        let channel = endpoint
                            .connect_timeout(config.timeout)
                            .timeout(config.timeout)
                            .connect_lazy();
                        Destination::Grpc(tonic::client::Grpc::new(channel))
                    }
                    Err(e) => unusable(&config, &e.to_string()),
                }
            }
        };
        Current {
            resource: resource(&config, identity),
            config,
            destination,
        }
    }

    /// Exports what is pending; spans the collector did not take are counted as failed.
    fn send(&mut self, counters: &Counters) {
        if self.pending.is_empty() {
            return;
        }
        let n = self.pending.len() as u64;
        let Some(current) = &self.current else {
            counters.failed.fetch_add(n, Relaxed);
            self.pending.clear();
            return;
        };
        let body = self.encoder.export(&current.resource, &self.pending);
        self.pending.clear();
        let timeout = current.config.timeout;
        let result = match &current.destination {
            Destination::Http(client, uri) => {
                self.runtime.block_on(post(client, uri, body, timeout))
            }
            Destination::Grpc(grpc) => {
                let mut grpc = grpc.clone();
                self.runtime.block_on(async move {
                    tokio::time::timeout(timeout, grpc_export(&mut grpc, body))
                        .await
                        .unwrap_or_else(|_| Err("timed out".to_string()))
                })
            }
            Destination::Unusable => Err("the endpoint cannot be used".to_string()),
        };
        match result {
            Ok(()) => {
                counters.exported.fetch_add(n, Relaxed);
            }
            Err(e) => {
                counters.failed.fetch_add(n, Relaxed);
                // At most one warning a minute: a collector that is down must not flood the proxy's log.
                if self
                    .warned
                    .is_none_or(|w| w.elapsed() > Duration::from_secs(60))
                {
                    self.warned = Some(Instant::now());
                    let endpoint = &current.config.endpoint;
                    // The collector's text is shown quoted and escaped: it must not forge log lines.
                    tracing::warn!(%endpoint, error = ?e, spans = n, "span export failed (warned at most once a minute)");
                }
            }
        }
    }
}

fn unusable(config: &TraceConfig, why: &str) -> Destination {
    tracing::warn!(endpoint = %config.endpoint, error = %why, "span exporter cannot use this endpoint: spans are dropped");
    Destination::Unusable
}

/// OTLP/HTTP: a protobuf POST; any 2xx is success (the body, an ExportTraceServiceResponse, is not needed).
async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    uri: &http::Uri,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), String> {
    let req = http::Request::post(uri.clone())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let sent = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read (and so release) the connection; the answer itself is not used.
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        match status.is_success() {
            true => Ok(()),
            false => Err(format!("the collector answered {status}")),
        }
    };
    tokio::time::timeout(timeout, sent)
        .await
        .unwrap_or_else(|_| Err("timed out".to_string()))
}

/// OTLP/gRPC: the collector's TraceService/Export with the already-encoded request.
async fn grpc_export(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    body: Vec<u8>,
) -> Result<(), String> {
    grpc.ready().await.map_err(|e| e.to_string())?;
    let path = http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    grpc.unary::<Bytes, (), _>(tonic::Request::new(Bytes::from(body)), path, Encoded)
        .await
        .map(|_| ())
        .map_err(|s| format!("{}: {}", s.code(), s.message()))
}

/// A gRPC codec for a message already encoded (the request), whose answer is not read.
#[derive(Debug, Clone, Copy, Default)]
struct Encoded;

impl tonic::codec::Codec for Encoded {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = Encoded;
    type Decoder = Encoded;
    fn encoder(&mut self) -> Encoded {
        Encoded
    }
    fn decoder(&mut self) -> Encoded {
        Encoded
    }
}

impl tonic::codec::Encoder for Encoded {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Encoded {
    type Item = ();
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        bytes::Buf::advance(src, n);
        Ok(Some(()))
    }
}

/// Every span's resource: who the proxy is, then the configured attributes (which may override those).
fn resource(config: &TraceConfig, identity: &Identity) -> Vec<(String, String)> {
    let mut attrs: Vec<(String, String)> = [
        ("service.name", identity.service.as_str()),
        ("service.namespace", identity.namespace.as_str()),
        ("service.instance.id", identity.node_id.as_str()),
        ("meshwork.proxy.role", identity.role),
        ("telemetry.sdk.name", "meshwork-proxy"),
        ("telemetry.sdk.language", "rust"),
        ("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in &config.resource {
        attrs.retain(|(key, _)| key != k);
        attrs.push((k.clone(), v.clone()));
    }
    attrs
}

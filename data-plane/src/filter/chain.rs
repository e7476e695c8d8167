//! Runs a route's Wasm filters over a request: request headers, body and trailers in order, response headers,
//! body and trailers in reverse order (as Envoy's decoder/encoder chains do), then done/log/delete when the chain
//! is dropped (after the response body when a filter reads it). Filters work on the request's and response's own
//! header maps (moved into the chain and back), so headers are never copied per request; pseudo-header edits
//! (method, path, authority, status) are applied afterwards. A failing filter fails only this request, as its fail
//! strategy says.
//!
//! A stream keeps its context on the instance it started on. If that instance is discarded meanwhile (another
//! stream's callback trapped or hit a limit on it), the stream's filter state is gone: the filter can neither pass
//! nor deny it any more (`Fault::Lost`). FAIL_OPEN skips the filter from then on; FAIL_CLOSE fails the stream at
//! its next callback (a paused request or response, a body, trailers), so nothing the filter had not passed goes on.
//!
//! A filter that pauses in a headers callback stops the stream (as in Envoy: nothing further runs) until it calls
//! `proxy_continue_stream` or answers locally, typically from `proxy_on_http_call_response`: its callouts are sent
//! and answered while the request waits. A body callback that pauses holds the bytes seen so far; one that pauses at
//! the body's end holds that end the same way (`BodyStep::Wait`), so a filter that decides on the whole body after a
//! callout is never bypassed. Other callouts are sent in the background and answered to the stream context while it
//! lives; a paused stream with none of its own left waits for those.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{request, response, Response, StatusCode};

use super::wasm::abi::ACTION_CONTINUE;
use super::wasm::callout::{self, Callout};
use super::wasm::stream::{
    header_pairs, method_text, status_text, to_header_map, Headers, Pseudo, StreamData, Text,
};
use super::wasm::{PluginHandle, WasmError};
use crate::telemetry::Journal;
use crate::upstream::body::{BoxError, ResponseBody};

struct Active {
    plugin: Arc<PluginHandle>,
    slot: usize,
    instance: u64,
    /// Boxed: lent to the instance for each callback by a pointer swap.
    stream: Box<StreamData>,
    /// The filter exports `proxy_on_request_body` / `proxy_on_response_body`.
    request_body: bool,
    response_body: bool,
    /// ... and `proxy_on_request_trailers` / `proxy_on_response_trailers`.
    request_trailers: bool,
    response_trailers: bool,
    /// ... and `proxy_on_response_headers` (without it, the filter has no say on the response).
    response_headers: bool,
    /// Callouts of this stream's being answered in the background (made only when one is).
    background: Option<Arc<Background>>,
    /// The request's journal when its trace is recorded: each callback's time goes there.
    journal: Option<Arc<Journal>>,
}

/// A stream's callouts in flight in the background: a stream waiting on its filter with no callout of its own to
/// send waits for these instead (their answers may resume it).
#[derive(Default)]
struct Background {
    in_flight: std::sync::atomic::AtomicUsize,
    answered: tokio::sync::Notify,
}

/// Counts one background callout from when it is sent until its answer has been delivered (or dropped).
struct InFlight(Arc<Background>);

impl InFlight {
    fn new(b: Arc<Background>) -> Self {
        b.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(b)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.answered.notify_one();
    }
}

impl Active {
    fn reads_body(&self, response: bool) -> bool {
        if response {
            self.response_body
        } else {
            self.request_body
        }
    }

    fn reads_trailers(&self, response: bool) -> bool {
        if response {
            self.response_trailers
        } else {
            self.request_trailers
        }
    }
}

/// The filters a stream went through, inline for the usual one or two (no allocation of their own).
type Actives = smallvec::SmallVec<[Active; 2]>;
type Shared = Arc<Mutex<Actives>>;

/// Sends callouts a stream callback made without pausing, in the background; each answer goes to that stream
/// context while the chain lives (calls the root context made go to the root context).
fn send_in_background(active: &Shared, index: usize, calls: Vec<Callout>) {
    if calls.is_empty() {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Some(background) = lock(active)
        .get_mut(index)
        .map(|a| a.background.get_or_insert_with(Default::default).clone())
    else {
        return;
    };
    for call in calls {
        let weak = Arc::downgrade(active);
        let counted = InFlight::new(background.clone());
        rt.spawn(async move {
            let _counted = counted;
            let Some(plugin) = weak
                .upgrade()
                .and_then(|a| lock(&a).get(index).map(|a| a.plugin.clone()))
            else {
                return;
            };
            let response = callout::answer(plugin.shared_callouts(), call.clone()).await;
            let Some(active) = weak.upgrade() else { return };
            let more = {
                let mut list = lock(&active);
                let Some(a) = list.get_mut(index) else { return };
                if a.stream.context_id != call.context_id {
                    return;
                }
                let r = timed(
                    a.journal.as_ref(),
                    &a.plugin,
                    "on_http_call_response",
                    || {
                        a.plugin.run(a.slot, Some(a.instance), |i| {
                            i.on_http_call_response(Some(&mut a.stream), &call, response)?;
                            Ok(i.take_calls())
                        })
                    },
                );
                match r {
                    Ok(Some((more, _))) => more,
                    _ => Vec::new(),
                }
            };
            send_in_background(&active, index, more);
        });
    }
}

/// How a paused filter's stream ended its wait.
enum Settled {
    Continue,
    /// The filter answered locally: the reply is on its stream (`local_response`).
    Replied,
    Fail(FilterError),
}

impl Settled {
    /// As a headers phase's step (no callouts are left to send once a pause has settled).
    fn into_step(self, a: &mut Active) -> Step {
        match self {
            Settled::Continue => Step::Next(Vec::new()),
            Settled::Replied => match local_response(&mut a.stream) {
                Some(r) => Step::Stop(Verdict::Respond(r)),
                None => Step::Next(Vec::new()),
            },
            Settled::Fail(e) => Step::Stop(Verdict::Fail(e)),
        }
    }
}

/// What one filter's headers callback means for its phase.
enum Step {
    /// On to the next filter; the callouts the callback made without pausing are sent in the background.
    Next(Vec<Callout>),
    /// The phase stops here with this verdict.
    Stop(Verdict),
}

/// Where a waiting stream's filter state is: held by the headers phase that waits, or in the chain it shares with
/// a body (a body callback that paused at the end of the stream). `None`: the chain has ended meanwhile.
trait Holder {
    fn with<R>(&mut self, f: impl FnOnce(&mut Active) -> R) -> Option<R>;
}

impl Holder for &mut Active {
    fn with<R>(&mut self, f: impl FnOnce(&mut Active) -> R) -> Option<R> {
        Some(f(self))
    }
}

/// The filter at `index` of a chain shared with a body; locked only while a callback runs, never across a wait.
struct InChain {
    shared: Shared,
    index: usize,
}

impl Holder for InChain {
    fn with<R>(&mut self, f: impl FnOnce(&mut Active) -> R) -> Option<R> {
        lock(&self.shared).get_mut(self.index).map(f)
    }
}

/// What a waiting stream's state says: it is settled, or it still waits.
enum Waiting {
    Settled(Settled),
    /// No callout of its own is left to send, but some sent in the background are still to be answered.
    OnBackground(Arc<Background>),
    Callout(Callout, Arc<PluginHandle>),
}

/// Waits on a filter that paused: sends its callouts one after another and delivers each answer
/// (`proxy_on_http_call_response`), until it resumes the stream, answers locally, closes the stream or fails. With
/// no callout of its own left, it waits for those the stream sent in the background. A pause that nothing can
/// resume any more fails the request with 500 rather than hang; a stream whose instance was lost meanwhile fails as
/// its fail strategy says.
async fn settle(mut h: impl Holder, calls: Vec<Callout>) -> Settled {
    let mut pending: std::collections::VecDeque<Callout> = calls.into();
    loop {
        let next = h.with(|a| next_wait(a, &mut pending));
        let (call, plugin) = match next {
            None => return lost_chain(),
            Some(Waiting::Settled(s)) => return s,
            Some(Waiting::OnBackground(b)) => {
                let answered = b.answered.notified();
                if b.in_flight.load(Ordering::Acquire) > 0 {
                    answered.await;
                }
                continue;
            }
            Some(Waiting::Callout(call, plugin)) => (call, plugin),
        };
        let response = callout::answer(plugin.shared_callouts(), call.clone()).await;
        let delivered = h.with(|a| {
            let result = timed(
                a.journal.as_ref(),
                &a.plugin,
                "on_http_call_response",
                || {
                    a.plugin.run(a.slot, Some(a.instance), |i| {
                        let stream =
                            (call.context_id == a.stream.context_id).then_some(&mut a.stream);
                        i.on_http_call_response(stream, &call, response)?;
                        Ok((i.take_calls(), i.closed()))
                    })
                },
            );
            match outcome(result) {
                Ok(((_, true), _)) => Err(Settled::Fail(FilterError::Closed(
                    a.plugin.meta.name.clone(),
                ))),
                Ok(((more, false), _)) => Ok(more),
                // Failed, or the instance was replaced while the stream waited: nothing can resume it there.
                Err(fault) => Err(fault_settles(&a.plugin, fault)),
            }
        });
        match delivered {
            None => return lost_chain(),
            Some(Ok(more)) => pending.extend(more),
            Some(Err(settled)) => return settled,
        }
    }
}

/// One look at a waiting stream: settled (a reply, a resume, a lost instance, nothing left that could resume it),
/// or what to wait on next.
fn next_wait(a: &mut Active, pending: &mut std::collections::VecDeque<Callout>) -> Waiting {
    if a.stream.local_response.is_some() {
        return Waiting::Settled(Settled::Replied);
    }
    if a.stream.resumed {
        a.stream.resumed = false;
        if !pending.is_empty() {
            tracing::debug!(plugin = %a.plugin.meta.name, "callouts outstanding after resume; their answers are dropped");
        }
        return Waiting::Settled(Settled::Continue);
    }
    if let Some(call) = pending.pop_front() {
        return Waiting::Callout(call, a.plugin.clone());
    }
    if let Some(b) = a
        .background
        .as_ref()
        .filter(|b| b.in_flight.load(Ordering::Acquire) > 0)
    {
        return Waiting::OnBackground(b.clone());
    }
    // A background answer may have come after the instance was lost (it is dropped then): a lost stream is a
    // fault, not a stuck one.
    if matches!(a.plugin.run(a.slot, Some(a.instance), |_| Ok(())), Ok(None)) {
        return Waiting::Settled(fault_settles(&a.plugin, Fault::Lost));
    }
    Waiting::Settled(Settled::Fail(FilterError::Stuck(
        a.plugin.meta.name.clone(),
    )))
}

/// A fault while a stream waits, under the plugin's fail strategy.
fn fault_settles(plugin: &PluginHandle, fault: Fault) -> Settled {
    match fail_closed(plugin, fault) {
        None => Settled::Continue,
        Some(fault) => Settled::Fail(failed(plugin, fault)),
    }
}

/// The chain ended while a body waited on one of its filters (the response went its way without the request's
/// end): the filter can no longer pass the body.
fn lost_chain() -> Settled {
    Settled::Fail(FilterError::Ended)
}

fn lock(active: &Shared) -> MutexGuard<'_, Actives> {
    active.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The filters a request went through; dropping it ends their stream contexts. Shared with the body filters
/// (`BodyFilter`), which run the body callbacks while the bodies stream. A request with no filter has no shared
/// state at all (no allocation).
#[derive(Default)]
pub struct Chain {
    active: Option<Shared>,
}

/// A body larger than a pausing Wasm filter may buffer (`limits.bodyBuffer`). On the request side this answers
/// 413; on the response side (headers already sent) it aborts the response.
#[derive(Debug, thiserror::Error)]
#[error("the {side} body exceeds the {limit} bytes a Wasm filter may buffer")]
pub struct BodyTooLarge {
    pub side: &'static str,
    pub limit: usize,
}

/// A Wasm filter failed in a body or trailers callback, or lost the stream before it (and its fail strategy is
/// FAIL_CLOSE).
#[derive(Debug, thiserror::Error)]
#[error("wasm plugin {plugin} failed on the body: {error}")]
pub struct BodyFilterFailed {
    pub plugin: String,
    pub error: Fault,
}

pub enum BodyStep {
    /// Every body filter continued: the held bytes may go on.
    Release,
    /// A filter paused: keep holding.
    Hold,
    /// A filter answered the request locally from its request-body callback (`proxy_send_local_response`): the
    /// request body ends here and the reply (`Chain::body_reply`) replaces whatever the upstream would answer.
    Replied(String),
    /// A filter paused at the end of the stream: the body waits on it (`BodyFilter::wait`) and then goes on
    /// through the filters after it (`BodyFilter::run_from`). Until then nothing of the body's end goes on.
    Wait(BodyWait),
}

/// A body filter that paused at the end of the stream, with the callouts its callback made.
pub struct BodyWait {
    /// Its place in this body's order, and in the chain.
    step: usize,
    index: usize,
    calls: Vec<Callout>,
}

/// The request body was cut short because a Wasm filter answered the request from its body callback.
#[derive(Debug, thiserror::Error)]
#[error("wasm plugin {plugin} answered the request from its body callback")]
pub struct BodyReplied {
    pub plugin: String,
}

/// Runs the chain's body callbacks over the request body (filters in order) or the response body (reverse order).
pub struct BodyFilter {
    active: Shared,
    response: bool,
    pub limit: usize,
}

/// A future that waits on a paused body filter: the step to go on from, or why the body stops.
pub type Resume =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<usize, BoxError>> + Send>>;

impl BodyFilter {
    /// Offers `buffer` (everything held so far) to each body filter in turn; a filter may rewrite it.
    pub fn run(
        &self,
        buffer: &mut Bytes,
        end_of_stream: bool,
    ) -> Result<BodyStep, BodyFilterFailed> {
        self.run_from(buffer, end_of_stream, 0)
    }

    /// Like `run`, from the `from`th body filter in this body's order (after a wait on the one before it).
    pub fn run_from(
        &self,
        buffer: &mut Bytes,
        end_of_stream: bool,
        from: usize,
    ) -> Result<BodyStep, BodyFilterFailed> {
        let response = self.response;
        let mut active = lock(&self.active);
        let count = active.len();
        let mut background = Vec::new();
        let step = (|| {
            for step in from..count {
                // Request bodies go through the filters in order, response bodies in reverse.
                let index = if response { count - 1 - step } else { step };
                let a = &mut active[index];
                if !a.reads_body(response) {
                    continue;
                }
                let (r, calls) = offer_body(a, buffer, response, end_of_stream);
                if a.stream.local_response.is_some() {
                    if !response {
                        // Kept on the stream for `Chain::body_reply`; the body stops here.
                        return Ok(BodyStep::Replied(a.plugin.meta.name.clone()));
                    }
                    a.stream.local_response = None;
                    tracing::warn!(plugin = %a.plugin.meta.name, "a local reply from a response-body callback comes after the response headers were sent; ignored");
                }
                match r {
                    Ok(action) if action != ACTION_CONTINUE && !a.stream.resumed => {
                        if end_of_stream {
                            return Ok(BodyStep::Wait(BodyWait { step, index, calls }));
                        }
                        background.push((index, calls));
                        return Ok(BodyStep::Hold);
                    }
                    Ok(_) => {
                        a.stream.resumed = false;
                        background.push((index, calls));
                    }
                    Err(fault) => {
                        if let Some(error) = fail_closed(&a.plugin, fault) {
                            return Err(BodyFilterFailed {
                                plugin: a.plugin.meta.name.clone(),
                                error,
                            });
                        }
                    }
                }
            }
            Ok(BodyStep::Release)
        })();
        drop(active);
        for (index, calls) in background {
            send_in_background(&self.active, index, calls);
        }
        step
    }

    /// Waits on the filter that paused at the end of the body (sending its callouts), as a headers pause waits:
    /// the step to go on from once it resumes; a local reply (request side) or a failure stops the body. A reply
    /// from a response-body wait comes after the response headers, so it is ignored like one from the callback.
    pub fn wait(&self, wait: BodyWait) -> Resume {
        let index = wait.index;
        let holder = InChain {
            shared: self.active.clone(),
            index,
        };
        let response = self.response;
        let shared = self.active.clone();
        Box::pin(async move {
            match settle(holder, wait.calls).await {
                Settled::Continue => Ok(wait.step + 1),
                Settled::Replied if response => {
                    if let Some(a) = lock(&shared).get_mut(index) {
                        a.stream.local_response = None;
                        tracing::warn!(plugin = %a.plugin.meta.name, "a local reply after the response headers were sent; ignored");
                    }
                    Ok(wait.step + 1)
                }
                Settled::Replied => {
                    let plugin = lock(&shared)
                        .get(index)
                        .map(|a| a.plugin.meta.name.clone())
                        .unwrap_or_default();
                    Err(Box::new(BodyReplied { plugin }) as BoxError)
                }
                Settled::Fail(e) => Err(Box::new(e) as BoxError),
            }
        })
    }

    /// Runs the trailers callbacks (request: in order, response: reverse) over `trailers`, writing edits back.
    pub fn on_trailers(&self, trailers: &mut http::HeaderMap) -> Result<(), BodyFilterFailed> {
        let response = self.response;
        let mut active = lock(&self.active);
        let mut pairs = header_pairs(trailers, &[]);
        let mut dirty = false;
        let mut order: Vec<usize> = (0..active.len())
            .filter(|i| active[*i].reads_trailers(response))
            .collect();
        if response {
            order.reverse();
        }
        let mut background = Vec::new();
        let mut failed = None;
        for index in order {
            let a = &mut active[index];
            let slot = if response {
                &mut a.stream.response_trailers
            } else {
                &mut a.stream.request_trailers
            };
            *slot = Some(std::mem::take(&mut pairs));
            a.stream.trailers_dirty = false;
            let callback = if response {
                "on_response_trailers"
            } else {
                "on_request_trailers"
            };
            let r = timed(a.journal.as_ref(), &a.plugin, callback, || {
                a.plugin.run(a.slot, Some(a.instance), |i| {
                    i.on_trailers(&mut a.stream, response)?;
                    Ok(i.take_calls())
                })
            });
            let slot = if response {
                &mut a.stream.response_trailers
            } else {
                &mut a.stream.request_trailers
            };
            pairs = slot.take().unwrap_or_default();
            dirty |= a.stream.trailers_dirty;
            match outcome(r) {
                Ok((calls, _)) if !calls.is_empty() => background.push((index, calls)),
                Ok(_) => {}
                Err(fault) => {
                    if let Some(error) = fail_closed(&a.plugin, fault) {
                        failed = Some(BodyFilterFailed {
                            plugin: a.plugin.meta.name.clone(),
                            error,
                        });
                        break;
                    }
                }
            }
        }
        drop(active);
        for (index, calls) in background {
            send_in_background(&self.active, index, calls);
        }
        if dirty {
            *trailers = to_header_map(&pairs);
        }
        failed.map_or(Ok(()), Err)
    }

    pub fn side(&self) -> &'static str {
        if self.response {
            "response"
        } else {
            "request"
        }
    }

    pub fn too_large(&self) -> BodyTooLarge {
        BodyTooLarge {
            side: self.side(),
            limit: self.limit,
        }
    }
}

/// Lends `buffer` to one filter's body callback (it may rewrite it) and takes it back: the callback's action (or
/// fault) and the callouts it made.
fn offer_body(
    a: &mut Active,
    buffer: &mut Bytes,
    response: bool,
    end_of_stream: bool,
) -> (Result<i32, Fault>, Vec<Callout>) {
    let held = Some(std::mem::take(buffer));
    if response {
        a.stream.response_body = held;
    } else {
        a.stream.request_body = held;
    }
    let callback = if response {
        "on_response_body"
    } else {
        "on_request_body"
    };
    let r = timed(a.journal.as_ref(), &a.plugin, callback, || {
        a.plugin.run(a.slot, Some(a.instance), |i| {
            let action = i.on_body(&mut a.stream, response, end_of_stream)?;
            Ok((action, i.take_calls()))
        })
    });
    let back = if response {
        a.stream.response_body.take()
    } else {
        a.stream.request_body.take()
    };
    *buffer = back.unwrap_or_default();
    match outcome(r) {
        Ok(((action, calls), _)) => (Ok(action), calls),
        Err(fault) => (Err(fault), Vec::new()),
    }
}

/// What the request (or response) headers' filters decided.
pub enum Verdict {
    Continue,
    /// A filter answered with a reply of its own (`proxy_send_local_response`).
    Respond(Response<ResponseBody>),
    /// A filter failed, closed the stream or could never resume it: the proxy answers (error.rs).
    Fail(FilterError),
}

/// Why a filter's callback on a stream did not complete.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// The callback trapped or hit its CPU or memory limit (its instance was discarded).
    #[error(transparent)]
    Wasm(#[from] WasmError),
    /// The stream's instance was discarded since the stream began (another stream's callback failed on it), and
    /// the stream's context with it.
    #[error("its instance failed while this stream waited")]
    Lost,
}

/// A callback's result on the stream's own instance: `PluginHandle::run` answers `Ok(None)` when that instance
/// has been replaced, which for the stream is a fault like any other.
fn outcome<T>(r: Result<Option<(T, u64)>, WasmError>) -> Result<(T, u64), Fault> {
    match r {
        Ok(Some(done)) => Ok(done),
        Ok(None) => Err(Fault::Lost),
        Err(e) => Err(Fault::Wasm(e)),
    }
}

/// A fault under the plugin's fail strategy: FAIL_OPEN skips the filter (None); FAIL_CLOSE keeps the fault, which
/// stops the stream.
fn fail_closed(plugin: &PluginHandle, fault: Fault) -> Option<Fault> {
    if plugin.meta.fail_open {
        tracing::debug!(plugin = %plugin.meta.name, error = %fault, "failing open");
        return None;
    }
    Some(fault)
}

/// Why a filter stopped a stream without a reply of its own.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("wasm plugin {plugin} failed: {error}")]
    Failed { plugin: String, error: Fault },
    #[error("wasm plugin {0} closed the stream")]
    Closed(String),
    #[error("wasm plugin {0} paused the stream with no callout outstanding that could resume it")]
    Stuck(String),
    #[error("the request's filters ended while its body waited on one of them")]
    Ended,
}

fn failed(plugin: &PluginHandle, error: Fault) -> FilterError {
    FilterError::Failed {
        plugin: plugin.meta.name.clone(),
        error,
    }
}

fn local_response(stream: &mut StreamData) -> Option<Response<ResponseBody>> {
    let local = stream.local_response.take()?;
    let mut r = Response::new(ResponseBody::Full(
        Some(Bytes::from(local.body)).filter(|b| !b.is_empty()),
    ));
    *r.status_mut() =
        StatusCode::from_u16(local.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    *r.headers_mut() = to_header_map(&local.headers);
    Some(r)
}

/// The connection a request came on, as filters see it.
pub struct Connection<'a> {
    pub addr: std::net::SocketAddr,
    /// The peer an mTLS handshake proved, if any.
    pub peer: Option<&'a Arc<crate::tls::VerifiedPeer>>,
    /// The client spoke TLS (a gateway HTTPS listener, or mesh mTLS): `:scheme` is `https`.
    pub tls: bool,
}

impl Chain {
    /// Request headers through every filter. `Verdict::Respond` is a filter's own reply, `Verdict::Fail` a filter
    /// that failed, closed the stream or could never resume it.
    /// A filter that pauses holds the request here until it resumes (see the module docs).
    pub async fn on_request(
        plugins: &[Arc<PluginHandle>],
        parts: &mut request::Parts,
        downstream: &Connection<'_>,
        route: Option<&Arc<str>>,
        cluster: Option<&Arc<str>>,
        end_of_stream: bool,
        journal: Option<&Arc<Journal>>,
    ) -> (Chain, Verdict) {
        if plugins.is_empty() {
            return (Chain::default(), Verdict::Continue);
        }
        let mut active = Ending(Actives::new());
        // Shared with the request (reference-counted), not copied.
        let authority = match (parts.uri.authority(), parts.headers.get(http::header::HOST)) {
            (Some(a), _) => Text::Authority(a.clone()),
            (None, Some(h)) => Text::value(h),
            (None, None) => Text::Borrowed(""),
        };
        let path = parts
            .uri
            .path_and_query()
            .map_or(Text::Borrowed("/"), |p| Text::Path(p.clone()));
        // As Envoy: the scheme of the connection the request came on (mesh mTLS included).
        let scheme = if downstream.tls { "https" } else { "http" };
        // The proxy's header map itself goes to the filters (and comes back after them): no copy per request.
        let mut headers = Headers {
            pseudo: Pseudo::new([
                (Text::Borrowed(":method"), method_text(&parts.method)),
                (Text::Borrowed(":path"), path),
                (Text::Borrowed(":authority"), authority),
                (Text::Borrowed(":scheme"), Text::Borrowed(scheme)),
            ]),
            map: std::mem::take(&mut parts.headers),
            pseudo_changed: false,
        };
        let mut dirty = false;
        let protocol = match parts.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        let mut verdict = Verdict::Continue;
        let mut background = Vec::new();
        for plugin in plugins {
            let slot = plugin.pick_slot();
            let mut stream = pool::take();
            stream.request_headers = std::mem::take(&mut headers);
            stream.source = Some(downstream.addr);
            stream.peer_tls = downstream.peer.cloned();
            stream.route_name = route.cloned();
            stream.cluster_name = cluster.cloned();
            stream.protocol = protocol;
            let result = timed(journal, plugin, "on_request_headers", || {
                plugin.run(slot, None, |inst| {
                    inst.new_context(&mut stream)?;
                    let action = inst.on_headers(&mut stream, false, end_of_stream)?;
                    Ok(Callback {
                        action,
                        closed: inst.closed(),
                        calls: inst.take_calls(),
                        request_body: inst.has_body_callback(false),
                        response_body: inst.has_body_callback(true),
                        request_trailers: inst.has_trailers_callback(false),
                        response_trailers: inst.has_trailers_callback(true),
                        response_headers: inst.has_headers_callback(true),
                    })
                })
            });
            let (cb, instance) = match outcome(result) {
                Ok(done) => done,
                Err(fault) => {
                    headers = std::mem::take(&mut stream.request_headers);
                    pool::give(stream);
                    match fail_closed(plugin, fault) {
                        None => continue,
                        Some(fault) => {
                            verdict = Verdict::Fail(failed(plugin, fault));
                            break;
                        }
                    }
                }
            };
            let mut a = cb.active(plugin, slot, instance, stream, journal);
            let step = after_request_headers(&mut a, cb).await;
            headers = std::mem::take(&mut a.stream.request_headers);
            dirty |= a.stream.request_dirty;
            active.0.push(a);
            match step {
                Step::Next(calls) if calls.is_empty() => {}
                Step::Next(calls) => background.push((active.0.len() - 1, calls)),
                Step::Stop(stop) => {
                    verdict = stop;
                    break;
                }
            }
        }
        apply_request(
            parts,
            headers,
            dirty && matches!(verdict, Verdict::Continue),
        );
        let shared = Arc::new(Mutex::new(std::mem::take(&mut active.0)));
        for (index, calls) in background {
            send_in_background(&shared, index, calls);
        }
        let chain = Chain {
            active: Some(shared),
        };
        (chain, verdict)
    }

    /// The request body's filter, if a filter that saw the headers has a body or trailers callback. The smallest
    /// `bodyBuffer` among the body readers applies.
    pub fn request_body_filter(&self) -> Option<BodyFilter> {
        self.body_filter(false)
    }

    /// The local reply a filter sent from its request-body callback, if one did (it replaces the upstream's
    /// answer, or the error left by the aborted upstream request).
    pub fn body_reply(&self) -> Option<Response<ResponseBody>> {
        let mut active = lock(self.active.as_ref()?);
        active
            .iter_mut()
            .find_map(|a| local_response(&mut a.stream))
    }

    /// Likewise for the response body.
    pub fn response_body_filter(&self) -> Option<BodyFilter> {
        self.body_filter(true)
    }

    fn body_filter(&self, response: bool) -> Option<BodyFilter> {
        let shared = self.active.as_ref()?;
        let active = lock(shared);
        if !active
            .iter()
            .any(|a| a.reads_body(response) || a.reads_trailers(response))
        {
            return None;
        }
        let limit = active
            .iter()
            .filter(|a| a.reads_body(response))
            .map(|a| a.plugin.meta.body_limit)
            .min()
            .unwrap_or(usize::MAX);
        Some(BodyFilter {
            active: shared.clone(),
            response,
            limit,
        })
    }

    /// Response headers through the filters, last to first. A filter may replace the response with a local one,
    /// or pause it until its callouts let it resume.
    pub async fn on_response(
        &mut self,
        parts: &mut response::Parts,
        end_of_stream: bool,
    ) -> Verdict {
        let Some(shared) = self.active.clone() else {
            return Verdict::Continue;
        };
        // Taken out while callbacks (and possibly callouts) run, so no lock is held across an await.
        let mut active = Ending(std::mem::take(&mut *lock(&shared)));
        if active.0.is_empty() {
            return Verdict::Continue;
        }
        let mut pairs = Headers {
            pseudo: Pseudo::new([(Text::Borrowed(":status"), status_text(parts.status))]),
            map: std::mem::take(&mut parts.headers),
            pseudo_changed: false,
        };
        let mut dirty = false;
        let mut replaced = None;
        let mut background = Vec::new();
        for (index, a) in active.0.iter_mut().enumerate().rev() {
            a.stream.response_code = Some(parts.status.as_u16());
            a.stream.response_headers = std::mem::take(&mut pairs);
            let step = on_response_headers(a, end_of_stream).await;
            pairs = std::mem::take(&mut a.stream.response_headers);
            dirty |= a.stream.response_dirty;
            match step {
                Step::Next(calls) if calls.is_empty() => {}
                Step::Next(calls) => background.push((index, calls)),
                Step::Stop(stop) => {
                    replaced = Some(stop);
                    break;
                }
            }
        }
        *lock(&shared) = std::mem::take(&mut active.0);
        for (index, calls) in background {
            send_in_background(&shared, index, calls);
        }
        if dirty && pairs.pseudo_changed {
            if let Some(code) = pairs
                .pseudo(":status")
                .and_then(|v| v.parse().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                parts.status = code;
            }
        }
        parts.headers = pairs.map;
        replaced.unwrap_or(Verdict::Continue)
    }
}

/// What a request-headers callback left behind.
struct Callback {
    action: i32,
    closed: bool,
    calls: Vec<Callout>,
    request_body: bool,
    response_body: bool,
    request_trailers: bool,
    response_trailers: bool,
    response_headers: bool,
}

impl Callback {
    /// The stream's filter state, kept for the later callbacks.
    fn active(
        &self,
        plugin: &Arc<PluginHandle>,
        slot: usize,
        instance: u64,
        stream: Box<StreamData>,
        journal: Option<&Arc<Journal>>,
    ) -> Active {
        Active {
            plugin: plugin.clone(),
            slot,
            instance,
            stream,
            request_body: self.request_body,
            response_body: self.response_body,
            request_trailers: self.request_trailers,
            response_trailers: self.response_trailers,
            response_headers: self.response_headers,
            background: None,
            journal: journal.cloned(),
        }
    }
}

/// After a filter's request-headers callback: the verdict that stops the request here (the filter closed the
/// stream, answered, or paused and then answered or failed), else the callouts to send in the background.
async fn after_request_headers(a: &mut Active, cb: Callback) -> Step {
    if cb.closed {
        return Step::Stop(Verdict::Fail(FilterError::Closed(
            a.plugin.meta.name.clone(),
        )));
    }
    if let Some(r) = local_response(&mut a.stream) {
        return Step::Stop(Verdict::Respond(r));
    }
    if cb.action != ACTION_CONTINUE && !a.stream.resumed {
        return settle(&mut *a, cb.calls).await.into_step(a);
    }
    a.stream.resumed = false;
    Step::Next(cb.calls)
}

/// One filter's response-headers callback (the headers are on its stream), like `after_request_headers`. A filter
/// without the callback has no say on the response, even if its instance is gone.
async fn on_response_headers(a: &mut Active, end_of_stream: bool) -> Step {
    if !a.response_headers {
        return Step::Next(Vec::new());
    }
    let result = timed(a.journal.as_ref(), &a.plugin, "on_response_headers", || {
        a.plugin.run(a.slot, Some(a.instance), |inst| {
            let action = inst.on_headers(&mut a.stream, true, end_of_stream)?;
            Ok((action, inst.take_calls()))
        })
    });
    let (action, calls) = match outcome(result) {
        Ok((done, _)) => done,
        Err(fault) => {
            return match fail_closed(&a.plugin, fault) {
                None => Step::Next(Vec::new()),
                Some(fault) => Step::Stop(Verdict::Fail(failed(&a.plugin, fault))),
            }
        }
    };
    if let Some(r) = local_response(&mut a.stream) {
        return Step::Stop(Verdict::Respond(r));
    }
    if action != ACTION_CONTINUE && !a.stream.resumed {
        return settle(&mut *a, calls).await.into_step(a);
    }
    a.stream.resumed = false;
    Step::Next(calls)
}

/// Runs a filter callback, noting its time in the request's trace when it is recorded (two clock reads; nothing
/// when it is not).
fn timed<T>(
    journal: Option<&Arc<Journal>>,
    plugin: &PluginHandle,
    callback: &'static str,
    f: impl FnOnce() -> T,
) -> T {
    let Some(journal) = journal else {
        return f();
    };
    let start = tokio::time::Instant::now();
    let r = f();
    journal.filter_ran(&plugin.meta.name, callback, start.elapsed());
    r
}

/// Ends filters' stream contexts: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
fn finish_all(active: impl Iterator<Item = Active>) {
    for mut a in active {
        let _ = a
            .plugin
            .run(a.slot, Some(a.instance), |inst| inst.finish(&mut a.stream));
        pool::give(a.stream);
    }
}

/// Per-worker-thread pool of stream states: a stream's state is a few hundred bytes, allocated and freed per
/// request per filter, and under concurrent streams glibc's small caches overflow into its slow paths (measured:
/// allocation was the largest part of a filter's cost after the guest calls).
mod pool {
    use super::StreamData;
    use std::cell::RefCell;

    const KEEP: usize = 64;

    thread_local! {
        // The boxes themselves are the point: they are the allocations reused.
        #[allow(clippy::vec_box)]
        static FREE: RefCell<Vec<Box<StreamData>>> = const { RefCell::new(Vec::new()) };
    }

    /// A cleared stream state.
    pub fn take() -> Box<StreamData> {
        FREE.with(|f| f.borrow_mut().pop()).unwrap_or_default()
    }

    /// Clears `stream` and keeps it for the next stream on this thread (up to `KEEP`).
    pub fn give(mut stream: Box<StreamData>) {
        *stream = StreamData::default();
        FREE.with(|f| {
            let mut free = f.borrow_mut();
            if free.len() < KEEP {
                free.push(stream);
            }
        });
    }
}

/// Stream contexts held while a phase may wait on callouts. If the request goes away meanwhile (this future is
/// dropped), they still end, so a guest never keeps a context for a stream that is gone.
struct Ending(Actives);

impl Drop for Ending {
    fn drop(&mut self) {
        finish_all(self.0.drain(..));
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        if let Some(shared) = &self.active {
            let ending = std::mem::take(&mut *lock(shared));
            finish_all(ending.into_iter());
        }
    }
}

/// Writes a filter's request-header edits back: method and path only if they changed, then the header map.
fn apply_request(parts: &mut request::Parts, headers: Headers, changed: bool) {
    parts.headers = headers.map;
    if !changed || !headers.pseudo_changed {
        return;
    }
    let pseudo = &headers.pseudo;
    if let Some(m) = pseudo
        .get(":method")
        .filter(|m| *m != parts.method.as_str())
        .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
    {
        parts.method = m;
    }
    let current = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if let Some(pq) = pseudo
        .get(":path")
        .filter(|p| *p != current)
        .and_then(|p| p.parse::<http::uri::PathAndQuery>().ok())
    {
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(pq);
        parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
    }
    let host = parts.uri.authority().map(|a| a.as_str()).or_else(|| {
        parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    if let Some(a) = pseudo
        .get(":authority")
        .filter(|a| Some(*a) != host)
        .and_then(|a| HeaderValue::from_str(a).ok())
    {
        parts.headers.insert(http::header::HOST, a);
    }
}

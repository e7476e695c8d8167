//! The filter chain when a stream's instance fails under it: a small hand-written filter that pauses on a callout
//! (the test answers it) and denies when the answer comes, and a request that makes the plugin's only instance
//! trap while another stream waits on it. FAIL_CLOSE must fail the waiting stream in every phase (request
//! headers, response headers, request body, trailers); FAIL_OPEN skips the filter.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, Semaphore};

use super::chain::{BodyReplied, BodyStep, BodyWait, Chain, Fault, FilterError, Verdict};
use super::wasm::callout::{CallFuture, CallResponse, Callout, Callouts};
use super::wasm::{hex, CrossPluginState, PluginHandle, PluginMeta, WasmRuntime};

/// The second byte of the request's path picks what `proxy_on_request_headers` does: `t` traps, `a` asks (a
/// callout, then pause), anything else continues. The response headers always ask; the request body pauses until
/// its end. Any callout answer denies the stream with 403.
const FILTER: &str = r#"(module
  (import "env" "proxy_get_header_map_value" (func $get_hdr (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $local (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 16) ":path")
  (data (i32.const 32) "denied")
  (data (i32.const 180) "authz")
  (data (i32.const 200) "\03\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\01\00\00\00\0a\00\00\00\05\00\00\00:method\00GET\00:path\00/\00:authority\00authz\00")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func $what (result i32)
    (drop (call $get_hdr (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 100) (i32.const 104)))
    (i32.load8_u offset=1 (i32.load (i32.const 100))))
  (func $ask (result i32)
    (drop (call $http_call (i32.const 180) (i32.const 5) (i32.const 200) (i32.const 65) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 108)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.eq (call $what) (i32.const 116)) (then unreachable))
    (if (result i32) (i32.eq (call $what) (i32.const 97)) (then (call $ask)) (else (i32.const 0))))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (call $ask))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.eqz (local.get 2)))
  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
    (drop (call $local (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 32) (i32.const 6) (i32.const 48) (i32.const 4) (i32.const -1)))))"#;

const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9);

/// Callouts the test answers: each one is announced on `sent` and answered (200) for each permit on `answers`.
struct Gate {
    sent: Notify,
    answers: Semaphore,
}

impl Callouts for Arc<Gate> {
    fn knows(&self, _upstream: &str) -> bool {
        true
    }

    fn send(&self, _call: Callout) -> CallFuture {
        self.sent.notify_one();
        let gate = self.clone();
        Box::pin(async move {
            gate.answers
                .acquire()
                .await
                .map_err(|e| e.to_string())?
                .forget();
            Ok(CallResponse {
                headers: vec![(":status".into(), "200".into())],
                ..CallResponse::default()
            })
        })
    }
}

/// The filter as a plugin with one instance (so every stream shares it) and its callout gate.
fn plugin(module: &str, fail_open: bool) -> (Arc<PluginHandle>, Arc<Gate>) {
    let gate = Arc::new(Gate {
        sent: Notify::new(),
        answers: Semaphore::new(0),
    });
    let shared = Arc::new(CrossPluginState::default());
    let _ = shared.callouts.set(Arc::new(gate.clone()));
    let rt = WasmRuntime::with_shared(1, None, shared).unwrap();
    let code = wat::parse_str(module).unwrap();
    let digest = hex(&Sha256::digest(&code));
    rt.add_module(&digest, &code).unwrap();
    let meta = PluginMeta {
        name: "guard".into(),
        root_id: String::new(),
        config: Vec::new(),
        env: Vec::new(),
        node_id: "node".into(),
        fail_open,
        memory_limit: 16 << 20,
        cpu_per_call: Duration::from_millis(500),
        body_limit: 1 << 20,
        started: tokio::time::Instant::now(),
    };
    (rt.plugin(&digest, meta).unwrap(), gate)
}

async fn request(plugin: &Arc<PluginHandle>, path: &str, eos: bool) -> (Chain, Verdict) {
    let mut parts = http::Request::get(path).body(()).unwrap().into_parts().0;
    let plugins = std::slice::from_ref(plugin);
    let downstream = super::chain::Connection {
        addr: PEER,
        peer: None,
        tls: false,
    };
    Chain::on_request(plugins, &mut parts, &downstream, None, None, eos, None).await
}

/// Another stream makes the plugin's only instance trap: it is discarded, with every context on it.
async fn trap_the_instance(plugin: &Arc<PluginHandle>) {
    let before = plugin.failures.trap.load(Ordering::Relaxed);
    let (_chain, verdict) = request(plugin, "/t", true).await;
    assert_eq!(plugin.failures.trap.load(Ordering::Relaxed), before + 1);
    let failed_closed = matches!(verdict, Verdict::Fail(FilterError::Failed { .. }));
    assert_eq!(failed_closed, !plugin.meta.fail_open);
}

/// Waits for the stream's callout, makes the instance trap meanwhile, then answers the callout.
async fn trap_while_paused(plugin: &Arc<PluginHandle>, gate: &Gate) {
    gate.sent.notified().await;
    trap_the_instance(plugin).await;
    gate.answers.add_permits(1);
}

/// Bounded: on paused time, a wait that can never end fails at once instead of hanging.
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("the stream never settled")
}

fn is_lost(verdict: &Verdict) -> bool {
    matches!(
        verdict,
        Verdict::Fail(FilterError::Failed {
            error: Fault::Lost,
            ..
        })
    )
}

fn response(status: u16) -> http::response::Parts {
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = http::StatusCode::from_u16(status).unwrap();
    parts
}

#[tokio::test(start_paused = true)]
async fn a_paused_request_whose_instance_fails_is_failed_closed_or_skipped() {
    for fail_open in [false, true] {
        let (plugin, gate) = plugin(FILTER, fail_open);
        // Nothing goes wrong: the filter denies when its callout answers.
        let answer = async {
            gate.sent.notified().await;
            gate.answers.add_permits(1);
        };
        let ((_, verdict), ()) =
            bounded(async { tokio::join!(request(&plugin, "/a", true), answer) }).await;
        assert!(matches!(&verdict, Verdict::Respond(r) if r.status() == 403));
        // Its instance traps while the request waits: the denial can never come.
        let trap = trap_while_paused(&plugin, &gate);
        let ((_, verdict), ()) =
            bounded(async { tokio::join!(request(&plugin, "/a", true), trap) }).await;
        if fail_open {
            assert!(matches!(verdict, Verdict::Continue), "FAIL_OPEN skips");
        } else {
            assert!(is_lost(&verdict), "FAIL_CLOSE fails the request");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_response_whose_instance_fails_is_failed_closed_or_skipped() {
    for fail_open in [false, true] {
        let (plugin, gate) = plugin(FILTER, fail_open);
        // Lost while the upstream answers (the filter passed the request, but has yet to see the response).
        let (mut chain, verdict) = request(&plugin, "/c", true).await;
        assert!(matches!(verdict, Verdict::Continue));
        trap_the_instance(&plugin).await;
        let verdict = chain.on_response(&mut response(200), true).await;
        assert_eq!(is_lost(&verdict), !fail_open);
        assert_eq!(matches!(verdict, Verdict::Continue), fail_open);
        // Lost while the response waits on the filter's callout.
        let (mut chain, _) = request(&plugin, "/c", true).await;
        let mut parts = response(200);
        let trap = trap_while_paused(&plugin, &gate);
        let (verdict, ()) =
            bounded(async { tokio::join!(chain.on_response(&mut parts, true), trap) }).await;
        assert_eq!(is_lost(&verdict), !fail_open);
        assert_eq!(matches!(verdict, Verdict::Continue), fail_open);
    }
}

#[tokio::test(start_paused = true)]
async fn a_filter_without_a_response_callback_has_no_say_on_the_response() {
    let module = FILTER.replace(
        "(func (export \"proxy_on_response_headers\")",
        "(func $no_response_headers",
    );
    let (plugin, _gate) = plugin(&module, false);
    let (mut chain, _) = request(&plugin, "/c", true).await;
    trap_the_instance(&plugin).await;
    let verdict = chain.on_response(&mut response(200), true).await;
    assert!(matches!(verdict, Verdict::Continue));
}

#[tokio::test(start_paused = true)]
async fn a_held_body_whose_instance_fails_is_failed_closed_or_skipped() {
    for fail_open in [false, true] {
        let (plugin, _gate) = plugin(FILTER, fail_open);
        let (chain, verdict) = request(&plugin, "/c", false).await;
        assert!(matches!(verdict, Verdict::Continue));
        let body = chain.request_body_filter().unwrap();
        let mut held = Bytes::from_static(b"first ");
        assert!(matches!(body.run(&mut held, false), Ok(BodyStep::Hold)));
        trap_the_instance(&plugin).await;
        let mut rest = Bytes::from_static(b"first and last");
        match body.run(&mut rest, true) {
            Ok(BodyStep::Release) => assert!(fail_open, "FAIL_CLOSE let the body go"),
            Err(e) => assert!(!fail_open && matches!(e.error, Fault::Lost), "{e}"),
            Ok(_) => panic!("neither released nor failed"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn trailers_whose_instance_failed_are_failed_closed_or_skipped() {
    for fail_open in [false, true] {
        let (plugin, _gate) = plugin(FILTER, fail_open);
        let (chain, _) = request(&plugin, "/c", false).await;
        trap_the_instance(&plugin).await;
        let body = chain.request_body_filter().unwrap();
        match body.on_trailers(&mut http::HeaderMap::new()) {
            Ok(()) => assert!(fail_open, "FAIL_CLOSE let the trailers go"),
            Err(e) => assert!(!fail_open && matches!(e.error, Fault::Lost), "{e}"),
        }
    }
}

/// The filter with `body` as its request-body callback (`$ask` makes a callout and answers 1, pause).
fn with_body_callback(body: &str) -> String {
    FILTER.replace(
        "(func (export \"proxy_on_request_body\") (param i32 i32 i32) (result i32) (i32.eqz (local.get 2)))",
        &format!("(func (export \"proxy_on_request_body\") (param i32 i32 i32) (result i32) {body})"),
    )
}

/// Pauses at the end of the body on a callout (and, before its end, holds it).
fn asks_at_the_end() -> String {
    with_body_callback("(if (local.get 2) (then (drop (call $ask)))) (i32.const 1)")
}

/// A request whose headers the filter passed, and its whole body offered at once: the filter must pause on it.
async fn body_paused_at_its_end(
    plugin: &Arc<PluginHandle>,
) -> (Chain, super::chain::BodyFilter, BodyWait) {
    let (chain, verdict) = request(plugin, "/c", false).await;
    assert!(matches!(verdict, Verdict::Continue));
    let body = chain.request_body_filter().unwrap();
    let mut held = Bytes::from_static(b"the whole body");
    let wait = match body.run(&mut held, true) {
        Ok(BodyStep::Wait(wait)) => wait,
        Ok(BodyStep::Release) => panic!("the body's end went on while its filter paused"),
        _ => panic!("neither waited nor released"),
    };
    (chain, body, wait)
}

#[tokio::test(start_paused = true)]
async fn a_body_paused_at_its_end_waits_for_the_filter_to_answer() {
    let (plugin, gate) = plugin(&asks_at_the_end(), false);
    let (chain, body, wait) = body_paused_at_its_end(&plugin).await;
    let answer = async {
        gate.sent.notified().await;
        gate.answers.add_permits(1);
    };
    let (r, ()) = bounded(async { tokio::join!(body.wait(wait), answer) }).await;
    let e = r.expect_err("the filter denied the body, yet it went on");
    assert!(e.is::<BodyReplied>(), "{e}");
    assert_eq!(chain.body_reply().unwrap().status(), 403);
}

#[tokio::test(start_paused = true)]
async fn a_body_paused_at_its_end_whose_instance_fails_is_failed_closed_or_skipped() {
    for fail_open in [false, true] {
        let (plugin, gate) = plugin(&asks_at_the_end(), fail_open);
        let (_chain, body, wait) = body_paused_at_its_end(&plugin).await;
        let trap = trap_while_paused(&plugin, &gate);
        let (r, ()) = bounded(async { tokio::join!(body.wait(wait), trap) }).await;
        match r {
            Ok(next) => assert!(fail_open && next == 1, "FAIL_CLOSE let the body's end go"),
            Err(e) => {
                let lost = matches!(
                    e.downcast_ref::<FilterError>(),
                    Some(FilterError::Failed {
                        error: Fault::Lost,
                        ..
                    })
                );
                assert!(!fail_open && lost, "{e}");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_paused_at_its_end_with_nothing_to_resume_it_fails() {
    let (plugin, _gate) = plugin(&with_body_callback("(i32.const 1)"), false);
    let (_chain, body, wait) = body_paused_at_its_end(&plugin).await;
    let e = bounded(body.wait(wait))
        .await
        .expect_err("a stuck body went on");
    assert!(
        matches!(e.downcast_ref::<FilterError>(), Some(FilterError::Stuck(_))),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_paused_at_its_end_waits_for_a_callout_made_earlier() {
    // Asks on the body's first part (the callout goes out in the background), then pauses at its end.
    let module =
        with_body_callback("(if (i32.eqz (local.get 2)) (then (drop (call $ask)))) (i32.const 1)");
    let (plugin, gate) = plugin(&module, false);
    let (chain, verdict) = request(&plugin, "/c", false).await;
    assert!(matches!(verdict, Verdict::Continue));
    let body = chain.request_body_filter().unwrap();
    let mut held = Bytes::from_static(b"first ");
    assert!(matches!(body.run(&mut held, false), Ok(BodyStep::Hold)));
    let mut held = Bytes::from_static(b"first and last");
    let Ok(BodyStep::Wait(wait)) = body.run(&mut held, true) else {
        panic!("the body's end went on while its filter paused");
    };
    let answer = async {
        gate.sent.notified().await;
        gate.answers.add_permits(1);
    };
    let (r, ()) = bounded(async { tokio::join!(body.wait(wait), answer) }).await;
    assert!(r.err().is_some_and(|e| e.is::<BodyReplied>()));
    assert_eq!(chain.body_reply().unwrap().status(), 403);
}

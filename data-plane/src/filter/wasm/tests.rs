//! ABI conformance: each case is a tiny hand-written module whose `proxy_on_request_headers` makes one host call
//! and returns its status (or a value the call wrote), so every host function is checked for exactly the status
//! the spec names, including on bad pointers, unknown ids and oversized requests.

use std::sync::Arc;
use std::time::Duration;

use super::*;

const ENV: &str = r#"
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_hdr (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_hdr (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $rm_hdr (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $set_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $reg_q (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $deq (param i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $def_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $inc_metric (param i32 i64) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $local (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_ctx (param i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_not_a_real_function" (func $unknown (param i32) (result i32)))
  (import "env" "proxy_grpc_call" (func $grpc_call_wrong_arity (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_unstable" "environ_sizes_get" (func $env_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
"#;

fn module(marker: &str, body: &str) -> Vec<u8> {
    let text = format!(
        r#"(module {ENV}
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "{marker}"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (data (i32.const 16) "x-key")
  (data (i32.const 32) "hello")
  (data (i32.const 48) "plugin_name")
  (data (i32.const 64) "\01\00\00\00\01\00\00\00\01\00\00\00a\00b\00")
  (data (i32.const 180) "authz")
  (data (i32.const 200) "\03\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\01\00\00\00\0a\00\00\00\05\00\00\00:method\00GET\00:path\00/\00:authority\00authz\00")
  (data (i32.const 300) "\02\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\01\00\00\00:method\00GET\00:path\00/\00")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    {body}))"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("bad test module: {e}\n{text}"))
}

fn meta(config: &[u8]) -> PluginMeta {
    PluginMeta {
        name: "conformance".into(),
        root_id: "root".into(),
        config: config.to_vec(),
        env: vec![("GREETING".into(), "hi".into())],
        node_id: "node-1".into(),
        fail_open: false,
        memory_limit: 16 << 20,
        cpu_per_call: Duration::from_millis(500),
        body_limit: 1 << 20,
        started: tokio::time::Instant::now(),
    }
}

fn load(rt: &WasmRuntime, code: &[u8], config: &[u8]) -> Result<Arc<PluginHandle>, WasmError> {
    let digest = hex(&Sha256::digest(code));
    rt.add_module(&digest, code)?;
    rt.plugin(&digest, meta(config))
}

/// Runs the module's request-headers callback on a stream with one header; returns what it returned.
fn run_with(body: &str, config: &[u8]) -> (Result<i32, WasmError>, StreamData) {
    let (r, stream, _) = run_on(&WasmRuntime::new(1, None).unwrap(), body, config);
    (r, stream)
}

/// Like `run_with` on a given runtime; also returns the callouts the callback made.
fn run_on(
    rt: &WasmRuntime,
    body: &str,
    config: &[u8],
) -> (Result<i32, WasmError>, StreamData, Vec<callout::Callout>) {
    let plugin = load(rt, &module("proxy_abi_version_0_2_1", body), config).unwrap();
    let mut stream = Box::new(StreamData {
        request_headers: stream::Headers::from_pairs(vec![
            (":path".into(), "/p".into()),
            ("present".into(), "1".into()),
        ]),
        ..StreamData::default()
    });
    let mut calls = Vec::new();
    let r = plugin.run(0, None, |inst| {
        inst.new_context(&mut stream)?;
        let action = inst.on_headers(&mut stream, false, true);
        calls = inst.take_calls();
        action
    });
    (r.map(|ok| ok.map_or(-1, |(v, _)| v)), *stream, calls)
}

/// Knows one upstream, `authz`; never sends.
struct OnlyAuthz;

impl callout::Callouts for OnlyAuthz {
    fn knows(&self, upstream: &str) -> bool {
        upstream == "authz"
    }

    fn send(&self, _call: callout::Callout) -> callout::CallFuture {
        Box::pin(async { Err("not in unit tests".to_string()) })
    }
}

#[test]
fn http_call_checks_its_arguments_and_records_the_call() {
    const CALL: &str = "(call $http_call (i32.const 180) (i32.const 5) (i32.const 200) (i32.const 65) (i32.const 32) (i32.const 5) (i32.const 0) (i32.const 0) (i32.const 250) (i32.const 104))";
    // No mesh to call into: every upstream is unknown.
    assert_eq!(status(CALL), abi::status::BAD_ARGUMENT);
    let shared = Arc::new(CrossPluginState::default());
    let _ = shared.callouts.set(Arc::new(OnlyAuthz));
    let rt = WasmRuntime::with_shared(1, None, shared).unwrap();
    let (r, stream, calls) = run_on(
        &rt,
        &format!("(drop {CALL}) (i32.load (i32.const 104))"),
        b"",
    );
    assert_eq!(r.ok(), Some(1), "the first token is 1");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(
        (
            call.upstream.as_str(),
            call.context_id,
            call.body.as_slice(),
            call.timeout
        ),
        (
            "authz",
            stream.context_id,
            &b"hello"[..],
            Duration::from_millis(250)
        )
    );
    assert_eq!(stream::get(&call.headers, ":authority"), Some("authz"));
    let st = |body: &str| run_on(&rt, body, b"").0.unwrap();
    assert_eq!(st(CALL), abi::status::OK);
    // Unknown upstream, missing :authority, garbage map, pointers outside memory.
    assert_eq!(st("(call $http_call (i32.const 32) (i32.const 5) (i32.const 200) (i32.const 65) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 250) (i32.const 104))"), abi::status::BAD_ARGUMENT);
    assert_eq!(st("(call $http_call (i32.const 180) (i32.const 5) (i32.const 300) (i32.const 40) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 250) (i32.const 104))"), abi::status::BAD_ARGUMENT);
    assert_eq!(st("(call $http_call (i32.const 180) (i32.const 5) (i32.const 32) (i32.const 5) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 250) (i32.const 104))"), abi::status::SERIALIZATION_FAILURE);
    assert_eq!(st("(call $http_call (i32.const 180) (i32.const 5) (i32.const 65530) (i32.const 65) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 250) (i32.const 104))"), abi::status::INVALID_MEMORY_ACCESS);
    assert_eq!(st("(call $http_call (i32.const 180) (i32.const 5) (i32.const 200) (i32.const 65) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 250) (i32.const 70000))"), abi::status::INVALID_MEMORY_ACCESS);
}

fn status(body: &str) -> i32 {
    match run_with(body, b"{\"a\":1}").0 {
        Ok(v) => v,
        Err(e) => panic!("call trapped: {e}"),
    }
}

#[test]
fn logging_and_memory_checks() {
    assert_eq!(
        status("(call $log (i32.const 2) (i32.const 32) (i32.const 5))"),
        abi::status::OK
    );
    assert_eq!(
        status("(call $log (i32.const 9) (i32.const 32) (i32.const 5))"),
        abi::status::BAD_ARGUMENT
    );
    assert_eq!(
        status("(call $log (i32.const 2) (i32.const 65530) (i32.const 100))"),
        abi::status::INVALID_MEMORY_ACCESS
    );
    assert_eq!(
        status("(call $log (i32.const 2) (i32.const -1) (i32.const 5))"),
        abi::status::INVALID_MEMORY_ACCESS
    );
    // An out-parameter outside memory is refused too, never written.
    assert_eq!(status("(call $get_hdr (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 70000) (i32.const 8))"), abi::status::NOT_FOUND);
    assert_eq!(
        status("(drop (call $add_hdr (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 32) (i32.const 5))) (call $get_hdr (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 70000) (i32.const 8))"),
        abi::status::INVALID_MEMORY_ACCESS
    );
}

#[test]
fn header_maps() {
    assert_eq!(status("(call $get_hdr (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 100) (i32.const 104))"), abi::status::NOT_FOUND);
    assert_eq!(status("(call $get_hdr (i32.const 9) (i32.const 16) (i32.const 5) (i32.const 100) (i32.const 104))"), abi::status::BAD_ARGUMENT);
    assert_eq!(status("(call $get_hdr (i32.const 2) (i32.const 16) (i32.const 5) (i32.const 100) (i32.const 104))"), abi::status::NOT_FOUND, "no response yet");
    // add, then read back: the length written is 5.
    assert_eq!(
        status("(drop (call $add_hdr (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 32) (i32.const 5))) (drop (call $get_hdr (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 100) (i32.const 104))) (i32.load (i32.const 104))"),
        5
    );
    // pairs: the serialized map starts with the pair count (2 headers + 1 added).
    assert_eq!(
        status("(drop (call $add_hdr (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 32) (i32.const 5))) (drop (call $get_pairs (i32.const 0) (i32.const 100) (i32.const 104))) (i32.load (i32.load (i32.const 100)))"),
        3
    );
    assert_eq!(
        status("(call $rm_hdr (i32.const 0) (i32.const 16) (i32.const 5))"),
        abi::status::OK,
        "removing an absent header is OK"
    );
    assert_eq!(
        status("(call $set_pairs (i32.const 0) (i32.const 64) (i32.const 4))"),
        abi::status::SERIALIZATION_FAILURE,
        "truncated map"
    );
    let (r, stream) = run_with(
        "(call $set_pairs (i32.const 0) (i32.const 64) (i32.const 16))",
        b"",
    );
    assert_eq!(r.ok(), Some(abi::status::OK));
    assert_eq!(
        stream.request_headers.pairs(),
        vec![("a".to_string(), "b".to_string())]
    );
    assert!(stream.request_dirty);
}

#[test]
fn buffers_properties_context() {
    // max_size = usize::MAX is clamped to the buffer (the Rust SDK asks that way).
    assert_eq!(status("(drop (call $get_buf (i32.const 7) (i32.const 0) (i32.const -1) (i32.const 100) (i32.const 104))) (i32.load (i32.const 104))"), 7);
    assert_eq!(status("(call $get_buf (i32.const 7) (i32.const 99) (i32.const 1) (i32.const 100) (i32.const 104))"), abi::status::BAD_ARGUMENT);
    assert_eq!(status("(call $get_buf (i32.const 0) (i32.const 0) (i32.const 10) (i32.const 100) (i32.const 104))"), abi::status::NOT_FOUND);
    assert_eq!(status("(drop (call $get_prop (i32.const 48) (i32.const 11) (i32.const 100) (i32.const 104))) (i32.load (i32.const 104))"), "conformance".len() as i32);
    assert_eq!(
        status("(call $get_prop (i32.const 32) (i32.const 5) (i32.const 100) (i32.const 104))"),
        abi::status::NOT_FOUND
    );
    assert_eq!(
        status("(call $set_ctx (i32.const 12345))"),
        abi::status::BAD_ARGUMENT
    );
    assert_eq!(
        status("(call $set_ctx (i32.const 1))"),
        abi::status::OK,
        "the root context"
    );
}

#[test]
fn shared_data_queues_metrics() {
    assert_eq!(status("(call $get_shared (i32.const 16) (i32.const 5) (i32.const 100) (i32.const 104) (i32.const 108))"), abi::status::NOT_FOUND);
    assert_eq!(status("(call $set_shared (i32.const 16) (i32.const 5) (i32.const 32) (i32.const 5) (i32.const 0))"), abi::status::OK);
    assert_eq!(
        status("(drop (call $set_shared (i32.const 16) (i32.const 5) (i32.const 32) (i32.const 5) (i32.const 0))) (call $set_shared (i32.const 16) (i32.const 5) (i32.const 32) (i32.const 5) (i32.const 999))"),
        abi::status::CAS_MISMATCH
    );
    assert_eq!(
        status("(drop (call $set_shared (i32.const 16) (i32.const 5) (i32.const 32) (i32.const 5) (i32.const 0))) (drop (call $get_shared (i32.const 16) (i32.const 5) (i32.const 100) (i32.const 104) (i32.const 108))) (call $set_shared (i32.const 16) (i32.const 5) (i32.const 32) (i32.const 5) (i32.load (i32.const 108)))"),
        abi::status::OK,
        "CAS with the current value succeeds"
    );
    assert_eq!(
        status("(call $deq (i32.const 42) (i32.const 100) (i32.const 104))"),
        abi::status::NOT_FOUND
    );
    assert_eq!(status("(drop (call $reg_q (i32.const 16) (i32.const 5) (i32.const 100))) (call $deq (i32.load (i32.const 100)) (i32.const 104) (i32.const 108))"), abi::status::EMPTY);
    assert_eq!(
        status("(call $def_metric (i32.const 7) (i32.const 16) (i32.const 5) (i32.const 100))"),
        abi::status::BAD_ARGUMENT
    );
    assert_eq!(status("(drop (call $def_metric (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 100))) (call $inc_metric (i32.load (i32.const 100)) (i64.const -1))"), abi::status::BAD_ARGUMENT, "a counter cannot go down");
}

#[test]
fn local_reply_and_unimplemented() {
    assert_eq!(
        status("(call $unknown (i32.const 1))"),
        abi::status::UNIMPLEMENTED,
        "an unknown import is stubbed, not a link error"
    );
    assert_eq!(status("(call $grpc_call_wrong_arity (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))"), abi::status::UNIMPLEMENTED, "an import with a non-spec signature is stubbed");
    assert_eq!(status("(call $local (i32.const 99) (i32.const 0) (i32.const 0) (i32.const 32) (i32.const 5) (i32.const 0) (i32.const 0) (i32.const -1))"), abi::status::BAD_ARGUMENT);
    let (r, stream) = run_with("(call $local (i32.const 418) (i32.const 0) (i32.const 0) (i32.const 32) (i32.const 5) (i32.const 64) (i32.const 16) (i32.const -1))", b"");
    assert_eq!(r.ok(), Some(abi::status::OK));
    let local = stream.local_response.unwrap();
    assert_eq!(
        (local.status, local.body.as_slice(), local.headers),
        (418, &b"hello"[..], vec![("a".to_string(), "b".to_string())])
    );
}

/// WASI randomness is the OS's CSPRNG: seeding the proxy's own fast generator (fastrand, thread-local) to a known
/// state must not make what a guest draws predictable.
#[test]
fn wasi_random_is_not_the_proxys_seeded_generator() {
    const DRAW: &str =
        "(drop (call $random (i32.const 100) (i32.const 4))) (i32.load (i32.const 100))";
    fastrand::seed(7);
    let drawn = status(DRAW);
    let mut seeded = fastrand::Rng::with_seed(7);
    let predicted =
        i32::from_le_bytes([seeded.u8(..), seeded.u8(..), seeded.u8(..), seeded.u8(..)]);
    assert_ne!(
        drawn, predicted,
        "the guest drew what the seeded generator gives"
    );
    assert_ne!(status(DRAW), drawn, "two draws differ");
}

#[test]
fn wasi() {
    assert_eq!(
        status("(call $fd_write (i32.const 7) (i32.const 0) (i32.const 0) (i32.const 100))"),
        abi::wasi::BADF
    );
    assert_eq!(
        status("(call $random (i32.const 100) (i32.const 100000))"),
        abi::wasi::INVAL
    );
    assert_eq!(
        status("(call $random (i32.const 100) (i32.const 16))"),
        abi::wasi::SUCCESS
    );
    assert_eq!(
        status(
            "(drop (call $env_sizes (i32.const 100) (i32.const 104))) (i32.load (i32.const 100))"
        ),
        1,
        "the plugin's env, under wasi_unstable too"
    );
    assert_eq!(
        status(
            "(drop (call $env_sizes (i32.const 100) (i32.const 104))) (i32.load (i32.const 104))"
        ),
        "GREETING=hi\0".len() as i32
    );
    assert_eq!(status("(call $path_open (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 0))"), abi::wasi::NOSYS, "no filesystem");
    let (r, _) = run_with("(call $exit (i32.const 3)) (i32.const 0)", b"");
    assert!(
        matches!(r, Err(WasmError::Trap(ref m)) if m.contains("proc_exit(3)")),
        "{r:?}"
    );
}

#[test]
fn abi_markers() {
    let rt = WasmRuntime::new(1, None).unwrap();
    assert!(
        load(
            &rt,
            &module("proxy_abi_version_0_2_0", "(i32.const 0)"),
            b""
        )
        .is_ok(),
        "0.2.0 (AssemblyScript SDK) is accepted"
    );
    match load(&rt, &module("not_a_marker", "(i32.const 0)"), b"") {
        Err(WasmError::Load(m)) => assert!(m.contains("ABI version"), "{m}"),
        other => panic!("expected a load error, got {other:?}"),
    }
    assert!(
        matches!(rt.add_module("00", b"\0asm\x01\0\0\0"), Err(WasmError::Load(m)) if m.contains("sha256 mismatch"))
    );
}

#[test]
fn cpu_deadline_and_memory_cap() {
    let (r, _) = run_with("(loop $l (br $l)) (i32.const 0)", b"");
    assert!(matches!(r, Err(WasmError::Timeout(_))), "{r:?}");
    let (r, _) = run_with("(drop (memory.grow (i32.const 1000))) (unreachable)", b"");
    assert!(matches!(r, Err(WasmError::OutOfMemory(_))), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn tick_timers_follow_the_requested_period_and_stop_with_the_plugin() {
    let code = wat::parse_str(
        r#"(module
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
  (import "env" "proxy_define_metric" (func $def (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $inc (param i32 i64) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "ticks")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $def (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 100)))
    (call $tick (i32.const 10))
    (i32.eqz))
  (func (export "proxy_on_tick") (param i32)
    (drop (call $inc (i32.load (i32.const 100)) (i64.const 1)))))"#,
    )
    .unwrap();
    let rt = WasmRuntime::new(1, None).unwrap();
    let ticks = |rt: &WasmRuntime| {
        rt.shared
            .metric_values()
            .iter()
            .find(|m| m.0 == "ticks")
            .map_or(0, |m| m.2)
    };
    let plugin = load(&rt, &code, b"").unwrap();
    tokio::time::sleep(Duration::from_millis(55)).await;
    assert_eq!(ticks(&rt), 5, "a tick every 10 ms");
    drop(plugin);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ticks(&rt), 5, "no ticks once the plugin is gone");
}

/// Reads property `path` on a stream whose connection carried `peer_tls`: the module copies the value into
/// request header `x-prop` (when it makes a header value) and returns its first byte, or -1 when not found.
fn property_of(
    path: &str,
    peer_tls: Option<Arc<crate::tls::VerifiedPeer>>,
) -> (i32, Option<String>) {
    let text = format!(
        r#"(module {ENV}
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (data (i32.const 16) "x-prop")
  (data (i32.const 512) "{path}")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.ne (call $get_prop (i32.const 512) (i32.const {len}) (i32.const 100) (i32.const 104)) (i32.const 0))
      (then (return (i32.const -1))))
    (drop (call $add_hdr (i32.const 0) (i32.const 16) (i32.const 6) (i32.load (i32.const 100)) (i32.load (i32.const 104))))
    (i32.load8_u (i32.load (i32.const 100)))))"#,
        len = path.len()
    );
    let code = wat::parse_str(&text).unwrap();
    let rt = WasmRuntime::new(1, None).unwrap();
    let plugin = load(&rt, &code, b"").unwrap();
    let mut stream = Box::new(StreamData {
        peer_tls,
        ..StreamData::default()
    });
    let r = plugin.run(0, None, |inst| {
        inst.new_context(&mut stream)?;
        inst.on_headers(&mut stream, false, true)
    });
    let first = r.unwrap().map_or(-2, |(v, _)| v);
    use super::stream::HeaderAccess;
    (first, stream.request_headers.value("x-prop"))
}

#[test]
fn filters_see_the_mtls_peer_of_the_connection() {
    let td = meshwork_identity::TrustDomain::default();
    let id = |sa| meshwork_identity::SpiffeId::workload(&td, "default", sa).unwrap();
    let peer = Arc::new(crate::tls::VerifiedPeer::new(
        &id("backend"),
        id("frontend"),
    ));
    let frontend = "spiffe://cluster.local/ns/default/sa/frontend";
    let backend = "spiffe://cluster.local/ns/default/sa/backend";
    for (path, want) in [
        ("source.principal", frontend),
        ("connection.uri_san_peer_certificate", frontend),
        ("destination.principal", backend),
        ("connection.uri_san_local_certificate", backend),
        ("connection.tls_version", "TLSv1.3"),
    ] {
        let (_, got) = property_of(path, Some(peer.clone()));
        assert_eq!(got.as_deref(), Some(want), "{path}");
        assert_eq!(
            property_of(path, None).0,
            -1,
            "{path} on a plaintext connection"
        );
    }
    assert_eq!(property_of("connection.mtls", Some(peer)).0, 1);
    assert_eq!(property_of("connection.mtls", None).0, 0);
}

/// Filter-defined metrics keep their type: a histogram observes each recorded value (and refuses increments and
/// reads of a single value), `record` adds to a counter; each is exported as its own typed family.
#[tokio::test]
async fn filter_metrics_are_exported_as_typed_families() {
    let code = wat::parse_str(
        r#"(module
  (import "env" "proxy_define_metric" (func $def (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_record_metric" (func $rec (param i32 i64) (result i32)))
  (import "env" "proxy_increment_metric" (func $inc (param i32 i64) (result i32)))
  (import "env" "proxy_get_metric" (func $get (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "lat.ms")
  (data (i32.const 32) "hits")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $def (i32.const 2) (i32.const 16) (i32.const 6) (i32.const 100)))
    (drop (call $def (i32.const 0) (i32.const 32) (i32.const 4) (i32.const 104)))
    (drop (call $rec (i32.load (i32.const 100)) (i64.const 3)))
    (drop (call $rec (i32.load (i32.const 100)) (i64.const 700)))
    (drop (call $rec (i32.load (i32.const 104)) (i64.const 5)))
    (drop (call $rec (i32.load (i32.const 104)) (i64.const 5)))
    (i32.and
      (i32.eq (call $inc (i32.load (i32.const 100)) (i64.const 1)) (i32.const 2))
      (i32.eq (call $get (i32.load (i32.const 100)) (i32.const 200)) (i32.const 2)))))"#,
    )
    .unwrap();
    let rt = WasmRuntime::new(1, None).unwrap();
    let plugin = load(&rt, &code, b"");
    assert!(
        plugin.is_ok(),
        "configure saw BAD_ARGUMENT for both histogram misuses"
    );
    let http = crate::telemetry::HttpMetrics::new();
    http.register_collector(Box::new(crate::telemetry::wasm::WasmMetrics {
        store: Arc::new(crate::config::ConfigStore::default()),
        shared: rt.shared.clone(),
    }));
    let mut text = String::new();
    http.encode(&mut text);
    for line in [
        "# TYPE meshwork_filter_lat_ms histogram",
        "meshwork_filter_lat_ms_bucket{le=\"5.0\"} 1",
        "meshwork_filter_lat_ms_bucket{le=\"1000.0\"} 2",
        "meshwork_filter_lat_ms_count 2",
        "meshwork_filter_lat_ms_sum 703.0",
        "# TYPE meshwork_filter_hits_total counter",
        "meshwork_filter_hits_total 10",
    ] {
        assert!(text.contains(line), "{line} missing in\n{text}");
    }
}

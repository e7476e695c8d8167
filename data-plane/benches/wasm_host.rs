//! Cost of proxy-wasm host calls (ns per call), cold compile time, cached load time and plugin start time.
//! `cargo bench -p meshwork-proxy --bench wasm_host` (optionally `-- PATH/TO/filter.wasm` for the compile timings;
//! default: plugins/target/wasm32-wasip1/release/meshwork_filter_header_policy.wasm). Results: docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::disallowed_types)] // a benchmark binary: std's clock is what it measures with

use std::time::{Duration, Instant};

use meshwork_proxy::filter::wasm::{hex, PluginMeta, StreamData, WasmRuntime};
use sha2::Digest;

const N: u32 = 200_000;

fn module(imports: &str, call: &str) -> Vec<u8> {
    let text = format!(
        r#"(module {imports}
  (memory (export "memory") 2)
  (func (export "proxy_abi_version_0_2_1"))
  ;; a fixed scratch area: the benchmark measures the call, not an allocator
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 65536))
  (data (i32.const 16) "x-bench")
  (data (i32.const 32) "value")
  (data (i32.const 48) "request\00path")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $i i32)
    (loop $l
      {call}
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const {N}))))
    (i32.const 0)))"#
    );
    wat::parse_str(text).unwrap()
}

fn meta() -> PluginMeta {
    PluginMeta {
        name: "bench".into(),
        root_id: String::new(),
        config: br#"{"request":{"set":{"x-bench":"yes"}}}"#.to_vec(),
        env: Vec::new(),
        node_id: "bench".into(),
        fail_open: false,
        memory_limit: 64 << 20,
        cpu_per_call: Duration::from_secs(30),
        body_limit: 1 << 20,
        started: tokio::time::Instant::now(),
    }
}

/// Nanoseconds per loop iteration of the module's callback, best of 5.
fn per_iteration(rt: &WasmRuntime, code: &[u8]) -> f64 {
    let digest = hex(&sha2::Sha256::digest(code));
    rt.add_module(&digest, code).unwrap();
    let plugin = rt.plugin(&digest, meta()).unwrap();
    let headers: Vec<(String, String)> = [
        (":method", "GET"),
        (":path", "/bench"),
        (":authority", "bench"),
        ("x-bench", "v"),
        ("user-agent", "wrk"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
    .collect();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let mut stream = Box::new(StreamData {
            request_headers: meshwork_proxy::filter::wasm::stream::Headers::from_pairs(
                headers.clone(),
            ),
            ..StreamData::default()
        });
        let started = Instant::now();
        plugin
            .run(0, None, |i| {
                i.new_context(&mut stream)?;
                i.on_headers(&mut stream, false, true)
            })
            .unwrap();
        best = best.min(started.elapsed().as_nanos() as f64 / f64::from(N));
    }
    best
}

fn main() {
    let rt = WasmRuntime::new(1, None).unwrap();
    let i = |sig: &str, name: &str| format!(r#"(import "env" "{name}" (func ${name} {sig}))"#);
    let cases: Vec<(&str, String, String)> = vec![
        ("(empty loop: baseline)", String::new(), "(nop)".into()),
        ("proxy_get_header_map_value (hit)", i("(param i32 i32 i32 i32 i32) (result i32)", "proxy_get_header_map_value"), "(drop (call $proxy_get_header_map_value (i32.const 0) (i32.const 16) (i32.const 7) (i32.const 100) (i32.const 104)))".into()),
        ("proxy_get_header_map_value (miss)", i("(param i32 i32 i32 i32 i32) (result i32)", "proxy_get_header_map_value"), "(drop (call $proxy_get_header_map_value (i32.const 0) (i32.const 32) (i32.const 5) (i32.const 100) (i32.const 104)))".into()),
        ("proxy_replace_header_map_value", i("(param i32 i32 i32 i32 i32) (result i32)", "proxy_replace_header_map_value"), "(drop (call $proxy_replace_header_map_value (i32.const 0) (i32.const 16) (i32.const 7) (i32.const 32) (i32.const 5)))".into()),
        ("proxy_get_header_map_pairs (5 headers)", i("(param i32 i32 i32) (result i32)", "proxy_get_header_map_pairs"), "(drop (call $proxy_get_header_map_pairs (i32.const 0) (i32.const 100) (i32.const 104)))".into()),
        ("proxy_get_property (request.path)", i("(param i32 i32 i32 i32) (result i32)", "proxy_get_property"), "(drop (call $proxy_get_property (i32.const 48) (i32.const 12) (i32.const 100) (i32.const 104)))".into()),
        ("proxy_get_buffer_bytes (plugin config)", i("(param i32 i32 i32 i32 i32) (result i32)", "proxy_get_buffer_bytes"), "(drop (call $proxy_get_buffer_bytes (i32.const 7) (i32.const 0) (i32.const -1) (i32.const 100) (i32.const 104)))".into()),
        ("proxy_get_current_time_nanoseconds", i("(param i32) (result i32)", "proxy_get_current_time_nanoseconds"), "(drop (call $proxy_get_current_time_nanoseconds (i32.const 100)))".into()),
        ("proxy_log (level below the filter)", i("(param i32 i32 i32) (result i32)", "proxy_log"), "(drop (call $proxy_log (i32.const 0) (i32.const 32) (i32.const 5)))".into()),
        ("proxy_get_shared_data", i("(param i32 i32 i32 i32 i32) (result i32)", "proxy_get_shared_data"), "(drop (call $proxy_get_shared_data (i32.const 16) (i32.const 7) (i32.const 100) (i32.const 104) (i32.const 108)))".into()),
        ("proxy_increment_metric (unknown id)", i("(param i32 i64) (result i32)", "proxy_increment_metric"), "(drop (call $proxy_increment_metric (i32.const 1) (i64.const 1)))".into()),
    ];
    // `--chain-only`: just the stream-through-the-chain table (for profiling it).
    let chain_only = std::env::args().any(|a| a == "--chain-only");
    let baseline = per_iteration(&rt, &module(&cases[0].1, &cases[0].2));
    println!("| host call | ns per call |\n|---|---:|");
    println!("| {} | {baseline:.1} |", cases[0].0);
    for (name, imports, call) in cases[1..].iter().filter(|_| !chain_only) {
        let ns = per_iteration(&rt, &module(imports, call)) - baseline;
        println!("| {name} | {ns:.0} |");
    }

    let path = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../plugins/target/wasm32-wasip1/release/meshwork_filter_header_policy.wasm"
            )
            .to_string()
        });
    let code = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{path}: {e} (build plugins/ for wasm32-wasip1 first)"));
    let digest = hex(&sha2::Sha256::digest(&code));
    if chain_only {
        whole_stream(&code, &digest);
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let timed = |rt: &WasmRuntime| {
        let t = Instant::now();
        rt.add_module(&digest, &code).unwrap();
        let compile = t.elapsed();
        let t = Instant::now();
        rt.plugin(&digest, meta()).unwrap();
        (compile, t.elapsed())
    };
    let (cold, start) = timed(&WasmRuntime::new(1, Some(cache.path().to_path_buf())).unwrap());
    let (cached, _) = timed(&WasmRuntime::new(1, Some(cache.path().to_path_buf())).unwrap());
    println!(
        "\n| {} ({} KB) | ms |\n|---|---:|",
        path.rsplit('/').next().unwrap_or(&path),
        code.len() / 1024
    );
    println!("| cold compile | {:.1} |", cold.as_secs_f64() * 1e3);
    println!(
        "| load from the on-disk cache (restart) | {:.1} |",
        cached.as_secs_f64() * 1e3
    );
    println!(
        "| plugin start: instantiate + vm start + configure | {:.2} |",
        start.as_secs_f64() * 1e3
    );
    whole_stream(&code, &digest);
}

/// One whole stream through the chain, as the proxy runs it: request headers, response headers, one response
/// body chunk carrying end_of_stream, done/log/delete, 50 streams at a time. Without plugins, then with this
/// filter once and five times.
fn whole_stream(code: &[u8], digest: &str) {
    use meshwork_proxy::filter::chain::Chain;
    const STREAMS: u32 = 100_000;
    const BATCH: u32 = 50;
    let rt = WasmRuntime::new(1, None).unwrap();
    rt.add_module(digest, code).unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = tokio.enter();
    let plugins: Vec<_> = (0..5).map(|_| rt.plugin(digest, meta()).unwrap()).collect();
    let peer = meshwork_proxy::filter::chain::Connection {
        addr: "127.0.0.1:40000".parse().unwrap(),
        peer: None,
        tls: false,
    };
    let req = http::Request::builder()
        .uri("/bench?x=1")
        .header("host", "bench")
        .header("user-agent", "wrk")
        .header("accept", "*/*")
        .body(())
        .unwrap();
    let resp = http::Response::builder()
        .header("content-type", "text/plain")
        .header("content-length", "13")
        .header("date", "Sat, 21 Nov 2026 12:00:00 GMT")
        .body(())
        .unwrap();
    let (req_parts, ()) = req.into_parts();
    let (resp_parts, ()) = resp.into_parts();
    let route: std::sync::Arc<str> = "bench".into();
    let mut base = 0.0;
    println!(
        "\n| one stream through the chain | ns per stream | added per filter |\n|---|---:|---:|"
    );
    for n in [0usize, 1, 5] {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let started = Instant::now();
            // Streams overlap as they do in a proxy under load (the allocator sees the same pattern): a batch
            // of streams gets its request headers through, then each its response, then they all end.
            for _ in 0..STREAMS / BATCH {
                tokio.block_on(async {
                    let mut chains = Vec::with_capacity(BATCH as usize);
                    for _ in 0..BATCH {
                        let mut rp = req_parts.clone();
                        let (chain, _) = Chain::on_request(
                            &plugins[..n],
                            &mut rp,
                            &peer,
                            Some(&route),
                            Some(&route),
                            true,
                            None,
                        )
                        .await;
                        chains.push(chain);
                    }
                    for chain in &mut chains {
                        let mut sp = resp_parts.clone();
                        let _ = chain.on_response(&mut sp, false).await;
                        if let Some(f) = chain.response_body_filter() {
                            // A body of known length arrives in one chunk that carries end_of_stream.
                            let mut body = bytes::Bytes::from_static(b"hello, world\n");
                            let _ = f.run(&mut body, true);
                        }
                    }
                    drop(chains);
                });
            }
            best = best.min(started.elapsed().as_nanos() as f64 / f64::from(STREAMS));
        }
        if n == 0 {
            base = best;
            println!("| no filter | {best:.0} | |");
        } else {
            println!(
                "| {n} x this filter | {best:.0} | {:.0} |",
                (best - base) / n as f64
            );
        }
    }
}

//! Property tests of the host calls, where a guest's arguments enter the proxy: a real module (WAT) exports one
//! trampoline per host function (every `env` function, the WASI ones, and the unknown imports the host answers UNIMPLEMENTED / ENOSYS, as `filter/wasm/mod.rs` documents), and each case
//! calls a few of them, with pointers and lengths inside, across and outside its memory (negative, huge,
//! overlapping), out-parameters anywhere, malformed header-map serializations, iovec lists, unknown enum values,
//! and a guest allocator that answers garbage or traps; on a stream or none, with a callout answer or none.
//!
//! Properties: the host never panics; every call returns a proxy-wasm status (or a WASI errno), or traps only
//! when the guest's own allocator does; and what the host allocates for one call stays within a few times the
//! guest's memory (a length the guest names never becomes an allocation of that size). Allocations are counted
//! per thread by `densa_alloc`'s counting allocator, installed here for this test binary.
//!
//! Bounded for CI: a case count that runs in seconds; `PROPTEST_CASES` overrides it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use wasmtime::{InstancePre, Module, Store, Val};

use super::{CrossPluginState, HostState, MemoryCap};
use crate::filter::wasm::abi::{serialize_map, status, wasi};
use crate::filter::wasm::callout::{CallFuture, CallResponse, Callout, Callouts};
use crate::filter::wasm::stream::{Headers, StreamData};
use crate::filter::wasm::{PluginMeta, WasmRuntime};

#[global_allocator]
static ALLOCATOR: densa_alloc::CountingAllocator = densa_alloc::CountingAllocator::system();

/// The guest's memory: two pages, fixed (the module cannot grow it).
const MEM: usize = 2 << 16;
/// Where the case's prepared data goes: random bytes, strings, a header map, an iovec list, out-parameters, and
/// the start of the bump allocator's heap.
const STR_AT: usize = 256;
const MAP_AT: usize = 1024;
const IOV_AT: usize = 8192;
const OUT_AT: usize = 16384;
const HEAP_AT: usize = 32768;

/// Strings at `STR_AT`, one after the other.
const STRS: &[&[u8]] = &[
    b"x-key",
    b":path",
    b":authority",
    b"plugin_name",
    b"request\0path",
    b"request\0headers",
    b"authz",
    b"hello",
    b"",
    "\u{e9}t\u{e9}".as_bytes(),
    b"\xff\xfe",
    b"queue",
    b"GREETING",
    b"\0\0\0",
];

fn str_at(i: usize) -> usize {
    STR_AT + STRS[..i].iter().map(|s| s.len() + 1).sum::<usize>()
}

/// Every host function a guest may import: its module, name and arguments, by role (what the argument is, so
/// that the generated value is often meaningful): `t` a type, id, level or flag; `n` a number or size; `s` an
/// HTTP status; `p`/`l` a pointer to data and its length; `m`/`M` the serialized header map and its length;
/// `i`/`N` the iovec list and its count; `o` an out-parameter; `I` an i64.
const CALLS: &[(&str, &str, &str)] = &[
    ("env", "proxy_log", "tpl"),
    ("env", "proxy_get_log_level", "o"),
    ("env", "proxy_get_current_time_nanoseconds", "o"),
    ("env", "proxy_set_tick_period_milliseconds", "n"),
    ("env", "proxy_get_buffer_bytes", "tnnoo"),
    ("env", "proxy_get_buffer_status", "too"),
    ("env", "proxy_set_buffer_bytes", "tnnpl"),
    ("env", "proxy_get_configuration", "oo"),
    ("env", "proxy_get_header_map_pairs", "too"),
    ("env", "proxy_get_header_map_size", "to"),
    ("env", "proxy_set_header_map_pairs", "tmM"),
    ("env", "proxy_get_header_map_value", "tploo"),
    ("env", "proxy_add_header_map_value", "tplpl"),
    ("env", "proxy_replace_header_map_value", "tplpl"),
    ("env", "proxy_remove_header_map_value", "tpl"),
    ("env", "proxy_send_local_response", "splplmMt"),
    ("env", "proxy_continue_stream", "t"),
    ("env", "proxy_close_stream", "t"),
    ("env", "proxy_continue_request", ""),
    ("env", "proxy_continue_response", ""),
    ("env", "proxy_clear_route_cache", ""),
    ("env", "proxy_set_effective_context", "t"),
    ("env", "proxy_done", ""),
    ("env", "proxy_get_property", "ploo"),
    ("env", "proxy_set_property", "plpl"),
    ("env", "proxy_get_shared_data", "plooo"),
    ("env", "proxy_set_shared_data", "plplt"),
    ("env", "proxy_register_shared_queue", "plo"),
    ("env", "proxy_resolve_shared_queue", "plplo"),
    ("env", "proxy_enqueue_shared_queue", "tpl"),
    ("env", "proxy_dequeue_shared_queue", "too"),
    ("env", "proxy_define_metric", "tplo"),
    ("env", "proxy_increment_metric", "tI"),
    ("env", "proxy_record_metric", "tI"),
    ("env", "proxy_get_metric", "to"),
    ("env", "proxy_http_call", "plmMplmMno"),
    ("env", "proxy_get_status", "ooo"),
    ("env", "proxy_grpc_call", "plplplplplno"),
    ("env", "proxy_grpc_stream", "plplplplo"),
    ("env", "proxy_grpc_send", "tplt"),
    ("env", "proxy_grpc_cancel", "t"),
    ("env", "proxy_grpc_close", "t"),
    ("env", "proxy_call_foreign_function", "plploo"),
    ("env", "proxy_not_a_host_function", "tt"),
    ("wasi_snapshot_preview1", "fd_write", "tiNo"),
    ("wasi_unstable", "fd_write", "tiNo"),
    ("wasi_snapshot_preview1", "clock_time_get", "tIo"),
    ("wasi_snapshot_preview1", "random_get", "pn"),
    ("wasi_snapshot_preview1", "environ_sizes_get", "oo"),
    ("wasi_snapshot_preview1", "environ_get", "oo"),
    ("wasi_snapshot_preview1", "args_sizes_get", "oo"),
    ("wasi_snapshot_preview1", "args_get", "oo"),
    ("wasi_snapshot_preview1", "sched_yield", ""),
    ("wasi_snapshot_preview1", "path_open", "ttpltIItto"),
];

/// The module: each host function imported as `$fN` and re-exported as `call_N`, and an allocator the test
/// steers (`set_alloc`: 0 bump, 1 always `fixed`, 2 trap) that remembers the largest size asked of it.
fn wat() -> String {
    let mut imports = String::new();
    let mut exports = String::new();
    for (i, (module, name, roles)) in CALLS.iter().enumerate() {
        let params: String = roles
            .chars()
            .map(|r| if r == 'I' { " i64" } else { " i32" })
            .collect();
        let params = if params.is_empty() {
            params
        } else {
            format!("(param{params})")
        };
        imports.push_str(&format!(
            "(import \"{module}\" \"{name}\" (func $f{i} {params} (result i32)))\n"
        ));
        let gets: String = (0..roles.len())
            .map(|a| format!("(local.get {a}) "))
            .collect();
        exports.push_str(&format!(
            "(func (export \"call_{i}\") {params} (result i32) {gets}(call $f{i}))\n"
        ));
    }
    format!(
        r#"(module {imports}
  (memory (export "memory") 2 2)
  (global $mode (mut i32) (i32.const 0))
  (global $fixed (mut i32) (i32.const 0))
  (global $heap (mut i32) (i32.const {HEAP_AT}))
  (global $asked (mut i32) (i32.const 0))
  (func (export "set_alloc") (param i32 i32) (global.set $mode (local.get 0)) (global.set $fixed (local.get 1)))
  (func (export "asked") (result i32) (global.get $asked))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32) (local $p i32)
    (if (i32.gt_u (local.get $n) (global.get $asked)) (then (global.set $asked (local.get $n))))
    (if (i32.eq (global.get $mode) (i32.const 2)) (then unreachable))
    (if (i32.eq (global.get $mode) (i32.const 1)) (then (return (global.get $fixed))))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  {exports})"#
    )
}

/// The runtime (its engine and linker, with the UNIMPLEMENTED answers for unknown imports) and the module, compiled once per test binary.
struct Harness {
    rt: WasmRuntime,
    pre: InstancePre<HostState>,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = WasmRuntime::new(1, None).unwrap();
        let code = wat::parse_str(wat()).unwrap();
        let module = Module::new(&rt.engine, code).unwrap();
        let pre = rt
            .linker_for(&module)
            .unwrap()
            .instantiate_pre(&module)
            .unwrap();
        Harness { rt, pre }
    })
}

/// An argument, resolved against the case's memory layout when the call is made.
#[derive(Debug, Clone)]
enum Arg {
    Lit(i32),
    Wide(i64),
    /// The address of prepared string `i`; a following `Len` is its length.
    Str(usize),
    /// The serialized map; a following `Len` is its length.
    Map,
    /// The iovec list; a following `Len` is its entry count.
    Iovs,
    /// The length (or count) of what the last pointer argument pointed at.
    Len,
    /// Out-parameter slot `i` (slots overlap: each is 4 bytes apart, values are up to 8).
    Out(usize),
}

fn lit(s: impl Strategy<Value = i32>) -> impl Strategy<Value = Arg> {
    s.prop_map(Arg::Lit)
}

/// Values at the edges: of the memory, of the types, of the allocator's heap.
fn edge() -> impl Strategy<Value = Arg> {
    let m = MEM as i32;
    lit(prop::sample::select(vec![
        -1,
        -8,
        i32::MIN,
        i32::MAX,
        m,
        m - 1,
        m - 4,
        m - 8,
        m + 1,
        1 << 30,
        0x7fff_fff0,
        65536,
        70000,
    ]))
}

fn anywhere() -> impl Strategy<Value = Arg> {
    prop_oneof![3 => lit(0..MEM as i32), 1 => edge(), 1 => lit(any::<i32>())]
}

fn arg(role: char) -> BoxedStrategy<Arg> {
    let small = || lit(-1..10i32);
    match role {
        't' => prop_oneof![6 => small(), 1 => edge(), 1 => lit(any::<i32>())].boxed(),
        'n' => {
            prop_oneof![2 => lit(0..64), 1 => lit(0..MEM as i32), 1 => edge(), 1 => Just(Arg::Len)]
                .boxed()
        }
        'N' => {
            prop_oneof![5 => Just(Arg::Len), 1 => lit(0..10), 1 => edge(), 1 => lit(any::<i32>())]
                .boxed()
        }
        's' => prop_oneof![3 => lit(100..700), 1 => edge(), 1 => lit(any::<i32>())].boxed(),
        'p' => prop_oneof![4 => (0..STRS.len()).prop_map(Arg::Str), 2 => anywhere()].boxed(),
        'l' | 'M' => {
            prop_oneof![5 => Just(Arg::Len), 2 => lit(0..64), 1 => lit(0..MEM as i32), 1 => edge()]
                .boxed()
        }
        'm' => prop_oneof![5 => Just(Arg::Map), 1 => anywhere()].boxed(),
        'i' => prop_oneof![5 => Just(Arg::Iovs), 1 => anywhere()].boxed(),
        'o' => prop_oneof![5 => (0..8usize).prop_map(Arg::Out), 2 => anywhere()].boxed(),
        'I' => prop_oneof![
            3 => (-2..3i64).prop_map(Arg::Wide),
            1 => prop::sample::select(vec![i64::MIN, i64::MAX]).prop_map(Arg::Wide),
            1 => any::<i64>().prop_map(Arg::Wide),
        ]
        .boxed(),
        _ => unreachable!("role {role}"),
    }
}

/// One host call: which (an index into `CALLS`) and its arguments.
fn call() -> impl Strategy<Value = (usize, Vec<Arg>)> {
    (0..CALLS.len()).prop_flat_map(|i| {
        let args: Vec<BoxedStrategy<Arg>> = CALLS[i].2.chars().map(arg).collect();
        (Just(i), args)
    })
}

fn header_text() -> impl Strategy<Value = String> {
    let names = vec![
        ":path",
        ":method",
        ":authority",
        ":status",
        "x-a",
        "X-Upper",
        "authz",
        "GET",
        "/",
    ];
    let bad = vec!["", "bad header", "\u{e9}", "\0", "a\r\nb"];
    prop_oneof![
        4 => prop::sample::select(names).prop_map(str::to_string),
        1 => prop::sample::select(bad).prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((header_text(), header_text()), 0..6)
}

/// A header-map serialization: well formed, damaged (a count or length rewritten, truncated), or noise.
fn map_bytes() -> impl Strategy<Value = Vec<u8>> {
    let damaged =
        (pairs(), any::<usize>(), any::<u32>(), any::<usize>()).prop_map(|(p, at, v, cut)| {
            let mut bytes = serialize_map(&p);
            let words = 1 + 2 * p.len();
            let at = 4 * (at % words);
            bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
            bytes.truncate(cut % (bytes.len() + 1));
            bytes
        });
    prop_oneof![
        3 => pairs().prop_map(|p| serialize_map(&p)),
        3 => damaged,
        1 => (any::<u32>(), prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(n, rest)| {
            let mut bytes = n.to_le_bytes().to_vec();
            bytes.extend(rest);
            bytes
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// An iovec list: a few entries inside memory (possibly all of it, possibly overlapping) or not, or many that
/// are all inside (so that a write gathers them all).
fn iovecs() -> impl Strategy<Value = Vec<(i32, i32)>> {
    let m = MEM as i32;
    let inside = || (0..m).prop_flat_map(move |p| (Just(p), 0..=(m - p)));
    let whole = Just((0, m));
    let any = prop_oneof![4 => inside(), 2 => whole, 1 => (any::<i32>(), any::<i32>())];
    prop_oneof![
        3 => prop::collection::vec(any, 0..8),
        1 => prop::collection::vec(prop_oneof![inside(), whole], 0..600),
    ]
}

/// The stream a call runs on (None: a root-context call).
#[derive(Debug, Clone)]
struct StreamSpec {
    request: Vec<(String, String)>,
    response: Option<(u16, Vec<(String, String)>)>,
    request_body: Option<Vec<u8>>,
    response_body: Option<Vec<u8>>,
    trailers: Option<Vec<(String, String)>>,
}

fn stream_spec() -> impl Strategy<Value = StreamSpec> {
    let body = || prop::option::of(prop::collection::vec(any::<u8>(), 0..300));
    let response = prop::option::of((100..600u16, pairs()));
    (pairs(), response, body(), body(), prop::option::of(pairs())).prop_map(
        |(request, response, request_body, response_body, trailers)| StreamSpec {
            request,
            response,
            request_body,
            response_body,
            trailers,
        },
    )
}

impl StreamSpec {
    fn build(&self) -> Box<StreamData> {
        let (code, response) = self.response.clone().unzip();
        Box::new(StreamData {
            context_id: 2,
            request_headers: Headers::from_pairs(self.request.clone()),
            response_headers: Headers::from_pairs(response.unwrap_or_default()),
            response_code: code,
            request_body: self.request_body.clone().map(Into::into),
            response_body: self.response_body.clone().map(Into::into),
            request_trailers: self.trailers.clone(),
            response_trailers: self.trailers.clone(),
            protocol: "HTTP/1.1",
            ..StreamData::default()
        })
    }
}

type Answer = (Vec<(String, String)>, Vec<u8>);

/// Everything one case sets up, and the calls it makes in turn on one instance.
#[derive(Debug, Clone)]
struct Case {
    noise: Vec<u8>,
    map: Vec<u8>,
    iovs: Vec<(i32, i32)>,
    config: Vec<u8>,
    stream: Option<StreamSpec>,
    /// The headers and body of a callout's answer, during `proxy_on_http_call_response`.
    callout: Option<Answer>,
    knows_authz: bool,
    /// The guest allocator's mode (0 bump, 1 fixed answer, 2 trap) and fixed answer.
    alloc: (i32, i32),
    /// Whether the memory and allocator are looked up once (as instances do) or by name on each call.
    cached: bool,
    calls: Vec<(usize, Vec<Arg>)>,
}

fn case() -> impl Strategy<Value = Case> {
    let alloc = (
        prop_oneof![6 => Just(0), 2 => Just(1), 1 => Just(2)],
        anywhere(),
    )
        .prop_map(|(mode, fixed)| (mode, if let Arg::Lit(v) = fixed { v } else { 0 }));
    let setup = (
        prop::collection::vec(any::<u8>(), 0..STR_AT),
        map_bytes(),
        iovecs(),
        prop::collection::vec(any::<u8>(), 0..64),
        prop::option::weighted(0.8, stream_spec()),
        prop::option::of((pairs(), prop::collection::vec(any::<u8>(), 0..64))),
    );
    let calls = prop::collection::vec(call(), 1..8);
    (setup, any::<bool>(), alloc, any::<bool>(), calls).prop_map(
        |((noise, map, iovs, config, stream, callout), knows_authz, alloc, cached, calls)| Case {
            noise,
            map,
            iovs,
            config,
            stream,
            callout,
            knows_authz,
            alloc,
            cached,
            calls,
        },
    )
}

/// Knows one upstream, `authz`; never sends.
struct OnlyAuthz;

impl Callouts for OnlyAuthz {
    fn knows(&self, upstream: &str) -> bool {
        upstream == "authz"
    }

    fn send(&self, _call: Callout) -> CallFuture {
        Box::pin(async { Err("not in unit tests".to_string()) })
    }
}

fn meta(config: &[u8]) -> Arc<PluginMeta> {
    Arc::new(PluginMeta {
        name: "props".into(),
        root_id: "root".into(),
        config: config.to_vec(),
        env: vec![("GREETING".into(), "hi".into())],
        node_id: "node-1".into(),
        fail_open: false,
        memory_limit: MEM,
        cpu_per_call: Duration::from_secs(1),
        body_limit: 1 << 20,
        started: tokio::time::Instant::now(),
    })
}

fn host_state(case: &Case) -> HostState {
    let shared = CrossPluginState::default();
    if case.knows_authz {
        let _ = shared.callouts.set(Arc::new(OnlyAuthz));
    }
    HostState {
        limits: MemoryCap {
            limit: MEM,
            refused: false,
        },
        memory: None,
        alloc: None,
        meta: meta(&case.config),
        shared: Arc::new(shared),
        stream: case.stream.as_ref().map(StreamSpec::build),
        root_id: 1,
        closed: false,
        tick_ms: 0,
        calls: Vec::new(),
        next_token: 0,
        call_response: case.callout.clone().map(|(headers, body)| CallResponse {
            headers,
            body,
            trailers: Vec::new(),
        }),
        call_dirty: false,
    }
}

/// A fresh instance for the case, its memory holding the case's data and its allocator set as the case says.
fn instance(case: &Case) -> (Store<HostState>, wasmtime::Instance) {
    let h = harness();
    let mut store = Store::new(&h.rt.engine, host_state(case));
    store.limiter(|s| &mut s.limits);
    // The engine's epoch only moves once a plugin starts its ticker, which these tests never do.
    store.set_epoch_deadline(1 << 40);
    let instance = h.pre.instantiate(&mut store).unwrap();
    let memory = instance.get_memory(&mut store, "memory").unwrap();
    let data = memory.data_mut(&mut store);
    data[..case.noise.len()].copy_from_slice(&case.noise);
    for (i, s) in STRS.iter().enumerate() {
        data[str_at(i)..str_at(i) + s.len()].copy_from_slice(s);
    }
    data[MAP_AT..MAP_AT + case.map.len()].copy_from_slice(&case.map);
    for (i, (p, l)) in case.iovs.iter().enumerate() {
        let at = IOV_AT + 8 * i;
        data[at..at + 4].copy_from_slice(&p.to_le_bytes());
        data[at + 4..at + 8].copy_from_slice(&l.to_le_bytes());
    }
    let set_alloc = instance.get_typed_func::<(i32, i32), ()>(&mut store, "set_alloc");
    set_alloc.unwrap().call(&mut store, case.alloc).unwrap();
    if case.cached {
        let alloc = instance.get_typed_func(&mut store, "proxy_on_memory_allocate");
        store.data_mut().memory = Some(memory);
        store.data_mut().alloc = alloc.ok();
    }
    (store, instance)
}

fn resolve(case: &Case, args: &[Arg]) -> Vec<Val> {
    let mut len = 0;
    args.iter()
        .map(|a| match a {
            Arg::Lit(v) => Val::I32(*v),
            Arg::Wide(v) => Val::I64(*v),
            Arg::Str(i) => {
                len = STRS[*i].len() as i32;
                Val::I32(str_at(*i) as i32)
            }
            Arg::Map => {
                len = case.map.len() as i32;
                Val::I32(MAP_AT as i32)
            }
            Arg::Iovs => {
                len = case.iovs.len() as i32;
                Val::I32(IOV_AT as i32)
            }
            Arg::Len => Val::I32(len),
            Arg::Out(i) => Val::I32((OUT_AT + 4 * i) as i32),
        })
        .collect()
}

const STATUSES: [i32; 10] = [
    status::OK,
    status::NOT_FOUND,
    status::BAD_ARGUMENT,
    status::SERIALIZATION_FAILURE,
    status::INVALID_MEMORY_ACCESS,
    status::EMPTY,
    status::CAS_MISMATCH,
    status::INTERNAL_FAILURE,
    status::UNIMPLEMENTED,
    4, // PARSE_FAILURE
];
const ERRNOS: [i32; 7] = [
    wasi::SUCCESS,
    wasi::BADF,
    wasi::FAULT,
    wasi::INVAL,
    wasi::IO,
    wasi::NOSYS,
    wasi::NOTSUP,
];

/// The most one host call may allocate: it may copy what it reads from the guest a few times over (the read, a
/// lossy UTF-8 copy, the segments of a property path, a header map built from it; a growing `Vec` counts each
/// reallocation), so a few dozen times the guest's memory, plus a MiB for the host's own tables.
const MAX_BYTES_PER_CALL: u64 = 32 * MEM as u64 + (1 << 20);

/// Makes the case's calls in turn on one instance (until one traps: the host discards a trapped instance).
fn check(case: &Case) -> Result<(), TestCaseError> {
    let (mut store, instance) = instance(case);
    let asked = instance
        .get_typed_func::<(), i32>(&mut store, "asked")
        .unwrap();
    for (i, args) in &case.calls {
        let (module, name, _) = CALLS[*i];
        let f = instance.get_func(&mut store, &format!("call_{i}")).unwrap();
        let params = resolve(case, args);
        let mut out = [Val::I32(-1)];
        let (result, used) = densa_alloc::measure(|| f.call(&mut store, &params, &mut out));
        prop_assert!(
            used.bytes_allocated <= MAX_BYTES_PER_CALL,
            "{} allocated {} bytes",
            name,
            used.bytes_allocated
        );
        if let Err(e) = result {
            let trap = e.downcast_ref::<wasmtime::Trap>();
            let allocator = matches!(trap, Some(wasmtime::Trap::UnreachableCodeReached));
            prop_assert!(case.alloc.0 == 2 && allocator, "{} trapped: {:#}", name, e);
            return Ok(());
        }
        let code = out[0].unwrap_i32();
        let allowed: &[i32] = if module == "env" { &STATUSES } else { &ERRNOS };
        prop_assert!(allowed.contains(&code), "{} returned {}", name, code);
        let asked = asked.call(&mut store, ()).unwrap() as u32 as usize;
        prop_assert!(asked <= MEM, "{} asked the guest for {} bytes", name, asked);
    }
    Ok(())
}

#[test]
fn host_calls_answer_a_status_and_allocate_a_bounded_amount() {
    assert!(
        densa_alloc::is_active(),
        "the counting allocator is installed"
    );
    proptest!(ProptestConfig::with_cases(2048), |(case in case())| {
        check(&case)?;
    });
}

/// A case with nothing prepared but a stream with no headers, and no calls.
fn quiet_case() -> Case {
    Case {
        noise: Vec::new(),
        map: Vec::new(),
        iovs: Vec::new(),
        config: Vec::new(),
        stream: Some(StreamSpec {
            request: Vec::new(),
            response: None,
            request_body: None,
            response_body: None,
            trailers: None,
        }),
        callout: None,
        knows_authz: false,
        alloc: (0, 0),
        cached: true,
        calls: Vec::new(),
    }
}

fn index(module: &str, name: &str) -> usize {
    CALLS
        .iter()
        .position(|(m, n, _)| (*m, *n) == (module, name))
        .unwrap()
}

/// Makes one call; returns its status and the bytes the host allocated.
fn call_once(
    store: &mut Store<HostState>,
    instance: &wasmtime::Instance,
    case: &Case,
    i: usize,
    args: &[Arg],
) -> (i32, u64) {
    let f = instance
        .get_func(&mut *store, &format!("call_{i}"))
        .unwrap();
    let params = resolve(case, args);
    let mut out = [Val::I32(-1)];
    let (r, used) = densa_alloc::measure(|| f.call(&mut *store, &params, &mut out));
    r.unwrap();
    (out[0].unwrap_i32(), used.bytes_allocated)
}

fn read_u32(store: &mut Store<HostState>, instance: &wasmtime::Instance, at: usize) -> u32 {
    let memory = instance.get_memory(&mut *store, "memory").unwrap();
    let b = &memory.data(&*store)[at..at + 4];
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Regression (the property above found it): `fd_write` gathered every iovec into one buffer, so a guest naming
/// its whole memory in each of N iovecs made the host allocate N times that memory in one call, with no CPU
/// deadline to stop it (host code is not interrupted): a 16 MiB guest with a million iovecs asks for 16 TiB. A
/// call now takes at most `MAX_WRITE_BYTES` and reports how much it took, as WASI allows.
#[test]
fn fd_write_with_many_iovecs_over_all_memory_copies_a_bounded_amount() {
    let case = Case {
        iovs: vec![(0, MEM as i32); 500],
        ..quiet_case()
    };
    let (mut store, instance) = instance(&case);
    let fd_write = index("wasi_snapshot_preview1", "fd_write");
    let args = [Arg::Lit(1), Arg::Iovs, Arg::Len, Arg::Out(0)];
    let (errno, allocated) = call_once(&mut store, &instance, &case, fd_write, &args);
    assert_eq!(errno, wasi::SUCCESS);
    assert!(allocated < 1 << 20, "fd_write allocated {allocated} bytes");
    let written = read_u32(&mut store, &instance, OUT_AT) as usize;
    assert_eq!(
        written,
        crate::filter::wasm::abi::MAX_WRITE_BYTES,
        "a short write"
    );
}

/// Regression: `http::HeaderMap` panics past 24,576 distinct names, and a guest adding that many in a loop
/// (well within its CPU budget) panicked the host. Names a map cannot hold are now dropped, as invalid names
/// are; the map keeps what it holds.
#[test]
fn adding_more_header_names_than_a_map_holds_does_not_panic_the_host() {
    const KEY_AT: usize = OUT_AT + 64;
    let case = quiet_case();
    for name in [
        "proxy_add_header_map_value",
        "proxy_replace_header_map_value",
    ] {
        let (mut store, instance) = instance(&case);
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        let f = index("env", name);
        // (request headers, the key, "hello")
        let args = [
            Arg::Lit(0),
            Arg::Lit(KEY_AT as i32),
            Arg::Lit(10),
            Arg::Str(7),
            Arg::Len,
        ];
        for n in 0..30_000u32 {
            let k = format!("x-{n:08x}");
            memory.data_mut(&mut store)[KEY_AT..KEY_AT + 10].copy_from_slice(k.as_bytes());
            let (code, _) = call_once(&mut store, &instance, &case, f, &args);
            assert_eq!(code, status::OK, "{name} #{n}");
        }
        let held = store
            .data()
            .stream
            .as_ref()
            .map_or(0, |s| s.request_headers.map.len());
        assert!(
            held > 20_000 && held < 30_000,
            "{name}: {held} headers held"
        );
    }
}

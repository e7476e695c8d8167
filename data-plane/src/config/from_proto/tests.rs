//! Property tests of snapshot decoding, where the control plane's pushes enter the proxy: generated
//! `pb::Snapshot`s (listeners, virtual hosts, routes with every match and filter kind, clusters, policies, with
//! strings, header names and values, regexes, addresses, durations, percentages and counts at and past their
//! limits), protobuf bytes (random, and encodings of generated snapshots with bytes changed), and pushes carrying
//! Wasm modules and plugins with extreme settings. Each one builds, or is refused with an `InvalidSnapshot` (a
//! NACK); none panics.
//!
//! Bounded for CI: each property has a case count that runs in seconds; `PROPTEST_CASES` overrides it.

use std::collections::HashMap;
use std::sync::OnceLock;

use meshwork_proto as pb;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::config::{Received, Snapshot};
use crate::filter::wasm::LazyWasm;

fn pick(words: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(words).prop_map(str::to_string),
        1 => any::<String>(),
        1 => "[ -~]{0,24}",
    ]
}

/// Cluster, listener, route and plugin names: few, so that references often resolve.
fn name() -> impl Strategy<Value = String> {
    pick(&["a", "b", "c", "", "outbound", "a/b"])
}

fn header_name() -> impl Strategy<Value = String> {
    pick(&[
        "x-a",
        "X-Upper",
        "",
        "bad header",
        ":path",
        "x\0y",
        "é",
        "content-length",
        "x-b\r\n",
    ])
}

fn header_value() -> impl Strategy<Value = String> {
    pick(&["v", "", "a\r\nb", "\u{7f}", "é", "\t", " padded ", "\0"])
}

fn regex_or_text() -> impl Strategy<Value = String> {
    pick(&[
        "(",
        ")",
        ".*",
        "[[:alpha:]]+",
        "(?i)abc",
        "\\",
        "a)|(b",
        "(?:a{100}){100}",
        "\\p{Greek}",
        "/a/.*",
        "a{1000}{1000}",
    ])
}

fn match_type() -> impl Strategy<Value = i32> {
    prop_oneof![4 => -1..4i32, 1 => any::<i32>()]
}

fn ms() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX / 1000),
        0..100_000u64,
        any::<u64>()
    ]
}

fn count() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(1), Just(u32::MAX), 0..200u32, any::<u32>()]
}

fn ratio() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(-1.0),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
        Just(100.0),
        Just(101.0),
        any::<f64>(),
    ]
}

fn some<T: std::fmt::Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    prop::option::weighted(0.6, s)
}

fn timeouts() -> BoxedStrategy<pb::Timeouts> {
    (ms(), ms(), ms(), ms())
        .prop_map(
            |(request_ms, per_try_ms, connect_ms, idle_ms)| pb::Timeouts {
                request_ms,
                per_try_ms,
                connect_ms,
                idle_ms,
            },
        )
        .boxed()
}

fn retry() -> BoxedStrategy<pb::Retry> {
    let on = prop::collection::vec(
        pick(&["5xx", "reset", "connect-failure", "unavailable", "nope"]),
        0..3,
    );
    let codes = prop::collection::vec(prop_oneof![0..1000u32, any::<u32>()], 0..3);
    (
        count(),
        on,
        codes,
        ms(),
        ms(),
        ratio(),
        count(),
        any::<(bool, bool)>(),
    )
        .prop_map(
            |(attempts, on, status_codes, base, max, budget_ratio, min, (disabled, non_idem))| {
                pb::Retry {
                    attempts,
                    on,
                    status_codes,
                    backoff_base_ms: base,
                    backoff_max_ms: max,
                    budget_ratio,
                    budget_min_per_second: min,
                    budget_disabled: disabled,
                    non_idempotent: non_idem,
                }
            },
        )
        .boxed()
}

fn breaker() -> BoxedStrategy<pb::CircuitBreaker> {
    let headers = prop::collection::hash_map(header_name(), header_value(), 0..3);
    let fallback =
        (count(), headers, any::<String>()).prop_map(|(status, headers, body)| pb::Fallback {
            status,
            headers,
            body,
        });
    let times = (ms(), ms(), ms());
    (count(), ratio(), count(), times, count(), some(fallback))
        .prop_map(
            |(consecutive_failures, rate, min, (window, open, max_open), probes, fallback)| {
                pb::CircuitBreaker {
                    consecutive_failures,
                    failure_rate_threshold: rate,
                    failure_rate_min_requests: min,
                    failure_rate_window_ms: window,
                    open_for_ms: open,
                    max_open_for_ms: max_open,
                    half_open_probes: probes,
                    fallback,
                }
            },
        )
        .boxed()
}

fn rate_limit() -> BoxedStrategy<pb::RateLimit> {
    let key = pick(&["global", "sourceIP", "header", "sourceService", ""]);
    (
        ratio(),
        count(),
        key,
        header_name(),
        any::<(bool, bool)>(),
        ms(),
    )
        .prop_map(
            |(rps, burst, key, key_header, (queue, server_side), max_delay_ms)| pb::RateLimit {
                requests_per_second: rps,
                burst,
                key,
                key_header,
                queue,
                max_delay_ms,
                server_side,
            },
        )
        .boxed()
}

fn fault() -> BoxedStrategy<pb::FaultInjection> {
    (
        ratio(),
        ms(),
        ratio(),
        count(),
        any::<bool>(),
        count(),
        header_name(),
        header_value(),
    )
        .prop_map(
            |(
                delay_percent,
                delay_ms,
                abort_percent,
                abort_status,
                abort_grpc,
                grpc,
                header_name,
                header_value,
            )| {
                pb::FaultInjection {
                    delay_percent,
                    delay_ms,
                    abort_percent,
                    abort_status,
                    abort_grpc,
                    abort_grpc_status: grpc,
                    header_name,
                    header_value,
                }
            },
        )
        .boxed()
}

fn outlier() -> impl Strategy<Value = pb::OutlierDetection> {
    (count(), count(), ms(), count()).prop_map(|(c5, cg, base, max)| pb::OutlierDetection {
        consecutive_5xx: c5,
        consecutive_gateway_errors: cg,
        base_ejection_time_ms: base,
        max_ejection_percent: max,
    })
}

fn load_balancer() -> impl Strategy<Value = pb::LoadBalancer> {
    let policy = pick(&[
        "round-robin",
        "random",
        "least-request",
        "consistent-hash",
        "peak-ewma",
        "",
    ]);
    let hash_on = pick(&["header", "cookie", "sourceIP", ""]);
    (policy, hash_on, header_name()).prop_map(|(policy, hash_on, hash_name)| pb::LoadBalancer {
        policy,
        hash_on,
        hash_name,
    })
}

fn health() -> impl Strategy<Value = pb::HealthCheck> {
    let path = pick(&["/", "", "/healthz", "no-slash"]);
    (path, ms(), ms(), count(), count()).prop_map(
        |(path, interval, timeout, healthy, unhealthy)| pb::HealthCheck {
            path,
            interval_ms: interval,
            timeout_ms: timeout,
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
        },
    )
}

fn bulkhead() -> impl Strategy<Value = pb::Bulkhead> {
    (count(), count()).prop_map(|(max_concurrent_requests, max_pending)| pb::Bulkhead {
        max_concurrent_requests,
        max_pending,
    })
}

/// The per-upstream groups of a policy, all present or all absent.
type Upstream = (
    pb::OutlierDetection,
    pb::LoadBalancer,
    pb::HealthCheck,
    pb::Bulkhead,
);

fn balancing() -> BoxedStrategy<Upstream> {
    (outlier(), load_balancer(), health(), bulkhead()).boxed()
}

fn policy() -> BoxedStrategy<pb::Policy> {
    let request = (
        some(timeouts()),
        some(retry()),
        some(rate_limit()),
        some(fault()),
    );
    let upstream = (some(breaker()), some(balancing()));
    (request, upstream)
        .prop_map(
            |((timeouts, retry, rate_limit, fault_injection), (breaker, balancing))| {
                let (o, lb, hc, bh) = match balancing {
                    Some((o, lb, hc, bh)) => (Some(o), Some(lb), Some(hc), Some(bh)),
                    None => (None, None, None, None),
                };
                pb::Policy {
                    timeouts,
                    retry,
                    circuit_breaker: breaker,
                    outlier_detection: o,
                    rate_limit,
                    bulkhead: bh,
                    load_balancer: lb,
                    health_check: hc,
                    fault_injection,
                }
            },
        )
        .boxed()
}

fn headers() -> impl Strategy<Value = Vec<pb::Header>> {
    let header =
        (header_name(), header_value()).prop_map(|(name, value)| pb::Header { name, value });
    prop::collection::vec(header, 0..3)
}

fn header_mod() -> BoxedStrategy<pb::HeaderModifier> {
    (
        headers(),
        headers(),
        prop::collection::vec(header_name(), 0..3),
    )
        .prop_map(|(set, add, remove)| pb::HeaderModifier { set, add, remove })
        .boxed()
}

fn path_rewrite() -> impl Strategy<Value = Option<(bool, String)>> {
    some((
        any::<bool>(),
        pick(&["/", "", "/new", "no-slash", "/a?b#c"]),
    ))
}

fn filter() -> BoxedStrategy<pb::Filter> {
    use pb::filter::Kind;
    let url_rewrite = (header_value(), path_rewrite()).prop_map(|(hostname, path)| {
        let path = path.map(|(full, p)| match full {
            true => pb::url_rewrite::Path::ReplaceFullPath(p),
            false => pb::url_rewrite::Path::ReplacePrefixMatch(p),
        });
        Kind::UrlRewrite(pb::UrlRewrite { hostname, path })
    });
    let status = prop_oneof![300..310u32, count()];
    let redirect = (
        pick(&["http", "https", "", "ftp:"]),
        header_value(),
        path_rewrite(),
        count(),
        status,
    )
        .prop_map(|(scheme, hostname, path, port, status_code)| {
            let path = path.map(|(full, p)| match full {
                true => pb::request_redirect::Path::ReplaceFullPath(p),
                false => pb::request_redirect::Path::ReplacePrefixMatch(p),
            });
            Kind::RequestRedirect(pb::RequestRedirect {
                scheme,
                hostname,
                path,
                port,
                status_code,
            })
        });
    let mirror = (name(), count())
        .prop_map(|(cluster, percent)| Kind::RequestMirror(pb::RequestMirror { cluster, percent }));
    let kind = prop_oneof![
        header_mod().prop_map(Kind::RequestHeaderModifier),
        header_mod().prop_map(Kind::ResponseHeaderModifier),
        url_rewrite,
        redirect,
        mirror,
    ];
    prop_oneof![9 => kind.prop_map(Some), 1 => Just(None)]
        .prop_map(|kind| pb::Filter { kind })
        .boxed()
}

fn route_match() -> BoxedStrategy<pb::RouteMatch> {
    let path =
        (match_type(), regex_or_text()).prop_map(|(r#type, value)| pb::PathMatch { r#type, value });
    let header =
        (header_name(), match_type(), regex_or_text()).prop_map(|(name, r#type, value)| {
            pb::HeaderMatch {
                name,
                r#type,
                value,
            }
        });
    let query =
        (any::<String>(), match_type(), regex_or_text()).prop_map(|(name, r#type, value)| {
            pb::QueryMatch {
                name,
                r#type,
                value,
            }
        });
    let method = pick(&["", "GET", "get", "X-CUSTOM", "BAD METHOD", "\0"]);
    (
        some(path),
        prop::collection::vec(header, 0..3),
        prop::collection::vec(query, 0..2),
        method,
    )
        .prop_map(|(path, headers, query_params, method)| pb::RouteMatch {
            path,
            headers,
            query_params,
            method,
        })
        .boxed()
}

fn route() -> BoxedStrategy<pb::Route> {
    let backend = (
        name(),
        prop_oneof![Just(0), Just(1), Just(u32::MAX), any::<u32>()],
    )
        .prop_map(|(cluster, weight)| pb::WeightedBackend { cluster, weight });
    let wasm = prop_oneof![4 => Just(Vec::new()), 1 => prop::collection::vec(name(), 1..3)];
    let parts = (
        name(),
        some(route_match()),
        prop::collection::vec(filter(), 0..3),
        prop::collection::vec(backend, 0..4),
    );
    (parts, ms(), wasm, some(policy()))
        .prop_map(
            |((name, r#match, filters, backends), timeout_ms, wasm, policy)| pb::Route {
                name,
                r#match,
                filters,
                backends,
                timeout_ms,
                wasm,
                policy,
            },
        )
        .boxed()
}

fn listener() -> BoxedStrategy<pb::Listener> {
    let domains = prop::collection::vec(
        pick(&["*", "*.a.com", "A.COM", "", "*.", "**", "a.com:80"]),
        0..3,
    );
    let vhost = (name(), domains, prop::collection::vec(route(), 0..3)).prop_map(
        |(name, domains, routes)| pb::VirtualHost {
            name,
            domains,
            routes,
        },
    );
    let port = prop_oneof![
        Just(0),
        Just(65535),
        Just(65536),
        Just(u32::MAX),
        any::<u32>()
    ];
    (name(), port, prop::collection::vec(vhost, 0..3))
        .prop_map(|(name, port, virtual_hosts)| pb::Listener {
            name,
            port,
            virtual_hosts,
            ..Default::default()
        })
        .boxed()
}

fn cluster() -> BoxedStrategy<pb::Cluster> {
    let address = pick(&[
        "127.0.0.1:80",
        "[::1]:0",
        "0.0.0.0:65535",
        "1.2.3.4",
        "localhost:80",
        "",
        "[fe80::1%2]:80",
        "256.1.1.1:1",
        "1.2.3.4:99999",
        "[::ffff:1.2.3.4]:8080",
    ]);
    let identity = pick(&[
        "",
        "spiffe://cluster.local/ns/default/sa/backend",
        "spiffe://example.org/ns/a/gateway/g",
        "spiffe://",
        "spiffe://Cluster.local/ns/a/sa/b",
        "spiffe://cluster.local/ns/a/sa/b?x=1",
        "http://cluster.local/ns/a/sa/b",
    ]);
    let endpoint = (
        address,
        prop::collection::hash_map(any::<String>(), any::<String>(), 0..2),
        name(),
        identity,
    )
        .prop_map(|(address, labels, node_id, identity)| pb::Endpoint {
            address,
            labels,
            node_id,
            identity,
            tls: None,
        });
    (
        name(),
        prop_oneof![4 => 0..3i32, 1 => any::<i32>()],
        prop::collection::vec(endpoint, 0..3),
        some(policy()),
    )
        .prop_map(|(name, protocol, endpoints, policy)| pb::Cluster {
            name,
            protocol,
            endpoints,
            policy,
        })
        .boxed()
}

fn access_log() -> BoxedStrategy<pb::AccessLog> {
    (
        prop_oneof![4 => 0..2i32, 1 => any::<i32>()],
        pick(&[
            "stdout",
            "stderr",
            "/var/log/a.log",
            "relative.log",
            "",
            "../x",
        ]),
        prop_oneof![3 => 0..=1_000_000u32, 1 => any::<u32>()],
    )
        .prop_map(|(format, path, sampling_ppm)| pb::AccessLog {
            format,
            path,
            sampling_ppm,
        })
        .boxed()
}

fn snapshot() -> BoxedStrategy<pb::Snapshot> {
    let wasm = prop_oneof![4 => Just(Vec::new()), 1 => prop::collection::vec(name(), 1..3)];
    let parts = (
        prop::collection::vec(listener(), 0..3),
        prop::collection::vec(cluster(), 0..4),
        wasm,
        some(rate_limit()),
        prop::collection::vec(any::<u8>(), 0..40),
        pick(&[
            "",
            "cluster.local",
            "example.org",
            "Upper.case",
            "td:1",
            "a b",
        ]),
        prop_oneof![4 => 0..3i32, 1 => any::<i32>()],
        some(access_log()),
    );
    parts
        .prop_map(
            |(listeners, clusters, inbound_wasm, inbound_rate_limit, mesh_key, td, mtls, log)| {
                pb::Snapshot {
                    listeners,
                    clusters,
                    wasm_plugins: Vec::new(),
                    inbound_wasm,
                    inbound_rate_limit,
                    mesh_key,
                    trust_domain: td,
                    inbound_mtls: mtls,
                    authorization: Vec::new(),
                    access_log: log,
                    tracing: None,
                }
            },
        )
        .boxed()
}

/// What a snapshot built from `pb` must look like: every listener, cluster and route kept, backends with a
/// running total of their (non-zero) weights. A refusal must say where and why.
fn check(
    pb: &pb::Snapshot,
    built: Result<Snapshot, super::InvalidSnapshot>,
) -> Result<(), TestCaseError> {
    let snap = match built {
        Ok(s) => s,
        Err(e) => {
            prop_assert!(!e.message.is_empty(), "a refusal without a reason: {:?}", e);
            return Ok(());
        }
    };
    // Compared encoded: a NaN (a ratio, a percentage) is not equal to itself.
    prop_assert_eq!(snap.source.encode_to_vec(), pb.encode_to_vec());
    prop_assert_eq!(snap.listeners.len(), pb.listeners.len());
    match (&pb.access_log, &snap.access_log) {
        (None, None) => {}
        (Some(p), Some(a)) => {
            prop_assert_eq!(a.json, p.format == 0);
            prop_assert_eq!(&*a.path, p.path.as_str());
            prop_assert!(a.path.starts_with('/') || ["stdout", "stderr"].contains(&&*a.path));
            prop_assert!(a.sampling_ppm == p.sampling_ppm && a.sampling_ppm <= 1_000_000);
        }
        (p, a) => prop_assert!(false, "access log {:?} built as {:?}", p, a),
    }
    prop_assert!(snap.clusters.len() <= pb.clusters.len());
    for listener in snap.listeners.values() {
        for route in listener.vhosts.hosts.iter().flat_map(|h| &h.routes) {
            let totals: Vec<u32> = route.backends.iter().map(|b| b.cumulative).collect();
            prop_assert!(totals.windows(2).all(|w| w[0] < w[1]), "{:?}", totals);
            prop_assert_eq!(route.total_weight, totals.last().copied().unwrap_or(0));
        }
    }
    Ok(())
}

#[test]
fn generated_snapshots_build_or_are_refused() {
    proptest!(ProptestConfig::with_cases(1024), |(pb in snapshot())| {
        let built = Snapshot::from_proto(7, pb.clone(), HashMap::new());
        check(&pb, built)?;
    });
}

/// Bytes as a push may carry them: random, or a generated snapshot's encoding with a few bytes changed.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    let changes = prop::collection::vec((any::<usize>(), any::<u8>()), 1..8);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        (snapshot(), changes).prop_map(|(pb, changes)| {
            let mut bytes = pb.encode_to_vec();
            for (at, b) in changes {
                if !bytes.is_empty() {
                    let at = at % bytes.len();
                    bytes[at] = b;
                }
            }
            bytes
        }),
    ]
}

#[test]
fn decoded_bytes_build_or_are_refused() {
    proptest!(ProptestConfig::with_cases(2048), |(bytes in wire_bytes())| {
        if let Ok(decoded) = pb::Snapshot::decode(bytes.as_slice()) {
            let built = Snapshot::from_proto(7, decoded.clone(), HashMap::new());
            check(&decoded, built)?;
        }
    });
}

/// A valid proxy-wasm module: the ABI marker and a memory, nothing else.
fn tiny_module() -> &'static [u8] {
    static CODE: OnceLock<Vec<u8>> = OnceLock::new();
    CODE.get_or_init(|| {
        wat::parse_str(
            r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1")))"#,
        )
        .unwrap()
    })
}

fn digest(code: &[u8]) -> String {
    Sha256::digest(code)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The modules of a push (the tiny valid one, garbage, or a digest that does not match its code) and the plugins
/// built from them, with limits at their extremes (no memory at all, no CPU deadline to speak of).
fn wasm_push() -> impl Strategy<Value = (Vec<pb::WasmModule>, Vec<pb::WasmPlugin>)> {
    let module = prop_oneof![
        3 => Just(tiny_module().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ];
    let modules = prop::collection::vec((module, any::<bool>()), 0..2).prop_map(|ms| {
        ms.into_iter()
            .map(|(code, honest)| pb::WasmModule {
                digest: if honest { digest(&code) } else { "00".into() },
                code,
            })
            .collect::<Vec<_>>()
    });
    let named = prop_oneof![Just(digest(tiny_module())), pick(&["00", ""])];
    let limits = (ms(), ms(), ms());
    let plugin = (
        name(),
        named,
        prop::collection::vec(any::<u8>(), 0..16),
        any::<bool>(),
        limits,
    )
        .prop_map(
            |(name, digest, config, fail_open, (memory, cpu, body))| pb::WasmPlugin {
                name,
                digest,
                root_id: String::new(),
                config,
                fail_open,
                env: HashMap::new(),
                memory_limit_bytes: memory,
                cpu_per_call_ms: cpu,
                body_buffer_bytes: body,
            },
        );
    (modules, prop::collection::vec(plugin, 0..3))
}

#[test]
fn pushes_with_wasm_modules_build_or_are_refused() {
    let wasm = LazyWasm::new(1, None);
    let config = ProptestConfig::with_cases(256);
    proptest!(config, |(pb in snapshot(), (modules, plugins) in wasm_push())| {
        let mut pb = pb;
        pb.wasm_plugins = plugins;
        let received = Received::new(7, pb, modules);
        let _ = received.build(&wasm, &Snapshot::empty(), "node-1");
    });
}

#[test]
fn endpoint_identities_and_the_inbound_mode_are_read() {
    use crate::config::snapshot::MtlsMode;
    let endpoint = |address: &str, identity: &str| pb::Endpoint {
        address: address.into(),
        identity: identity.into(),
        ..Default::default()
    };
    let pb = |identity: &str, mode: i32| pb::Snapshot {
        clusters: vec![pb::Cluster {
            name: "backend".into(),
            endpoints: vec![
                endpoint("127.0.0.1:1", identity),
                endpoint("127.0.0.1:2", ""),
            ],
            ..Default::default()
        }],
        trust_domain: "cluster.local".into(),
        inbound_mtls: mode,
        ..Default::default()
    };
    let id = "spiffe://cluster.local/ns/default/sa/backend";
    let snap =
        Snapshot::from_proto(1, pb(id, pb::MtlsMode::MtlsStrict as i32), HashMap::new()).unwrap();
    let endpoints = &snap.clusters["backend"].endpoints;
    assert_eq!(endpoints[0].identity.as_ref().map(|i| i.as_str()), Some(id));
    assert_eq!(endpoints[1].identity, None);
    assert_eq!(snap.inbound_mtls, MtlsMode::Strict);
    assert_eq!(
        snap.trust_domain.as_ref().map(|t| t.as_str()),
        Some("cluster.local")
    );
    let default = Snapshot::from_proto(1, pb(id, 0), HashMap::new()).unwrap();
    assert_eq!(default.inbound_mtls, MtlsMode::Permissive);

    let bad = Snapshot::from_proto(
        1,
        pb("spiffe://cluster.local/ns/a/sa/b?x", 0),
        HashMap::new(),
    );
    let err = bad.err().unwrap();
    assert!(
        err.path.contains("backend") && err.message.contains("identity"),
        "{err}"
    );
    let unknown = Snapshot::from_proto(1, pb(id, 9), HashMap::new())
        .err()
        .unwrap();
    assert_eq!(unknown.path, "inbound_mtls");
}

//! What tracing a proxy does: the Mesh's `spec.tracing` as pushed (`MeshTracing`, plain snapshot data), the
//! proxy's OpenTelemetry environment variables as every OpenTelemetry SDK reads them (`Env`, read once at
//! start), and the two merged field by field, the Mesh winning (`TraceConfig`, what the request path and the
//! exporter use).

use std::sync::Arc;
use std::time::Duration;

use super::context::Propagators;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// The Mesh's `spec.tracing`: None fields are left to the environment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MeshTracing {
    pub enabled: bool,
    pub endpoint: Option<String>,
    pub protocol: Option<Protocol>,
    pub sampling_ppm: Option<u32>,
    pub propagators: Option<Propagators>,
    pub resource: Vec<(String, String)>,
}

/// How new traces are sampled (a parent's decision is always followed, except by `AlwaysOff`/`AlwaysOn`
/// samplers that are not parent-based).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// Share of new traces, in parts per million.
    pub ratio_ppm: u32,
    /// Whether an incoming sampled/unsampled decision is followed.
    pub parent_based: bool,
}

/// The proxy's `OTEL_*` environment. Unset or unreadable variables are None (an unreadable one is reported
/// once, at start, by `Env::read`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Env {
    /// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
    pub disabled: bool,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is).
    pub traces_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (HTTP: `/v1/traces` is appended).
    pub endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub protocol: Option<Protocol>,
    /// `OTEL_TRACES_SAMPLER` with `OTEL_TRACES_SAMPLER_ARG`.
    pub sampler: Option<Sampler>,
    pub propagators: Option<Propagators>,
    /// `OTEL_RESOURCE_ATTRIBUTES` (and `OTEL_SERVICE_NAME` as `service.name`).
    pub resource: Vec<(String, String)>,
    /// `OTEL_BSP_SCHEDULE_DELAY` (default 5 s).
    pub schedule_delay: Option<Duration>,
    /// `OTEL_BSP_MAX_QUEUE_SIZE` (default 2048).
    pub max_queue: Option<usize>,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (default 512).
    pub max_batch: Option<usize>,
    /// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT` (default 10 s).
    pub timeout: Option<Duration>,
}

impl Env {
    /// Reads the variables from `var` (the process environment in production); returns what it could not read,
    /// each naming the variable and what was expected (those are then ignored, as SDKs do).
    pub fn read(var: impl Fn(&str) -> Option<String>) -> (Env, Vec<String>) {
        let mut problems = Vec::new();
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let mut endpoint = |name: &str| {
            let v = var(name)?;
            if v.trim().starts_with("http://") {
                return Some(v.trim().to_string());
            }
            problems.push(format!(
                "{name}: expected an http:// URL (the exporter has no TLS yet), got {v:?}"
            ));
            None
        };
        let (traces_endpoint, endpoint) = (
            endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            endpoint("OTEL_EXPORTER_OTLP_ENDPOINT"),
        );
        let mut env = Env {
            disabled: var("OTEL_SDK_DISABLED")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
                || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none"),
            traces_endpoint,
            endpoint,
            ..Env::default()
        };
        let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .map(|v| ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v))
            .or_else(|| {
                var("OTEL_EXPORTER_OTLP_PROTOCOL").map(|v| ("OTEL_EXPORTER_OTLP_PROTOCOL", v))
            });
        if let Some((name, v)) = protocol {
            match v.trim() {
                "grpc" => env.protocol = Some(Protocol::Grpc),
                "http/protobuf" => env.protocol = Some(Protocol::HttpProtobuf),
                other => problems.push(format!(
                    "{name}: expected grpc or http/protobuf, got {other:?} (http/json is not supported)"
                )),
            }
        }
        match sampler(var("OTEL_TRACES_SAMPLER"), var("OTEL_TRACES_SAMPLER_ARG")) {
            Ok(s) => env.sampler = s,
            Err(e) => problems.push(e),
        }
        if let Some(v) = var("OTEL_PROPAGATORS") {
            match Propagators::parse(v.split(',')) {
                Ok(p) => env.propagators = Some(p),
                Err(e) => problems.push(format!("OTEL_PROPAGATORS: {e}")),
            }
        }
        if let Some(v) = var("OTEL_RESOURCE_ATTRIBUTES") {
            match resource_attributes(&v) {
                Ok(attrs) => env.resource = attrs,
                Err(e) => problems.push(format!("OTEL_RESOURCE_ATTRIBUTES: {e}")),
            }
        }
        if let Some(name) = var("OTEL_SERVICE_NAME") {
            env.resource.retain(|(k, _)| k != "service.name");
            env.resource.push(("service.name".to_string(), name));
        }
        let mut millis = |name: &str| -> Option<Duration> {
            let v = var(name)?;
            match v.trim().parse::<u64>() {
                Ok(ms) => Some(Duration::from_millis(ms)),
                Err(_) => {
                    problems.push(format!("{name}: expected milliseconds, got {v:?}"));
                    None
                }
            }
        };
        env.schedule_delay = millis("OTEL_BSP_SCHEDULE_DELAY");
        env.timeout = millis("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .or_else(|| millis("OTEL_EXPORTER_OTLP_TIMEOUT"));
        let mut count = |name: &str| -> Option<usize> {
            let v = var(name)?;
            match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    problems.push(format!("{name}: expected a positive number, got {v:?}"));
                    None
                }
            }
        };
        env.max_queue = count("OTEL_BSP_MAX_QUEUE_SIZE");
        env.max_batch = count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE");
        (env, problems)
    }

    /// Whether the environment alone turns tracing on: it names a collector.
    fn wants_tracing(&self) -> bool {
        !self.disabled && (self.traces_endpoint.is_some() || self.endpoint.is_some())
    }
}

/// `OTEL_TRACES_SAMPLER` / `_ARG`, as the OpenTelemetry SDK specification defines them.
fn sampler(name: Option<String>, arg: Option<String>) -> Result<Option<Sampler>, String> {
    let Some(name) = name else {
        return Ok(None);
    };
    let ratio = || -> Result<u32, String> {
        match arg.as_deref().map(str::trim) {
            None => Ok(1_000_000),
            Some(a) => match a.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok((r * 1_000_000.0).round() as u32),
                _ => Err(format!(
                    "OTEL_TRACES_SAMPLER_ARG: expected a ratio from 0 to 1, got {a:?}"
                )),
            },
        }
    };
    let (ratio_ppm, parent_based) = match name.trim() {
        "always_on" => (1_000_000, false),
        "always_off" => (0, false),
        "traceidratio" => (ratio()?, false),
        "parentbased_always_on" => (1_000_000, true),
        "parentbased_always_off" => (0, true),
        "parentbased_traceidratio" => (ratio()?, true),
        other => {
            return Err(format!(
                "OTEL_TRACES_SAMPLER: expected always_on, always_off, traceidratio, parentbased_always_on, \
                 parentbased_always_off or parentbased_traceidratio, got {other:?}"
            ))
        }
    };
    Ok(Some(Sampler {
        ratio_ppm,
        parent_based,
    }))
}

/// `key1=value1,key2=value2`, values percent-decoded (W3C Baggage octets, as the specification says).
fn resource_attributes(v: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in v.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((k, val)) = pair.split_once('=') else {
            return Err(format!(
                "expected key=value pairs separated by commas, got {pair:?}"
            ));
        };
        let key = k.trim();
        if key.is_empty() {
            return Err(format!("empty key in {pair:?}"));
        }
        let value: String =
            form_urlencoded::parse(format!("x={}", val.trim().replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
        out.retain(|(k, _): &(String, String)| k != key);
        out.push((key.to_string(), value));
    }
    Ok(out)
}

/// Default OTLP endpoints (OpenTelemetry's).
const GRPC_DEFAULT: &str = "http://localhost:4317";
const HTTP_DEFAULT: &str = "http://localhost:4318/v1/traces";

/// Tracing as a proxy does it: every field decided.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// The full URL spans are sent to (HTTP: with its `/v1/traces` path).
    pub endpoint: String,
    pub protocol: Protocol,
    pub sampler: Sampler,
    pub propagators: Propagators,
    /// Resource attributes beyond the proxy's own (service.name and the like, added by the exporter).
    pub resource: Vec<(String, String)>,
    pub schedule_delay: Duration,
    pub max_queue: usize,
    pub max_batch: usize,
    pub timeout: Duration,
}

/// The tracing a proxy does: None when neither the Mesh nor the environment asks for it, or either says off.
pub fn resolve(mesh: Option<&MeshTracing>, env: &Env) -> Option<Arc<TraceConfig>> {
    match mesh {
        Some(m) if !m.enabled => return None,
        None if !env.wants_tracing() => return None,
        _ => {}
    }
    let mesh = mesh.cloned().unwrap_or_default();
    let protocol = mesh
        .protocol
        .or(env.protocol)
        .unwrap_or(Protocol::HttpProtobuf);
    let endpoint = match (&mesh.endpoint, &env.traces_endpoint, &env.endpoint) {
        (Some(e), _, _) | (None, Some(e), _) => e.clone(),
        (None, None, Some(base)) => match protocol {
            Protocol::Grpc => base.clone(),
            Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
        },
        (None, None, None) => match protocol {
            Protocol::Grpc => GRPC_DEFAULT.to_string(),
            Protocol::HttpProtobuf => HTTP_DEFAULT.to_string(),
        },
    };
    let sampler = match (mesh.sampling_ppm, env.sampler) {
        (Some(ratio_ppm), _) => Sampler {
            ratio_ppm,
            parent_based: true,
        },
        (None, Some(s)) => s,
        (None, None) => Sampler {
            ratio_ppm: 1_000_000,
            parent_based: true,
        },
    };
    let mut resource = env.resource.clone();
    for (k, v) in mesh.resource {
        resource.retain(|(key, _)| *key != k);
        resource.push((k, v));
    }
    Some(Arc::new(TraceConfig {
        endpoint,
        protocol,
        sampler,
        propagators: mesh
            .propagators
            .or(env.propagators)
            .unwrap_or(Propagators::TRACECONTEXT),
        resource,
        schedule_delay: env.schedule_delay.unwrap_or(Duration::from_secs(5)),
        max_queue: env.max_queue.unwrap_or(2048),
        max_batch: env.max_batch.unwrap_or(512),
        timeout: env.timeout.unwrap_or(Duration::from_secs(10)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> (Env, Vec<String>) {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::read(move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn no_mesh_block_and_no_endpoint_variable_means_no_tracing() {
        let (e, problems) = env(&[("OTEL_TRACES_SAMPLER", "always_on")]);
        assert!(problems.is_empty());
        assert_eq!(resolve(None, &e), None);
    }

    #[test]
    fn the_environment_alone_configures_tracing() {
        let (e, problems) = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_PROPAGATORS", "b3multi,tracecontext"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,team=a%20b",
            ),
            ("OTEL_SERVICE_NAME", "edge"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        let c = resolve(None, &e);
        let c = c.as_deref();
        assert_eq!(
            c.map(|c| c.endpoint.as_str()),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(c.map(|c| c.protocol), Some(Protocol::HttpProtobuf));
        assert_eq!(
            c.map(|c| c.sampler),
            Some(Sampler {
                ratio_ppm: 250_000,
                parent_based: true
            })
        );
        assert_eq!(
            c.map(|c| c.propagators.names()),
            Some(vec!["tracecontext", "b3multi"])
        );
        assert_eq!(
            c.map(|c| c.schedule_delay),
            Some(Duration::from_millis(200))
        );
        let resource = c.map(|c| c.resource.clone()).unwrap_or_default();
        assert!(
            resource.contains(&("team".into(), "a b".into())),
            "{resource:?}"
        );
        assert!(
            resource.contains(&("service.name".into(), "edge".into())),
            "{resource:?}"
        );
    }

    #[test]
    fn grpc_uses_the_base_endpoint_as_is_and_the_signal_endpoint_wins() {
        let (e, _) = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        assert_eq!(
            resolve(None, &e).map(|c| c.endpoint.clone()).as_deref(),
            Some("http://c:4317")
        );
        let (e, _) = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9999/custom"),
        ]);
        assert_eq!(
            resolve(None, &e).map(|c| c.endpoint.clone()).as_deref(),
            Some("http://t:9999/custom")
        );
    }

    #[test]
    fn the_mesh_overrides_the_environment_field_by_field() {
        let (e, _) = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
            ("OTEL_RESOURCE_ATTRIBUTES", "a=env,b=env"),
        ]);
        let mesh = MeshTracing {
            enabled: true,
            sampling_ppm: Some(10_000),
            resource: vec![("b".into(), "mesh".into())],
            ..MeshTracing::default()
        };
        let c = resolve(Some(&mesh), &e);
        let c = c.as_deref();
        assert_eq!(
            c.map(|c| c.endpoint.as_str()),
            Some("http://env:4318/v1/traces")
        );
        assert_eq!(
            c.map(|c| c.sampler),
            Some(Sampler {
                ratio_ppm: 10_000,
                parent_based: true
            })
        );
        assert_eq!(
            c.map(|c| c.resource.clone()),
            Some(vec![
                ("a".into(), "env".into()),
                ("b".into(), "mesh".into())
            ])
        );
        // A Mesh block turns tracing on with the OpenTelemetry default endpoint.
        let on = MeshTracing {
            enabled: true,
            protocol: Some(Protocol::Grpc),
            ..MeshTracing::default()
        };
        assert_eq!(
            resolve(Some(&on), &Env::default())
                .map(|c| c.endpoint.clone())
                .as_deref(),
            Some("http://localhost:4317")
        );
    }

    #[test]
    fn either_side_can_turn_tracing_off_and_the_mesh_wins() {
        let (e, _) = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318")]);
        assert_eq!(resolve(Some(&MeshTracing::default()), &e), None);
        let (off, _) = env(&[("OTEL_SDK_DISABLED", "true")]);
        let mesh = MeshTracing {
            enabled: true,
            ..MeshTracing::default()
        };
        assert!(
            resolve(Some(&mesh), &off).is_some(),
            "the Mesh says otherwise than the environment: it wins"
        );
        let (none, _) = env(&[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://e"),
        ]);
        assert_eq!(resolve(None, &none), None);
    }

    #[test]
    fn unreadable_variables_are_reported_by_name_and_ignored() {
        let (e, problems) = env(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ("OTEL_PROPAGATORS", "jaeger"),
            ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
            ("OTEL_RESOURCE_ATTRIBUTES", "novalue"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
        ]);
        assert_eq!(e.endpoint, None);
        assert_eq!(e.protocol, None);
        assert_eq!(e.sampler, None);
        let text = problems.join("\n");
        for name in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_TRACES_SAMPLER_ARG",
            "OTEL_PROPAGATORS",
            "OTEL_BSP_SCHEDULE_DELAY",
            "OTEL_RESOURCE_ATTRIBUTES",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ] {
            assert!(text.contains(name), "{name} not in {text}");
        }
    }
}

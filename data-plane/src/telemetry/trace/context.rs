//! Trace context on the wire: reading it from a request (W3C `traceparent`/`tracestate`, B3 single-header `b3`,
//! B3 multi-header `X-B3-*`) and writing it for the next hop in the formats the mesh asks for. Hand-written
//! rather than OpenTelemetry's propagators: this runs on every traced request, and reading two headers into
//! fixed arrays needs no `Extractor` indirection, no allocation and no string copies.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const B3: HeaderName = HeaderName::from_static("b3");
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// The formats a proxy writes for the next hop (it reads all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Propagators {
    pub tracecontext: bool,
    pub b3: bool,
    pub b3multi: bool,
}

impl Propagators {
    pub const TRACECONTEXT: Propagators = Propagators {
        tracecontext: true,
        b3: false,
        b3multi: false,
    };

    /// From OpenTelemetry names (`OTEL_PROPAGATORS`, the Mesh's `propagators`): `tracecontext`, `b3`, `b3multi`;
    /// `baggage` is accepted and means nothing here (baggage passes through untouched), `none` writes nothing.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Propagators, String> {
        let mut p = Propagators::default();
        for name in names {
            match name.trim() {
                "tracecontext" => p.tracecontext = true,
                "b3" => p.b3 = true,
                "b3multi" => p.b3multi = true,
                "baggage" | "none" | "" => {}
                other => {
                    return Err(format!(
                        "unknown propagator {other:?} (expected tracecontext, b3, b3multi, baggage or none)"
                    ))
                }
            }
        }
        Ok(p)
    }

    pub fn names(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (on, name) in [
            (self.tracecontext, "tracecontext"),
            (self.b3, "b3"),
            (self.b3multi, "b3multi"),
        ] {
            if on {
                out.push(name);
            }
        }
        out
    }
}

/// A 16-byte trace id (never all zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id (never all zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

impl SpanId {
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

/// The context a request arrived with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub trace_id: TraceId,
    /// The caller's span: the parent of this proxy's span.
    pub span_id: SpanId,
    /// The caller's sampling decision; None: it deferred (B3 without a sampling state).
    pub sampled: Option<bool>,
    /// W3C `tracestate`, passed on unchanged.
    pub tracestate: Option<HeaderValue>,
}

/// The context in a request, from the first format that carries a valid one: `traceparent`, then `b3`, then
/// `X-B3-TraceId`/`X-B3-SpanId`. A malformed header is ignored (the request starts a new trace), as the W3C
/// specification asks. `b3: 0` (or `X-B3-Sampled: 0` alone) is a decision without a context: `Err(false)`.
pub fn extract(headers: &HeaderMap) -> Result<Incoming, Option<bool>> {
    from_carried(&Carried::of(headers))
}

/// The context headers a request carries, each name's first value, found in one pass over its headers: most
/// requests carry none, and one pass over their few names costs less than eight lookups that all miss.
#[derive(Default)]
pub struct Carried<'a> {
    values: [Option<&'a HeaderValue>; 8],
    /// Every `tracestate` line joined with commas, when there is more than one.
    tracestate: Option<HeaderValue>,
}

/// The names `Carried` looks for, in its slots' order (also what `inject` replaces).
const NAMES: [HeaderName; 8] = [
    TRACEPARENT,
    TRACESTATE,
    B3,
    B3_TRACE_ID,
    B3_SPAN_ID,
    B3_PARENT_SPAN_ID,
    B3_SAMPLED,
    B3_FLAGS,
];

impl<'a> Carried<'a> {
    pub fn of(headers: &'a HeaderMap) -> Carried<'a> {
        let mut c = Carried::default();
        for (name, value) in headers {
            let slot = match name.as_str() {
                "traceparent" => 0,
                "tracestate" => 1,
                "b3" => 2,
                "x-b3-traceid" => 3,
                "x-b3-spanid" => 4,
                "x-b3-parentspanid" => 5,
                "x-b3-sampled" => 6,
                "x-b3-flags" => 7,
                _ => continue,
            };
            if slot == 1 && c.values[1].is_some() {
                c.join_tracestate(value);
                continue;
            }
            c.values[slot].get_or_insert(value);
        }
        c
    }

    fn join_tracestate(&mut self, more: &HeaderValue) {
        let first = self.tracestate.as_ref().or(self.values[1]);
        let mut joined = first.map(|v| v.as_bytes().to_vec()).unwrap_or_default();
        joined.push(b',');
        joined.extend_from_slice(more.as_bytes());
        self.tracestate = HeaderValue::from_bytes(&joined).ok();
    }

    /// Which of the names were there, one bit each in `NAMES` order.
    pub fn mask(&self) -> u8 {
        self.values
            .iter()
            .enumerate()
            .fold(0, |m, (i, v)| m | (u8::from(v.is_some()) << i))
    }
}

/// The context `c` carries (see `extract`).
pub fn from_carried(c: &Carried<'_>) -> Result<Incoming, Option<bool>> {
    let [traceparent_v, tracestate, b3, trace, span, _, sampled, flags] = c.values;
    if let Some(found) = traceparent_v.and_then(traceparent) {
        // Several tracestate lines are one list (W3C): `Carried` keeps them joined.
        return Ok(Incoming {
            tracestate: c.tracestate.clone().or_else(|| tracestate.cloned()),
            ..found
        });
    }
    if let Some(v) = b3 {
        match b3_single(v.as_bytes()) {
            B3Single::Context(found) => return Ok(found),
            B3Single::Deny => return Err(Some(false)),
            B3Single::Sample => return Err(Some(true)),
            B3Single::Invalid => {}
        }
    }
    b3_multi(trace, span, sampled, flags)
}

fn traceparent(v: &HeaderValue) -> Option<Incoming> {
    let b = v.as_bytes();
    // version "-" trace-id "-" parent-id "-" flags; a later version may append fields after another "-".
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = unhex::<1>(&b[0..2])?[0];
    if version == 0xff
        || (version == 0 && b.len() != 55)
        || (version > 0 && b.len() > 55 && b[55] != b'-')
    {
        return None;
    }
    let trace_id = valid_trace(unhex::<16>(&b[3..35])?)?;
    let span_id = valid_span(unhex::<8>(&b[36..52])?)?;
    let flags = unhex::<1>(&b[53..55])?[0];
    Some(Incoming {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
        tracestate: None,
    })
}

enum B3Single {
    Context(Incoming),
    Deny,
    Sample,
    Invalid,
}

/// `b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`, or a lone sampling state.
fn b3_single(b: &[u8]) -> B3Single {
    let mut parts = b.split(|c| *c == b'-');
    let first = parts.next().unwrap_or_default();
    // A lone sampling state: a decision without a context.
    match first {
        b"0" => return B3Single::Deny,
        b"1" | b"d" => return B3Single::Sample,
        _ => {}
    }
    let (Some(trace_id), Some(span)) = (b3_trace_id(first), parts.next()) else {
        return B3Single::Invalid;
    };
    let Some(span_id) = unhex::<8>(span).and_then(valid_span) else {
        return B3Single::Invalid;
    };
    let sampled = match parts.next() {
        None => None,
        Some(b"1" | b"d") => Some(true),
        Some(b"0") => Some(false),
        Some(_) => return B3Single::Invalid,
    };
    // The parent span id, if present, must be one; nothing may follow it.
    if parts.next().is_some_and(|p| unhex::<8>(p).is_none()) || parts.next().is_some() {
        return B3Single::Invalid;
    }
    B3Single::Context(Incoming {
        trace_id,
        span_id,
        sampled,
        tracestate: None,
    })
}

fn b3_multi(
    trace: Option<&HeaderValue>,
    span: Option<&HeaderValue>,
    sampled: Option<&HeaderValue>,
    flags: Option<&HeaderValue>,
) -> Result<Incoming, Option<bool>> {
    let sampled = match (flags, sampled) {
        (Some(f), _) if f.as_bytes() == b"1" => Some(true),
        (_, Some(s)) => match s.as_bytes() {
            b"1" | b"true" => Some(true),
            b"0" | b"false" => Some(false),
            _ => None,
        },
        _ => None,
    };
    let trace_id = trace.and_then(|v| b3_trace_id(v.as_bytes()));
    let span_id = span
        .and_then(|v| unhex::<8>(v.as_bytes()))
        .and_then(valid_span);
    match (trace_id, span_id) {
        (Some(trace_id), Some(span_id)) => Ok(Incoming {
            trace_id,
            span_id,
            sampled,
            tracestate: None,
        }),
        _ => Err(sampled),
    }
}

/// B3 trace ids are 32 or 16 hex digits; a 64-bit one is left-padded with zeros.
fn b3_trace_id(b: &[u8]) -> Option<TraceId> {
    match b.len() {
        32 => valid_trace(unhex::<16>(b)?),
        16 => {
            let low = unhex::<8>(b)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            valid_trace(id)
        }
        _ => None,
    }
}

fn valid_trace(id: [u8; 16]) -> Option<TraceId> {
    (id != [0; 16]).then_some(TraceId(id))
}

fn valid_span(id: [u8; 8]) -> Option<SpanId> {
    (id != [0; 8]).then_some(SpanId(id))
}

/// Lowercase hex only, as W3C requires (B3 is lowercase too).
fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Two lowercase hex digits per byte into `out` (twice as long as `bytes`), by table: this runs for every traced
/// request, and an iterator of digit pairs cost ten times as much.
fn hex_to(bytes: &[u8], out: &mut [u8]) {
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX[(b >> 4) as usize];
        pair[1] = HEX[(b & 15) as usize];
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_to(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// What this hop tells the next: the trace, the span that is the next hop's parent, the decision.
pub struct Outgoing<'a> {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
    pub tracestate: Option<&'a HeaderValue>,
}

/// Replaces whatever context the request carries with this hop's, in each configured format (a format not
/// configured is removed, so the next hop never reads a stale context). `carried`: which context headers the
/// request arrived with (`Carried::mask`); only those need removing.
pub fn inject(headers: &mut HeaderMap, formats: Propagators, out: &Outgoing<'_>, carried: u8) {
    if carried != 0 {
        for (i, name) in NAMES.iter().enumerate() {
            if carried & (1 << i) != 0 {
                headers.remove(name);
            }
        }
    }
    let sampled = if out.sampled { b'1' } else { b'0' };
    // {trace id}-{span id}, as traceparent and b3 both have it.
    let mut ids = [b'-'; 49];
    hex_to(&out.trace_id.0, &mut ids[..32]);
    hex_to(&out.span_id.0, &mut ids[33..]);
    if formats.tracecontext {
        let mut v = [0u8; 55];
        v[..3].copy_from_slice(b"00-");
        v[3..52].copy_from_slice(&ids);
        v[52..].copy_from_slice(&[b'-', b'0', sampled]);
        insert(headers, TRACEPARENT, &v);
        if let Some(state) = out.tracestate {
            headers.insert(TRACESTATE, state.clone());
        }
    }
    if formats.b3 {
        let mut v = [0u8; 51];
        v[..49].copy_from_slice(&ids);
        v[49..].copy_from_slice(&[b'-', sampled]);
        insert(headers, B3, &v);
    }
    if formats.b3multi {
        insert(headers, B3_TRACE_ID, &ids[..32]);
        insert(headers, B3_SPAN_ID, &ids[33..]);
        insert(headers, B3_SAMPLED, &[sampled]);
    }
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &[u8]) {
    if let Ok(v) = HeaderValue::from_bytes(value) {
        headers.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                (*k).clone(),
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
            );
        }
        h
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_is_read_with_its_flag_and_tracestate() {
        let h = map(&[(&TRACEPARENT, TP), (&TRACESTATE, "congo=t61rcWkgMzE")]);
        let got = extract(&h).ok();
        let got = got.as_ref();
        assert_eq!(
            got.map(|c| c.trace_id.hex()).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            got.map(|c| c.span_id.hex()).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(got.and_then(|c| c.sampled), Some(true));
        assert_eq!(
            got.and_then(|c| c.tracestate.clone()),
            Some(HeaderValue::from_static("congo=t61rcWkgMzE"))
        );
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(extract(&map(&[(&TRACEPARENT, bad)])).is_err(), "{bad}");
        }
        // A later version may carry more fields.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-ever";
        assert_eq!(
            extract(&map(&[(&TRACEPARENT, later)]))
                .ok()
                .and_then(|c| c.sampled),
            Some(false)
        );
    }

    #[test]
    fn b3_single_header_forms() {
        let full = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90";
        let c = extract(&map(&[(&B3, full)])).ok();
        assert_eq!(
            c.as_ref().map(|c| c.span_id.hex()).as_deref(),
            Some("e457b5a2e4d86bd1")
        );
        assert_eq!(c.and_then(|c| c.sampled), Some(true));
        let deferred = extract(&map(&[(
            &B3,
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1",
        )]))
        .ok();
        assert_eq!(deferred.map(|c| c.sampled), Some(None));
        let debug = extract(&map(&[(&B3, "64fe8b2a57d3eff7-e457b5a2e4d86bd1-d")])).ok();
        assert_eq!(
            debug.as_ref().map(|c| c.trace_id.hex()).as_deref(),
            Some("000000000000000064fe8b2a57d3eff7")
        );
        assert_eq!(debug.and_then(|c| c.sampled), Some(true));
        assert_eq!(extract(&map(&[(&B3, "0")])), Err(Some(false)));
        assert_eq!(
            extract(&map(&[(&B3, "d")])),
            Err(Some(true)),
            "a lone forced sample"
        );
        for bad in [
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-nothex",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-extra",
        ] {
            assert_eq!(extract(&map(&[(&B3, bad)])), Err(None), "{bad}");
        }
        assert_eq!(extract(&map(&[(&B3, "garbage")])), Err(None));
    }

    #[test]
    fn b3_multi_headers() {
        let h = map(&[
            (&B3_TRACE_ID, "463ac35c9f6413ad48485a3953bb6124"),
            (&B3_SPAN_ID, "a2fb4a1d1a96d312"),
            (&B3_SAMPLED, "1"),
        ]);
        let c = extract(&h).ok();
        assert_eq!(
            c.as_ref().map(|c| c.trace_id.hex()).as_deref(),
            Some("463ac35c9f6413ad48485a3953bb6124")
        );
        assert_eq!(c.and_then(|c| c.sampled), Some(true));
        assert_eq!(extract(&map(&[(&B3_SAMPLED, "0")])), Err(Some(false)));
        assert_eq!(extract(&map(&[(&B3_FLAGS, "1")])), Err(Some(true)));
    }

    #[test]
    fn several_tracestate_lines_are_one_list() {
        let mut h = map(&[(&TRACEPARENT, TP)]);
        h.append(TRACESTATE, HeaderValue::from_static("a=1"));
        h.append(TRACESTATE, HeaderValue::from_static("b=2"));
        let got = extract(&h).ok().and_then(|c| c.tracestate);
        assert_eq!(got, Some(HeaderValue::from_static("a=1,b=2")));
    }

    #[test]
    fn traceparent_wins_over_b3() {
        let h = map(&[
            (&TRACEPARENT, TP),
            (&B3, "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"),
        ]);
        assert_eq!(
            extract(&h).ok().map(|c| c.span_id.hex()).as_deref(),
            Some("00f067aa0ba902b7")
        );
    }

    #[test]
    fn inject_writes_the_configured_formats_and_removes_the_others() {
        let mut h = map(&[
            (&B3, "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            (&B3_SAMPLED, "1"),
        ]);
        let state = HeaderValue::from_static("a=b");
        let out = Outgoing {
            trace_id: TraceId([0xab; 16]),
            span_id: SpanId([0x01; 8]),
            sampled: true,
            tracestate: Some(&state),
        };
        let carried = Carried::of(&h).mask();
        inject(&mut h, Propagators::TRACECONTEXT, &out, carried);
        assert_eq!(
            h.get(TRACEPARENT).and_then(|v| v.to_str().ok()),
            Some("00-abababababababababababababababab-0101010101010101-01")
        );
        assert_eq!(h.get(TRACESTATE), Some(&state));
        assert!(h.get(B3).is_none() && h.get(B3_SAMPLED).is_none());
        let all = Propagators {
            tracecontext: true,
            b3: true,
            b3multi: true,
        };
        let carried = Carried::of(&h).mask();
        inject(
            &mut h,
            all,
            &Outgoing {
                sampled: false,
                tracestate: None,
                ..out
            },
            carried,
        );
        assert_eq!(
            h.get(B3).and_then(|v| v.to_str().ok()),
            Some("abababababababababababababababab-0101010101010101-0")
        );
        assert_eq!(
            h.get(B3_SPAN_ID).and_then(|v| v.to_str().ok()),
            Some("0101010101010101")
        );
        assert_eq!(h.get(B3_SAMPLED).and_then(|v| v.to_str().ok()), Some("0"));
        assert!(h.get(TRACESTATE).is_none());
        // What was written reads back as the same context.
        let back = extract(&h).ok();
        assert_eq!(
            back.map(|c| (c.trace_id, c.span_id, c.sampled)),
            Some((out.trace_id, out.span_id, Some(false)))
        );
    }

    #[test]
    fn propagator_names() {
        assert_eq!(
            Propagators::parse(["tracecontext", "baggage"]),
            Ok(Propagators::TRACECONTEXT)
        );
        assert!(Propagators::parse(["jaeger"]).is_err());
        assert_eq!(
            Propagators::parse(["b3multi", "b3"]).map(|p| p.names()),
            Ok(vec!["b3", "b3multi"])
        );
    }
}

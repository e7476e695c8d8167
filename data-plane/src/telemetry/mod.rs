//! What the proxy reports about the requests it serves, beside the request path (never in its way): the golden
//! metrics (rate, errors and duration per listener, route and destination service, in `metrics.rs`).

pub mod metrics;

pub use metrics::{Exchange, HttpMetrics, ListenerMetrics, Observed};

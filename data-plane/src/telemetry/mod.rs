//! What the proxy reports about the requests it serves, beside the request path (never in its way): the golden
//! metrics (rate, errors and duration per listener, route and destination service, in `metrics.rs`) and the
//! access log (`access_log.rs`), both fed by one record per request (`metrics::Exchange`), and the calls upstream
//! (`upstream.rs`). Nothing here calls into the request path; the request path writes here.

pub mod access_log;
pub mod journal;
pub mod metrics;
pub mod trace;
pub mod upstream;
pub mod wasm;

pub use access_log::AccessLog;
pub use journal::Journal;
pub use metrics::{Arrival, Connections, Exchange, HttpMetrics, ListenerMetrics, Observed};
pub use upstream::CallMetrics;

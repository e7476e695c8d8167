//! meshwork-proxy: the data plane. A request travels, one way, through these stages:
//!
//! 1. [`listener`]: bind, accept, one task per connection, graceful drain;
//! 2. connection: HTTP/1.1 or HTTP/2 (h2c) by detection (hyper-util `auto`), in [`listener`];
//! 3. [`router`]: host -> virtual host -> first matching route -> weighted backend;
//! 4. [`filter`]: the Wasm filter chain, then the Gateway API route filters (header modifiers, rewrite, redirect,
//!    mirror);
//! 5. [`resilience`]: TrafficPolicy's layers (fault injection, rate limit, circuit breaker, timeouts, retries
//!    within a budget, bulkhead);
//! 6. balancing over the service's endpoints (outlier ejection, health checks), in [`resilience`];
//! 7. [`upstream`]: pooled HTTP/1.1 and HTTP/2 clients, and the body types every stage passes on.
//!
//! [`stack`] puts these together, in that order, and is the place to start reading; [`error`] answers for every
//! failure on the way. Each stage uses only the ones after it and [`config`], the snapshot the request path reads
//! (plain data), with how it arrives (control-plane stream or manifest directory). [`app`] composes the process;
//! [`admin`] serves readiness, the config dump and metrics; [`identity`] holds the proxy's key and certificate, and
//! [`tls`] makes mutual TLS between proxies of it (terminated by the sidecar inbound listener, originated by the
//! upstream clients to endpoints that have an identity).

pub mod admin;
pub mod app;
pub mod authz;
pub mod caller;
pub mod config;
pub mod error;
pub mod filter;
pub mod identity;
pub mod listener;
pub mod resilience;
pub mod router;
pub mod stack;
pub mod telemetry;
pub mod tls;
pub mod upstream;

//! meshwork-proxy: the data plane. A request travels:
//!
//! 1. [`listener`]: bind, accept, one task per connection, graceful drain;
//! 2. connection: HTTP/1.1 or HTTP/2 (h2c) by detection (hyper-util `auto`), in [`listener`];
//! 3. [`router`]: host -> virtual host -> first matching route;
//! 4. [`filter`]: Gateway API route filters (header modifiers, rewrite, redirect, mirror);
//! 5. resilience: (next) timeouts are per route today, in [`stack`];
//! 6. balance: weighted backend pick and round robin over endpoints ([`config::snapshot`]);
//! 7. [`upstream`]: pooled HTTP/1.1 and HTTP/2 clients.
//!
//! [`stack`] is the place where these are put together, in that order. [`config`] holds the snapshot the request
//! path reads, and how it arrives (control-plane stream or manifest directory); [`admin`] serves readiness and the
//! config dump.

pub mod admin;
pub mod app;
pub mod body;
pub mod config;
pub mod error;
pub mod filter;
pub mod listener;
pub mod resilience;
pub mod router;
pub mod stack;
pub mod upstream;

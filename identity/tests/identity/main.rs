//! Integration tests for meshwork-identity, one binary (one link) for all of them: real
//! certificates made by rcgen and the crate's CA, and real TLS handshakes over 127.0.0.1.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod authority_files;
mod issuance;
mod mtls;
mod spiffe_ids;
mod support;
mod svid_checks;
mod workload_keys;

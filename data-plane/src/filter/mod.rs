//! Stage 4: filters. Today the Gateway API route filters (`headers`); the Wasm filter chain joins here.

pub mod headers;

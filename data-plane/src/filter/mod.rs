//! Stage 4: filters. The Gateway API route filters (`headers`), and the Wasm filter chain (`chain`, `wasm`).

pub mod chain;
pub mod headers;
pub mod wasm;

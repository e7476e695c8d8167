//! Stage 4: filters. The Gateway API route filters (`headers`), the Wasm filter chain (`chain`, `wasm`)
//! and the way its HTTP callouts reach the mesh (`callout`).

pub mod callout;
pub mod chain;
pub mod headers;
pub mod wasm;

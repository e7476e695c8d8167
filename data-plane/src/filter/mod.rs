//! Stage 4: filters. Path normalisation on arrival (`path`), the Gateway API route filters (`headers`), the Wasm filter chain (`chain`, `wasm`), bodies
//! streamed through it (`body`) and where its HTTP callouts go (`dispatch`).

pub mod body;
pub mod chain;
#[cfg(test)]
mod chain_tests;
pub mod dispatch;
pub mod headers;
pub mod path;
pub mod wasm;

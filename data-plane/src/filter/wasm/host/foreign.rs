//! Foreign functions: `proxy_call_foreign_function`, the ABI's door to host-specific extensions. This host offers
//! none, so every name is NOT_FOUND; an extension would be registered here.

use wasmtime::Linker;

use super::{HostState, C, R};
use crate::filter::wasm::abi::status;

pub(super) fn link(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_call_foreign_function", call_foreign_function)?;
    Ok(())
}

fn call_foreign_function(
    _c: C<'_>,
    _name_ptr: i32,
    _name_len: i32,
    _args_ptr: i32,
    _args_len: i32,
    _res_ptr_out: i32,
    _res_len_out: i32,
) -> R {
    Ok(status::NOT_FOUND)
}

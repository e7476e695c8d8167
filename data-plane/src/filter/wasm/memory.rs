//! Guest memory access for host calls. Every pointer and length comes from the guest and is checked against its
//! linear memory before use, so a filter can never make the host read or write outside its own memory.

use wasmtime::{Caller, Extern, Memory};

use super::abi::status;
use super::host::HostState;

/// A host call's outcome short of a trap: a proxy-wasm status to return.
pub type Status = i32;

fn memory(c: &mut Caller<'_, HostState>) -> Result<Memory, Status> {
    if let Some(m) = c.data().memory {
        return Ok(m);
    }
    match c.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(status::INTERNAL_FAILURE),
    }
}

fn range(ptr: i32, len: i32, size: usize) -> Result<std::ops::Range<usize>, Status> {
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let end = ptr.checked_add(len).ok_or(status::INVALID_MEMORY_ACCESS)?;
    if end > size {
        return Err(status::INVALID_MEMORY_ACCESS);
    }
    Ok(ptr..end)
}

pub fn read(c: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let m = memory(c)?;
    let data = m.data(&*c);
    Ok(data[range(ptr, len, data.len())?].to_vec())
}

/// The guest's memory and the host state at once, for host calls that read guest bytes straight into the state.
pub fn guest_and_state<'a>(
    c: &'a mut Caller<'_, HostState>,
) -> Result<(&'a [u8], &'a mut HostState), Status> {
    let m = memory(c)?;
    let (data, state) = m.data_and_store_mut(c);
    Ok((&*data, state))
}

/// Bytes in guest memory, borrowed (`INVALID_MEMORY_ACCESS` out of bounds).
pub fn bytes_at(data: &[u8], ptr: i32, len: i32) -> Result<&[u8], Status> {
    Ok(&data[range(ptr, len, data.len())?])
}

/// A UTF-8 string in guest memory, borrowed (`INVALID_MEMORY_ACCESS` out of bounds, `BAD_ARGUMENT` not UTF-8).
pub fn str_at(data: &[u8], ptr: i32, len: i32) -> Result<&str, Status> {
    std::str::from_utf8(bytes_at(data, ptr, len)?).map_err(|_| status::BAD_ARGUMENT)
}

pub fn read_string(c: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Result<String, Status> {
    String::from_utf8(read(c, ptr, len)?).map_err(|_| status::BAD_ARGUMENT)
}

pub fn write(c: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let m = memory(c)?;
    let data = m.data_mut(&mut *c);
    let r = range(ptr, bytes.len() as i32, data.len())?;
    data[r].copy_from_slice(bytes);
    Ok(())
}

pub fn write_u32(c: &mut Caller<'_, HostState>, ptr: i32, v: u32) -> Result<(), Status> {
    write(c, ptr, &v.to_le_bytes())
}

pub fn write_u64(c: &mut Caller<'_, HostState>, ptr: i32, v: u64) -> Result<(), Status> {
    write(c, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into memory from the guest's allocator (`proxy_on_memory_allocate`, else `malloc`), exactly
/// `len` bytes as the SDKs require, and writes the pointer and length to the out-parameters. An empty value is
/// (0, 0). A trap inside the guest allocator is a trap of the whole call (`Err(Ok(trap))`).
pub fn return_bytes(
    c: &mut Caller<'_, HostState>,
    bytes: &[u8],
    ptr_out: i32,
    len_out: i32,
) -> Result<Result<(), Status>, wasmtime::Error> {
    if bytes.is_empty() {
        return Ok(write_u32(c, ptr_out, 0).and_then(|()| write_u32(c, len_out, 0)));
    }
    let Ok(len) = i32::try_from(bytes.len()) else {
        return Ok(Err(status::BAD_ARGUMENT));
    };
    // The allocator is looked up once per instance (`HostState::alloc`); a lookup by name here cost ~250 ns per
    // returning call.
    let alloc = match c.data().alloc.clone() {
        Some(f) => f,
        None => {
            let found = ["proxy_on_memory_allocate", "malloc"]
                .iter()
                .find_map(|n| c.get_export(n).and_then(Extern::into_func))
                .and_then(|f| f.typed::<i32, i32>(&*c).ok());
            match found {
                Some(f) => f,
                None => return Ok(Err(status::INTERNAL_FAILURE)),
            }
        }
    };
    let ptr = alloc.call(&mut *c, len)?;
    if ptr == 0 {
        return Ok(Err(status::INTERNAL_FAILURE));
    }
    Ok(write(c, ptr, bytes)
        .and_then(|()| write_u32(c, ptr_out, ptr as u32))
        .and_then(|()| write_u32(c, len_out, len as u32)))
}

//! Shared queues: `proxy_register_shared_queue`, `proxy_resolve_shared_queue`, `proxy_enqueue_shared_queue` and
//! `proxy_dequeue_shared_queue`. Queues are named, proxy-wide, and never removed; a queue's id is its index + 1.
//! An enqueue tells the registering plugin's root context (`proxy_on_queue_ready`, delivered by the parent module).

use std::collections::VecDeque;
use std::sync::{Arc, PoisonError};

use wasmtime::Linker;

use super::{index_of, st, HostState, C, R};
use crate::filter::wasm::abi::status;
use crate::filter::wasm::memory::{read, read_string, return_bytes, write_u32};

/// A shared queue: its items and the plugin that registered it last (whose root context hears
/// `proxy_on_queue_ready`), identified by the address of its `PluginMeta`.
pub(super) struct Queue {
    name: String,
    items: VecDeque<Vec<u8>>,
    owner: usize,
}

pub(super) fn link(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_register_shared_queue", register)?;
    l.func_wrap("env", "proxy_resolve_shared_queue", resolve)?;
    l.func_wrap("env", "proxy_enqueue_shared_queue", enqueue)?;
    l.func_wrap("env", "proxy_dequeue_shared_queue", dequeue)?;
    Ok(())
}

/// Opens the queue, creating it if needed; either way the caller becomes its owner.
fn register(mut c: C<'_>, np: i32, nn: i32, out: i32) -> R {
    let name = ok_or_status!(read_string(&mut c, np, nn));
    let id = {
        let shared = c.data().shared.clone();
        let owner = Arc::as_ptr(&c.data().meta) as usize;
        let mut q = shared.queues.lock().unwrap_or_else(PoisonError::into_inner);
        match q.iter().position(|e| e.name == name) {
            Some(i) => {
                q[i].owner = owner;
                i
            }
            None => {
                q.push(Queue {
                    name,
                    items: Default::default(),
                    owner,
                });
                q.len() - 1
            }
        }
    };
    Ok(st(write_u32(&mut c, out, id as u32 + 1)))
}

/// The VM id is ignored: all plugins share one (see `CrossPluginState`).
fn resolve(mut c: C<'_>, _vp: i32, _vn: i32, np: i32, nn: i32, out: i32) -> R {
    let name = ok_or_status!(read_string(&mut c, np, nn));
    let found = c
        .data()
        .shared
        .queues
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .position(|e| e.name == name);
    match found {
        Some(i) => Ok(st(write_u32(&mut c, out, i as u32 + 1))),
        None => Ok(status::NOT_FOUND),
    }
}

fn enqueue(mut c: C<'_>, id: i32, vp: i32, vn: i32) -> R {
    let value = ok_or_status!(read(&mut c, vp, vn));
    let shared = c.data().shared.clone();
    let owner = {
        let mut q = shared.queues.lock().unwrap_or_else(PoisonError::into_inner);
        match index_of(id).and_then(|i| q.get_mut(i)) {
            Some(e) => {
                e.items.push_back(value);
                e.owner
            }
            None => return Ok(status::NOT_FOUND),
        }
    };
    // No sender yet (no runtime to deliver on, as in unit tests): the item waits for a dequeue.
    if let Some(tx) = shared.queue_ready.get() {
        let _ = tx.send((owner, id as u32));
    }
    Ok(status::OK)
}

/// EMPTY for a known queue with nothing in it, NOT_FOUND for an unknown id.
fn dequeue(mut c: C<'_>, id: i32, ptr_out: i32, len_out: i32) -> R {
    let item = {
        let shared = c.data().shared.clone();
        let mut q = shared.queues.lock().unwrap_or_else(PoisonError::into_inner);
        match index_of(id).and_then(|i| q.get_mut(i)) {
            Some(e) => e.items.pop_front(),
            None => return Ok(status::NOT_FOUND),
        }
    };
    match item {
        Some(v) => Ok(st(return_bytes(&mut c, &v, ptr_out, len_out)?)),
        None => Ok(status::EMPTY),
    }
}

//! The WASI preview 1 functions proxy-wasm filters import, under both `wasi_snapshot_preview1` and `wasi_unstable`:
//! stdout/stderr to the proxy log, clocks, randomness, the plugin's own environment (never the host's), empty
//! arguments. No filesystem or sockets: every other WASI import is stubbed with ENOSYS by the loader.

use wasmtime::{Caller, Linker};

use super::abi::{wasi, MAX_RANDOM_BYTES, MAX_WRITE_BYTES};
use super::host::HostState;
use super::memory::{bytes_at, guest_and_state, read, write, write_u32, write_u64};

type C<'a> = Caller<'a, HostState>;
type R = wasmtime::Result<i32>;

fn errno(r: Result<(), i32>) -> i32 {
    match r {
        Ok(()) => wasi::SUCCESS,
        Err(_) => wasi::FAULT,
    }
}

fn environ(c: &C<'_>) -> Vec<Vec<u8>> {
    c.data()
        .meta
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}\0").into_bytes())
        .collect()
}

/// stdout to the proxy's log at INFO, stderr at ERROR. At most `MAX_WRITE_BYTES` are taken per call, and the
/// count taken is what the guest is told (a short write, which WASI callers complete): every iovec may name the
/// whole guest memory, so gathering them all would cost the host their count times that memory, in one call
/// that no CPU deadline interrupts.
fn fd_write(mut c: C<'_>, fd: i32, iovs: i32, n: i32, written_out: i32) -> R {
    if fd != 1 && fd != 2 {
        return Ok(wasi::BADF);
    }
    let Ok(list) = read(&mut c, iovs, n.saturating_mul(8)) else {
        return Ok(wasi::FAULT);
    };
    let plugin = c.data().meta.name.clone();
    let Ok((memory, _)) = guest_and_state(&mut c) else {
        return Ok(wasi::FAULT);
    };
    let mut text = Vec::new();
    for iov in list.chunks_exact(8) {
        let room = MAX_WRITE_BYTES - text.len();
        if room == 0 {
            break;
        }
        let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        match bytes_at(memory, ptr, len) {
            Ok(b) => text.extend_from_slice(&b[..b.len().min(room)]),
            Err(_) => return Ok(wasi::FAULT),
        }
    }
    let msg = String::from_utf8_lossy(&text);
    if fd == 1 {
        tracing::info!(plugin = %plugin, "{}", msg.trim_end());
    } else {
        tracing::error!(plugin = %plugin, "{}", msg.trim_end());
    }
    Ok(errno(write_u32(&mut c, written_out, text.len() as u32)))
}

pub fn link(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for m in ["wasi_snapshot_preview1", "wasi_unstable"] {
        l.func_wrap(m, "fd_write", fd_write)?;
        l.func_wrap(
            m,
            "clock_time_get",
            |mut c: C<'_>, id: i32, _precision: i64, out: i32| -> R {
                let now = match id {
                    0 => std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64),
                    1 => c.data().meta.started.elapsed().as_nanos() as u64,
                    _ => return Ok(wasi::NOTSUP),
                };
                Ok(errno(write_u64(&mut c, out, now)))
            },
        )?;
        l.func_wrap(m, "random_get", |mut c: C<'_>, buf: i32, len: i32| -> R {
            let len = len as u32 as usize;
            if len > MAX_RANDOM_BYTES {
                return Ok(wasi::INVAL);
            }
            // Guests take this as the OS's entropy (getrandom, uuid, OsRng mint tokens and nonces with it), so it
            // comes from the OS's CSPRNG, never from the proxy's fast, predictable generator.
            let mut bytes = vec![0u8; len];
            if getrandom::fill(&mut bytes).is_err() {
                return Ok(wasi::IO);
            }
            Ok(errno(write(&mut c, buf, &bytes)))
        })?;
        l.func_wrap(
            m,
            "environ_sizes_get",
            |mut c: C<'_>, count_out: i32, size_out: i32| -> R {
                let env = environ(&c);
                let size: usize = env.iter().map(Vec::len).sum();
                Ok(errno(
                    write_u32(&mut c, count_out, env.len() as u32)
                        .and_then(|()| write_u32(&mut c, size_out, size as u32)),
                ))
            },
        )?;
        l.func_wrap(
            m,
            "environ_get",
            |mut c: C<'_>, array: i32, buf: i32| -> R {
                let mut offset = buf;
                for (i, entry) in environ(&c).iter().enumerate() {
                    let r = write_u32(&mut c, array.wrapping_add(4 * i as i32), offset as u32)
                        .and_then(|()| write(&mut c, offset, entry));
                    if r.is_err() {
                        return Ok(wasi::FAULT);
                    }
                    offset = offset.wrapping_add(entry.len() as i32);
                }
                Ok(wasi::SUCCESS)
            },
        )?;
        l.func_wrap(
            m,
            "args_sizes_get",
            |mut c: C<'_>, count_out: i32, size_out: i32| -> R {
                Ok(errno(
                    write_u32(&mut c, count_out, 0).and_then(|()| write_u32(&mut c, size_out, 0)),
                ))
            },
        )?;
        l.func_wrap(m, "args_get", |_c: C<'_>, _a: i32, _b: i32| -> R {
            Ok(wasi::SUCCESS)
        })?;
        l.func_wrap(m, "sched_yield", |_c: C<'_>| -> R { Ok(wasi::SUCCESS) })?;
        l.func_wrap(
            m,
            "proc_exit",
            |_c: C<'_>, code: i32| -> wasmtime::Result<()> {
                Err(wasmtime::Error::msg(format!(
                    "the filter called proc_exit({code})"
                )))
            },
        )?;
    }
    Ok(())
}

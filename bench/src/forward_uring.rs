//! The io_uring flavour of the bare forwarder (see [`crate::forward`]): the experiment that
//! tells how much of a relay's cost per packet is system-call and readiness overhead that
//! io_uring removes, before the relay itself is moved to it.
//!
//! Every socket has one multishot receive armed in the ring (Linux 6.0), drawing buffers from
//! one provided-buffer ring: the kernel receives into a free buffer whenever a datagram
//! arrives, with no re-arming per packet. A completed receive queues a send of that buffer
//! from the partner socket to the socket's destination; a completed send gives the buffer
//! back to the ring. One `io_uring_enter` per wake-up submits every queued send and waits for
//! the next completion, so the number of system calls no longer grows with the number of
//! packets. Sockets are registered files (no file lookup per operation); the ring is
//! single-issuer with deferred task work (Linux 6.1), so completions are processed only when
//! this thread asks for them.
//!
//! This is the one module of the crate with `unsafe`: submission entries carry raw pointers
//! to the buffers and destination addresses, and the provided-buffer ring is memory shared
//! with the kernel. All of it is allocated before the first submission and never moved or
//! freed while the ring runs (the function only returns on an error, after which the process
//! exits).
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};

use anyhow::Context;
use io_uring::{IoUring, cqueue, opcode, squeue, types};

const BUFFER_LEN: usize = 2048;
/// Buffers in the provided-buffer ring (a power of two, at most 32768).
const RING_BUFFERS: usize = 8192;
const BUFFER_GROUP: u16 = 0;
/// Low bit of an operation's user data: 0 receive, 1 send. Bits 1-31 carry the socket
/// index, bits 32-47 the buffer id of a send.
const SEND: u64 = 1;

/// The provided-buffer ring: `RING_BUFFERS` entries shared with the kernel, page-aligned.
struct BufferRing {
    entries: *mut types::BufRingEntry,
    tail: u16,
}

impl BufferRing {
    fn layout() -> Layout {
        Layout::from_size_align(RING_BUFFERS * size_of::<types::BufRingEntry>(), 4096)
            .expect("ring layout")
    }

    /// Allocates the ring with every buffer of `buffers` in it.
    fn new(buffers: &mut [u8]) -> anyhow::Result<Self> {
        // SAFETY: the layout has a non-zero size; the memory is zeroed, a valid state for
        // `BufRingEntry` (plain integers).
        let entries: *mut types::BufRingEntry =
            unsafe { std::alloc::alloc_zeroed(Self::layout()) }.cast();
        anyhow::ensure!(!entries.is_null(), "buffer ring allocation");
        let mut ring = Self { entries, tail: 0 };
        for id in 0..RING_BUFFERS {
            ring.push(buffers, id as u16);
        }
        ring.publish();
        Ok(ring)
    }

    /// Queues buffer `id` for the kernel (visible after [`Self::publish`]).
    fn push(&mut self, buffers: &mut [u8], id: u16) {
        let slot = usize::from(self.tail) & (RING_BUFFERS - 1);
        // SAFETY: `slot` is inside the ring; the kernel only reads entries behind the tail.
        let entry = unsafe { &mut *self.entries.add(slot) };
        entry.set_addr(buffers[usize::from(id) * BUFFER_LEN..].as_mut_ptr() as u64);
        entry.set_len(BUFFER_LEN as u32);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the pushed buffers visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail field lives in the first entry of the ring (shared with the
        // kernel, which reads it atomically); it is u16-aligned.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

fn receive(index: usize) -> squeue::Entry {
    opcode::RecvMulti::new(types::Fixed(index as u32), BUFFER_GROUP)
        .build()
        .user_data((index as u64) << 1)
}

pub(crate) fn run(sockets: usize, bind: std::net::Ipv4Addr) -> anyhow::Result<()> {
    let (bound, destinations) = crate::forward::handshake(sockets, bind)?;
    let entries = (sockets * 2).next_power_of_two().clamp(64, 32768) as u32;
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(entries * 4)
        .build(entries)
        .context("io_uring setup (Linux 6.1 or later, io_uring not disabled)")?;
    let addresses: Box<[libc::sockaddr_in]> = destinations
        .iter()
        .map(|address| match address {
            SocketAddr::V4(v4) => libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            },
            SocketAddr::V6(_) => unreachable!("the forwarder binds an IPv4 address"),
        })
        .collect();
    let mut buffers: Box<[u8]> = vec![0u8; RING_BUFFERS * BUFFER_LEN].into_boxed_slice();
    let mut buffer_ring = BufferRing::new(&mut buffers)?;
    // SAFETY: the ring memory is page-aligned, RING_BUFFERS entries long and outlives the
    // io_uring instance (leaked with the process).
    unsafe {
        ring.submitter().register_buf_ring_with_flags(
            buffer_ring.entries as u64,
            RING_BUFFERS as u16,
            BUFFER_GROUP,
            0,
        )
    }
    .context("io_uring provided-buffer ring (Linux 5.19 or later)")?;
    let fds: Vec<i32> = bound.iter().map(AsRawFd::as_raw_fd).collect();
    ring.submitter()
        .register_files(&fds)
        .context("io_uring register_files")?;
    let mut pending: Vec<squeue::Entry> = (0..sockets).map(receive).collect();
    let mut completed: Vec<(u64, i32, u32)> = Vec::with_capacity(entries as usize * 4);
    loop {
        let (submitter, mut submission, mut completion) = ring.split();
        let mut queued = 0;
        while queued < pending.len() {
            let room = (submission.capacity() - submission.len()).min(pending.len() - queued);
            // SAFETY: every entry points into `buffers` and `addresses`, which outlive the
            // ring's operations (see the module docs).
            unsafe { submission.push_multiple(&pending[queued..queued + room]) }
                .map_err(|_| anyhow::anyhow!("submission queue full"))?;
            queued += room;
            submission.sync();
            if queued < pending.len() {
                submitter.submit()?;
                submission.sync();
            }
        }
        pending.clear();
        drop(submission);
        match submitter.submit_and_wait(1) {
            Ok(_) => {}
            Err(error) if error.raw_os_error() == Some(libc::EINTR) => {}
            Err(error) => return Err(error.into()),
        }
        completion.sync();
        completed.extend(completion.map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())));
        let mut returned = false;
        for (user_data, result, flags) in completed.drain(..) {
            let index = ((user_data & 0xffff_ffff) >> 1) as usize;
            if user_data & SEND != 0 {
                buffer_ring.push(&mut buffers, (user_data >> 32) as u16);
                returned = true;
                continue;
            }
            if let Some(id) = cqueue::buffer_select(flags) {
                if result > 0 {
                    let start = usize::from(id) * BUFFER_LEN;
                    pending.push(
                        opcode::Send::new(
                            types::Fixed((index ^ 1) as u32),
                            buffers[start..].as_ptr(),
                            result as u32,
                        )
                        .dest_addr(std::ptr::from_ref(&addresses[index]).cast())
                        .dest_addr_len(size_of::<libc::sockaddr_in>() as libc::socklen_t)
                        .build()
                        .user_data((u64::from(id) << 32) | ((index as u64) << 1) | SEND),
                    );
                } else {
                    buffer_ring.push(&mut buffers, id);
                    returned = true;
                }
            }
            if !cqueue::more(flags) {
                // The multishot receive ended (no free buffer, or an error): arm it again.
                pending.push(receive(index));
            }
        }
        if returned {
            buffer_ring.publish();
        }
    }
}

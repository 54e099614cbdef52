//! The io_uring flavour of the bare forwarder (see [`crate::forward`]): the experiment that
//! tells how much of a relay's cost per packet is system-call and readiness overhead that
//! io_uring removes, before the relay itself is moved to it.
//!
//! Every socket has one receive queued in the ring, into its own buffer. A completed receive
//! queues a send of that buffer from the partner socket to the socket's destination; a
//! completed send queues the next receive. One `io_uring_enter` per wake-up submits every
//! queued operation and waits for the next completion, so the number of system calls no
//! longer grows with the number of packets. The ring is single-issuer with deferred task
//! work (Linux 6.1), so completions are processed only when this thread asks for them.
//!
//! This is the one module of the crate with `unsafe`: submission entries carry raw pointers
//! to the buffers and destination addresses, which must outlive the operations. Both live in
//! boxed slices that are allocated before the first submission and never moved or dropped
//! while the ring runs (the function never returns while operations are in flight, except by
//! exiting the process).
#![allow(unsafe_code)]

use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use anyhow::Context;
use io_uring::{IoUring, opcode, squeue, types};

const BUFFER_LEN: usize = 2048;
/// Low bit of an operation's user data: 0 receive, 1 send; the rest is the socket index.
const SEND: u64 = 1;

pub(crate) fn run(sockets: usize) -> anyhow::Result<()> {
    let (bound, destinations) = crate::forward::handshake(sockets)?;
    let entries = (sockets * 2).next_power_of_two().clamp(64, 32768) as u32;
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(entries * 2)
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
            SocketAddr::V6(_) => unreachable!("the forwarder binds 127.0.0.1"),
        })
        .collect();
    let mut buffers: Box<[[u8; BUFFER_LEN]]> = vec![[0u8; BUFFER_LEN]; sockets].into_boxed_slice();
    let fds: Vec<i32> = bound.iter().map(AsRawFd::as_raw_fd).collect();
    // Registered files: operations name sockets by index, no file lookup per operation.
    ring.submitter()
        .register_files(&fds)
        .context("io_uring register_files")?;
    let receive = |buffers: &mut [[u8; BUFFER_LEN]], index: usize| -> squeue::Entry {
        opcode::Recv::new(
            types::Fixed(index as u32),
            buffers[index].as_mut_ptr(),
            BUFFER_LEN as u32,
        )
        .build()
        .user_data((index as u64) << 1)
    };
    let mut pending: Vec<squeue::Entry> = (0..sockets).map(|i| receive(&mut buffers, i)).collect();
    let mut completed: Vec<(u64, i32)> = Vec::with_capacity(entries as usize * 2);
    loop {
        let (submitter, mut submission, mut completion) = ring.split();
        let mut queued = 0;
        while queued < pending.len() {
            // SAFETY: every entry points into `buffers` and `addresses`, which outlive the
            // ring's operations (see the module docs).
            let room = (submission.capacity() - submission.len()).min(pending.len() - queued);
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
        completed.extend(completion.map(|cqe| (cqe.user_data(), cqe.result())));
        for (user_data, result) in completed.drain(..) {
            let index = (user_data >> 1) as usize;
            if user_data & SEND == 0 && result > 0 {
                let address = &addresses[index];
                pending.push(
                    opcode::Send::new(
                        types::Fixed((index ^ 1) as u32),
                        buffers[index].as_ptr(),
                        result as u32,
                    )
                    .dest_addr(std::ptr::from_ref(address).cast())
                    .dest_addr_len(size_of::<libc::sockaddr_in>() as libc::socklen_t)
                    .build()
                    .user_data(((index as u64) << 1) | SEND),
                );
            } else {
                // A finished send, or a failed receive: receive again.
                pending.push(receive(&mut buffers, index));
            }
        }
    }
}

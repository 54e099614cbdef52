//! The hand-off from relay workers to the recorder: captured datagrams in batches.
//!
//! A worker copies each datagram it accepted for a recorded or tapped call into its current
//! [`Batch`] (one buffer of bytes and one list of packet records) and hands the batch over once
//! per wake-up, with a non-blocking send on a bounded channel. When the recorder has fallen
//! behind and the channel is full, the batch is dropped and counted: recording loses audio,
//! relaying loses nothing and waits for nothing. The recorder sends emptied batches back, so
//! in steady state no batch is allocated.

use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Instant;

use crate::types::Leg;

/// Batches in flight between all workers and the recorder. A worker hands one over per
/// wake-up that captured something (thousands a second under load) and the recorder takes
/// them every 20 ms tick: 4096 hold well over 100 ms of the busiest worker's wake-ups.
pub(crate) const QUEUE_BATCHES: usize = 4096;

/// One captured datagram.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Captured {
    /// The capture (call) it belongs to.
    pub(crate) capture: u64,
    /// The worker's slot of the call, for the worker's own bookkeeping.
    pub(crate) slot: u32,
    pub(crate) leg: Leg,
    pub(crate) media: u8,
    pub(crate) rtcp: bool,
    pub(crate) at: Instant,
    pub(crate) source: SocketAddr,
    /// The proxy port it arrived on.
    pub(crate) local_port: u16,
    start: u32,
    len: u32,
}

/// Datagrams captured by one worker during one wake-up.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) worker: usize,
    bytes: Vec<u8>,
    pub(crate) packets: Vec<Captured>,
}

impl Batch {
    /// The datagram of a packet record of this batch.
    pub(crate) fn data(&self, packet: &Captured) -> &[u8] {
        let start = packet.start as usize;
        &self.bytes[start..start + packet.len as usize]
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Empties the batch, keeping its capacity.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.packets.clear();
    }
}

/// Where a datagram came from and went in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    pub(crate) capture: u64,
    pub(crate) slot: u32,
    pub(crate) leg: Leg,
    pub(crate) media: u8,
    pub(crate) rtcp: bool,
    pub(crate) source: SocketAddr,
    pub(crate) local_port: u16,
}

/// A worker's end of the hand-off.
#[derive(Debug)]
pub(crate) struct CaptureSink {
    worker: usize,
    queue: SyncSender<Batch>,
    recycled: Receiver<Batch>,
    current: Batch,
}

impl CaptureSink {
    pub(crate) fn new(worker: usize, queue: SyncSender<Batch>, recycled: Receiver<Batch>) -> Self {
        Self {
            worker,
            queue,
            recycled,
            current: Batch {
                worker,
                ..Batch::default()
            },
        }
    }

    /// Copies one datagram into the current batch.
    pub(crate) fn push(&mut self, origin: Origin, at: Instant, data: &[u8]) {
        let start = self.current.bytes.len() as u32;
        self.current.bytes.extend_from_slice(data);
        self.current.packets.push(Captured {
            capture: origin.capture,
            slot: origin.slot,
            leg: origin.leg,
            media: origin.media,
            rtcp: origin.rtcp,
            at,
            source: origin.source,
            local_port: origin.local_port,
            start,
            len: data.len() as u32,
        });
    }

    /// Hands the current batch to the recorder without blocking; `dropped` sees each packet
    /// of a batch that could not be handed over (the recorder is behind, or gone).
    pub(crate) fn hand_off(&mut self, mut dropped: impl FnMut(&Captured)) {
        if self.current.is_empty() {
            return;
        }
        let mut next = self.recycled.try_recv().unwrap_or_default();
        next.clear();
        next.worker = self.worker;
        let batch = std::mem::replace(&mut self.current, next);
        if let Err(TrySendError::Full(mut batch) | TrySendError::Disconnected(mut batch)) =
            self.queue.try_send(batch)
        {
            batch.packets.iter().for_each(&mut dropped);
            // Keep the full one's buffers for the next wake-up.
            batch.clear();
            self.current = batch;
        }
    }
}

//! Receive quality of one RTP stream: sequence accounting (RFC 3550 appendix A.1 and A.3)
//! and interarrival jitter (appendix A.8). Pure arithmetic on header fields; the caller
//! supplies the arrival time in RTP timestamp units.

/// Sequence jumps larger than this start a new sequence space (A.1 `MAX_DROPOUT`).
const MAX_DROPOUT: i64 = 3000;
/// Late packets further back than this are counted as reordered without a duplicate check.
const WINDOW: i64 = 128;

/// Loss, duplicates, reordering and jitter of the RTP one leg sent.
#[derive(Debug, Clone, Default)]
pub(crate) struct RtpQuality {
    ssrc: Option<u32>,
    /// Extended highest sequence number of the current sequence space.
    highest: i64,
    /// Extended sequence number the current space started at.
    base: i64,
    /// Distinct packets received in the current space.
    received: u64,
    /// Bit i set: `highest - i` was received.
    window: u128,
    /// Expected and received of earlier spaces (previous SSRCs or resyncs).
    expected_before: u64,
    received_before: u64,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
    pub(crate) ssrc_changes: u32,
    pub(crate) last_payload_type: u8,
    /// Previous transit time, for the jitter of the next packet; None after a stream change.
    last_transit: Option<u32>,
    /// Jitter scaled by 16, in timestamp units, as in A.8.
    jitter_q4: u64,
    max_jitter_q4: u64,
    /// Clock rate the jitter figures are in.
    clock_rate: u32,
}

impl RtpQuality {
    /// Accounts one RTP packet. `arrival` is the arrival time in units of `clock_rate`
    /// (wrapping), or None when jitter must not be computed for this packet (unknown clock
    /// rate, telephone events whose timestamps do not advance).
    pub(crate) fn record(
        &mut self,
        ssrc: u32,
        sequence: u16,
        payload_type: u8,
        timestamp: u32,
        arrival: Option<(u32, u32)>,
    ) {
        if self.ssrc != Some(ssrc) {
            if self.ssrc.is_some() {
                self.ssrc_changes += 1;
            }
            self.start_space(i64::from(sequence));
            self.ssrc = Some(ssrc);
            self.last_transit = None;
        } else {
            self.track_sequence(sequence);
        }
        if payload_type != self.last_payload_type {
            self.last_transit = None;
        }
        self.last_payload_type = payload_type;
        match arrival {
            Some((arrival, clock_rate)) => self.track_jitter(arrival, timestamp, clock_rate),
            None => self.last_transit = None,
        }
    }

    fn start_space(&mut self, sequence: i64) {
        self.expected_before += self.expected_in_space();
        self.received_before += self.received;
        self.base = sequence;
        self.highest = sequence;
        self.received = 1;
        self.window = 1;
    }

    fn expected_in_space(&self) -> u64 {
        if self.received == 0 {
            0
        } else {
            (self.highest - self.base + 1) as u64
        }
    }

    fn track_sequence(&mut self, sequence: u16) {
        // Signed distance from the highest sequence number, modulo 2^16.
        let delta = i64::from(sequence.wrapping_sub(self.highest as u16) as i16);
        if delta > 0 {
            if delta > MAX_DROPOUT {
                // A.1: a very large jump is a restarted source, not loss.
                self.start_space(self.highest + delta);
                return;
            }
            self.highest += delta;
            self.window = if delta >= 128 {
                1
            } else {
                (self.window << delta) | 1
            };
            self.received += 1;
        } else if delta == 0 {
            self.duplicates += 1;
        } else if -delta < WINDOW {
            let bit = 1u128 << (-delta);
            if self.window & bit != 0 {
                self.duplicates += 1;
            } else {
                self.window |= bit;
                self.out_of_order += 1;
                if self.highest + delta >= self.base {
                    self.received += 1;
                } else {
                    // Older than the first packet of the space: it widens what was expected.
                    self.base = self.highest + delta;
                    self.received += 1;
                }
            }
        } else {
            self.out_of_order += 1;
        }
    }

    fn track_jitter(&mut self, arrival: u32, timestamp: u32, clock_rate: u32) {
        if clock_rate != self.clock_rate {
            // Figures in one unit only: a clock change restarts the estimate.
            self.clock_rate = clock_rate;
            self.jitter_q4 = 0;
            self.max_jitter_q4 = 0;
            self.last_transit = None;
        }
        let transit = arrival.wrapping_sub(timestamp);
        if let Some(last) = self.last_transit {
            let d = u64::from((transit.wrapping_sub(last) as i32).unsigned_abs());
            // J(i) = J(i-1) + (|D| - J(i-1)) / 16, in the fixed point of A.8.
            self.jitter_q4 = self.jitter_q4 + d - ((self.jitter_q4 + 8) >> 4);
            self.max_jitter_q4 = self.max_jitter_q4.max(self.jitter_q4);
        }
        self.last_transit = Some(transit);
    }

    pub(crate) fn ssrc(&self) -> u32 {
        self.ssrc.unwrap_or(0)
    }

    /// Packets expected from the sequence numbers seen, over every sequence space (A.3).
    pub(crate) fn expected(&self) -> u64 {
        self.expected_before + self.expected_in_space()
    }

    /// Expected minus distinct received (A.3 "cumulative number of packets lost").
    pub(crate) fn lost(&self) -> i64 {
        self.expected() as i64 - (self.received_before + self.received) as i64
    }

    pub(crate) fn jitter_ms(&self) -> f64 {
        self.to_ms(self.jitter_q4)
    }

    pub(crate) fn max_jitter_ms(&self) -> f64 {
        self.to_ms(self.max_jitter_q4)
    }

    fn to_ms(&self, q4: u64) -> f64 {
        if self.clock_rate == 0 {
            0.0
        } else {
            (q4 as f64 / 16.0) * 1000.0 / f64::from(self.clock_rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(quality: &mut RtpQuality, sequences: &[u16]) {
        for &seq in sequences {
            quality.record(7, seq, 0, u32::from(seq) * 160, None);
        }
    }

    #[test]
    fn in_order_stream_has_no_loss() {
        let mut q = RtpQuality::default();
        feed(&mut q, &(100..200).collect::<Vec<_>>());
        assert_eq!(
            (q.expected(), q.lost(), q.duplicates, q.out_of_order),
            (100, 0, 0, 0)
        );
    }

    #[test]
    fn gaps_count_as_loss() {
        let mut q = RtpQuality::default();
        feed(&mut q, &[1, 2, 3, 6, 7, 10]);
        assert_eq!(q.expected(), 10);
        assert_eq!(q.lost(), 4);
    }

    #[test]
    fn duplicates_and_reordering_are_told_apart() {
        let mut q = RtpQuality::default();
        feed(&mut q, &[1, 2, 4, 3, 3, 5, 5, 2]);
        assert_eq!(q.expected(), 5);
        assert_eq!(q.lost(), 0);
        assert_eq!(q.out_of_order, 1);
        assert_eq!(q.duplicates, 3);
    }

    #[test]
    fn sequence_wrap_is_continuous() {
        let mut q = RtpQuality::default();
        feed(&mut q, &[65534, 65535, 0, 1]);
        assert_eq!((q.expected(), q.lost()), (4, 0));
    }

    #[test]
    fn new_ssrc_starts_a_new_space() {
        let mut q = RtpQuality::default();
        feed(&mut q, &[10, 11, 13]);
        q.record(8, 5000, 0, 0, None);
        q.record(8, 5001, 0, 160, None);
        assert_eq!(q.ssrc_changes, 1);
        assert_eq!(q.expected(), 4 + 2);
        assert_eq!(q.lost(), 1);
    }

    #[test]
    fn jitter_is_zero_for_perfect_pacing_and_follows_a8() {
        let mut q = RtpQuality::default();
        for i in 0..50u32 {
            q.record(1, i as u16, 0, i * 160, Some((1000 + i * 160, 8000)));
        }
        assert_eq!(q.jitter_ms(), 0.0);
        // One packet 80 units (10 ms) late: D = 80, J = 80/16 = 5 units = 0.625 ms.
        let mut q = RtpQuality::default();
        q.record(1, 0, 0, 0, Some((0, 8000)));
        q.record(1, 1, 0, 160, Some((240, 8000)));
        assert!((q.jitter_ms() - 0.625).abs() < 1e-9, "{}", q.jitter_ms());
        assert!((q.max_jitter_ms() - 0.625).abs() < 1e-9);
    }
}

//! Where a leg's decoded audio goes in a recording: one leg's samples laid out on the
//! recording's clock, so that both channels of a file stay aligned, gaps become silence of
//! the right length and reordered packets land where they belong.
//!
//! The recording's clock is the proxy's arrival clock, counted in samples of the file's rate
//! from the recording's origin. A stream (one SSRC at one RTP clock rate) is *anchored* by its
//! first packet: a packet's place is the anchor's place plus its RTP timestamp's distance from
//! the anchor's. So a packet that arrives late, or after a later one, still lands at its own
//! time, and silence suppression, hold and loss leave zeros. The anchor follows the sender:
//!
//! - packets within [`DRIFT`] of their place do not move it: network and scheduling jitter
//!   never shifts audio already laid out, so it never makes clicks;
//! - when every packet of a second has arrived more than [`DRIFT`] behind its place (the
//!   sender's clock runs slow), the anchor moves later by the smallest lateness seen; when
//!   every one arrived more than [`DRIFT`] ahead of it (a fast clock, or a first packet that
//!   was held up), earlier by the smallest earliness;
//! - a new SSRC, a new RTP clock rate, or a timestamp more than [`JUMP`] away from the
//!   arrival clock (a re-INVITE, a restarted stream, timestamps frozen through hold) anchors
//!   the stream anew at its arrival.
//!
//! Samples are held for the jitter window and taken out in order by [`Timeline::take`]; a
//! packet whose place has already been taken out is late and is counted, not written.
//! Everything is in sample positions; the caller converts instants, so this is pure.

use std::collections::VecDeque;

/// Largest distance, in seconds, between a packet's RTP time and its arrival that is still
/// the same stream's timing rather than a jump.
pub const JUMP: f64 = 1.0;
/// Lateness, in seconds, that all packets of a drift window must exceed before the anchor
/// moves later.
pub const DRIFT: f64 = 0.04;
/// Packets per drift window (a second of 20 ms packets).
const DRIFT_WINDOW: u32 = 50;
/// Most samples held ahead of the taken-out position (a bound, never reached in practice:
/// placement keeps packets within [`JUMP`] of arrival).
const MAX_HELD_SECONDS: u64 = 10;

/// What became of one packet's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// All written at `at`.
    Written { at: u64 },
    /// Written, but the first samples' place had been taken out already.
    PartlyLate { at: u64, lost: usize },
    /// Its whole place had been taken out: nothing written.
    Late,
}

#[derive(Debug, Clone)]
struct Anchor {
    ssrc: u32,
    clock: u32,
    /// Last RTP timestamp seen and its unwrapped value (timestamp units from the anchor).
    last_timestamp: u32,
    last_extended: i64,
    /// Position (samples at the file rate) of unwrapped timestamp 0.
    origin: i64,
    /// Smallest and largest lateness in the current drift window, and packets in it.
    least_late: i64,
    most_late: i64,
    window_packets: u32,
}

/// One leg's audio on the recording's clock.
#[derive(Debug, Clone)]
pub struct Timeline {
    rate: u32,
    /// Position of `held[0]`: everything before it has been taken out.
    taken: u64,
    held: VecDeque<i16>,
    anchor: Option<Anchor>,
    /// Samples that arrived after their place had been taken out.
    pub late_samples: u64,
    /// Times the stream was anchored anew after its first anchor.
    pub reanchors: u32,
}

impl Timeline {
    /// An empty timeline at `rate` samples per second.
    pub fn new(rate: u32) -> Self {
        Self {
            rate,
            taken: 0,
            held: VecDeque::new(),
            anchor: None,
            late_samples: 0,
            reanchors: 0,
        }
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Position of the first sample not taken out yet.
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// Position just after the last sample written.
    pub fn end(&self) -> u64 {
        self.taken + self.held.len() as u64
    }

    fn seconds(&self, seconds: f64) -> i64 {
        (seconds * f64::from(self.rate)) as i64
    }

    /// Places one packet's `samples` (already at the timeline's rate). `arrival` is the
    /// packet's arrival in samples since the origin; `timestamp` its RTP timestamp in units
    /// of `clock` Hz.
    pub fn place(
        &mut self,
        arrival: i64,
        ssrc: u32,
        timestamp: u32,
        clock: u32,
        samples: &[i16],
    ) -> Placement {
        let rate = i64::from(self.rate);
        let to_samples = |units: i64, clock: u32| units * rate / i64::from(clock.max(1));
        let jump = self.seconds(JUMP);
        let drift = self.seconds(DRIFT);
        let position = match self.anchor.as_mut() {
            Some(anchor) if anchor.ssrc == ssrc && anchor.clock == clock => {
                let step = i64::from(timestamp.wrapping_sub(anchor.last_timestamp) as i32);
                let extended = anchor.last_extended + step;
                if step > 0 {
                    anchor.last_timestamp = timestamp;
                    anchor.last_extended = extended;
                }
                let position = anchor.origin + to_samples(extended, clock);
                let lateness = arrival - position;
                if lateness.abs() > jump {
                    None
                } else {
                    anchor.least_late = anchor.least_late.min(lateness);
                    anchor.most_late = anchor.most_late.max(lateness);
                    anchor.window_packets += 1;
                    if anchor.window_packets >= DRIFT_WINDOW {
                        if anchor.least_late > drift {
                            anchor.origin += anchor.least_late;
                        } else if anchor.most_late < -drift {
                            anchor.origin += anchor.most_late;
                        }
                        anchor.least_late = i64::MAX;
                        anchor.most_late = i64::MIN;
                        anchor.window_packets = 0;
                    }
                    Some(position)
                }
            }
            _ => None,
        };
        let position = match position {
            Some(position) => position,
            None => {
                if self.anchor.is_some() {
                    self.reanchors += 1;
                }
                self.anchor = Some(Anchor {
                    ssrc,
                    clock,
                    last_timestamp: timestamp,
                    last_extended: 0,
                    origin: arrival,
                    least_late: i64::MAX,
                    most_late: i64::MIN,
                    window_packets: 0,
                });
                arrival
            }
        };
        self.write(position.max(0) as u64, samples)
    }

    fn write(&mut self, at: u64, samples: &[i16]) -> Placement {
        let end = at + samples.len() as u64;
        if end <= self.taken {
            self.late_samples += samples.len() as u64;
            return Placement::Late;
        }
        let lost = self.taken.saturating_sub(at) as usize;
        let start = at.max(self.taken);
        if end - self.taken > MAX_HELD_SECONDS * u64::from(self.rate) {
            // Cannot happen while placement stays near arrival; refuse rather than grow.
            self.late_samples += samples.len() as u64;
            return Placement::Late;
        }
        let needed = (end - self.taken) as usize;
        if self.held.len() < needed {
            self.held.resize(needed, 0);
        }
        let offset = (start - self.taken) as usize;
        for (slot, &sample) in self.held.range_mut(offset..needed).zip(&samples[lost..]) {
            *slot = sample;
        }
        if lost > 0 {
            self.late_samples += lost as u64;
            Placement::PartlyLate { at, lost }
        } else {
            Placement::Written { at }
        }
    }

    /// Takes out every sample before position `upto` (zeros where nothing arrived),
    /// appending them to `out`.
    pub fn take(&mut self, upto: u64, out: &mut Vec<i16>) {
        if upto <= self.taken {
            return;
        }
        let count = (upto - self.taken) as usize;
        let from_held = count.min(self.held.len());
        let (front, back) = self.held.as_slices();
        let from_front = from_held.min(front.len());
        out.extend_from_slice(&front[..from_front]);
        out.extend_from_slice(&back[..from_held - from_front]);
        self.held.drain(..from_held);
        out.resize(out.len() + count - from_held, 0);
        self.taken = upto;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 8000;

    /// A 20 ms packet whose samples are all `value`.
    fn packet(value: i16) -> Vec<i16> {
        vec![value; 160]
    }

    fn all(timeline: &mut Timeline) -> Vec<i16> {
        let mut out = Vec::new();
        let end = timeline.end();
        timeline.take(end, &mut out);
        out
    }

    #[test]
    fn packets_in_order_follow_each_other_and_a_gap_is_silence_of_its_length() {
        let mut t = Timeline::new(RATE);
        // Packets 0, 1, then 3 (packet 2 lost), arriving on time.
        for (n, value) in [(0u32, 1i16), (1, 2), (3, 4)] {
            let arrival = i64::from(n) * 160;
            assert!(matches!(
                t.place(arrival, 7, n * 160, RATE, &packet(value)),
                Placement::Written { .. }
            ));
        }
        let out = all(&mut t);
        assert_eq!(out.len(), 4 * 160);
        assert!(out[..160].iter().all(|&s| s == 1));
        assert!(out[160..320].iter().all(|&s| s == 2));
        assert!(
            out[320..480].iter().all(|&s| s == 0),
            "the lost packet's time is silent"
        );
        assert!(out[480..].iter().all(|&s| s == 4));
    }

    #[test]
    fn a_reordered_packet_lands_at_its_own_time_and_a_too_late_one_is_counted() {
        let mut t = Timeline::new(RATE);
        t.place(0, 7, 0, RATE, &packet(1));
        t.place(320, 7, 320, RATE, &packet(3));
        // Packet 1 arrives after packet 2, 30 ms late.
        t.place(400, 7, 160, RATE, &packet(2));
        let mut out = Vec::new();
        t.take(480, &mut out);
        assert!(out[160..320].iter().all(|&s| s == 2));
        assert!(out[320..480].iter().all(|&s| s == 3));
        // A duplicate of packet 0 after its place was taken out.
        assert_eq!(t.place(500, 7, 0, RATE, &packet(9)), Placement::Late);
        assert_eq!(t.late_samples, 160);
    }

    #[test]
    fn silence_suppression_keeps_timing_when_the_timestamps_say_so() {
        let mut t = Timeline::new(RATE);
        t.place(0, 7, 0, RATE, &packet(1));
        // Two seconds without packets (VAD), then the stream goes on, timestamps advanced.
        t.place(16_160, 7, 16_160, RATE, &packet(2));
        let out = all(&mut t);
        assert_eq!(out.len(), 16_160 + 160);
        assert!(out[160..16_160].iter().all(|&s| s == 0));
        assert_eq!(t.reanchors, 0);
    }

    #[test]
    fn a_new_ssrc_or_a_timestamp_jump_anchors_at_arrival() {
        let mut t = Timeline::new(RATE);
        t.place(0, 7, 1000, RATE, &packet(1));
        // Re-INVITE: a new SSRC whose timestamps start anywhere.
        t.place(160, 8, 4_000_000_000, RATE, &packet(2));
        // Same SSRC, timestamps frozen through 5 s of hold.
        t.place(40_160, 8, 4_000_000_160, RATE, &packet(3));
        let out = all(&mut t);
        assert!(out[160..320].iter().all(|&s| s == 2));
        assert!(out[40_160..40_320].iter().all(|&s| s == 3));
        assert_eq!(t.reanchors, 2);
    }

    #[test]
    fn jitter_moves_nothing_and_timestamps_wrap() {
        let mut t = Timeline::new(RATE);
        t.place(0, 7, u32::MAX - 159, RATE, &packet(1));
        // 30 ms early, then 30 ms late: each lands at its own time, the anchor stays.
        assert_eq!(
            t.place(-80, 7, 0, RATE, &packet(2)),
            Placement::Written { at: 160 }
        );
        assert_eq!(
            t.place(560, 7, 160, RATE, &packet(3)),
            Placement::Written { at: 320 }
        );
        assert_eq!(
            t.place(480, 7, 320, RATE, &packet(4)),
            Placement::Written { at: 480 }
        );
    }

    #[test]
    fn a_held_up_first_packet_is_corrected_within_a_second() {
        let mut t = Timeline::new(RATE);
        // The first packet was held up 100 ms; the rest arrive on time.
        t.place(800, 7, 0, RATE, &packet(1));
        let mut placed = 0;
        for n in 1..=60u32 {
            let arrival = i64::from(n) * 160;
            if let Placement::Written { at } = t.place(arrival, 7, n * 160, RATE, &packet(1)) {
                placed = at as i64 - arrival;
            }
        }
        assert!(
            placed.abs() <= 80,
            "still {placed} samples off after a second"
        );
    }

    #[test]
    fn a_slow_sender_clock_is_followed_within_the_drift_bound() {
        // The sender's clock runs 0.5 % slow: its 20 ms are 20.1 ms of ours. Over 10 minutes
        // that is 3 s; the placed audio must stay within 60 ms of arrival throughout.
        let mut t = Timeline::new(RATE);
        let mut worst: i64 = 0;
        for n in 0..30_000u32 {
            let arrival = (f64::from(n) * 160.0 * 1.005) as i64;
            let placed = match t.place(arrival, 7, n * 160, RATE, &packet(1)) {
                Placement::Written { at } | Placement::PartlyLate { at, .. } => at as i64,
                Placement::Late => panic!("packet {n} late"),
            };
            worst = worst.max((arrival - placed).abs());
            let mut out = Vec::new();
            t.take((arrival - 800).max(0) as u64, &mut out);
        }
        assert!(
            worst <= 480,
            "placement strayed {worst} samples from arrival"
        );
        assert_eq!(t.reanchors, 0);
    }

    #[test]
    fn a_fast_sender_clock_is_followed_too() {
        let mut t = Timeline::new(RATE);
        for n in 0..30_000u32 {
            let arrival = (f64::from(n) * 160.0 * 0.995) as i64;
            let placed = match t.place(arrival, 7, n * 160, RATE, &packet(1)) {
                Placement::Written { at } | Placement::PartlyLate { at, .. } => at as i64,
                Placement::Late => panic!("packet {n} late"),
            };
            assert!((arrival - placed).abs() <= 480, "packet {n}");
            let mut out = Vec::new();
            t.take((arrival - 800).max(0) as u64, &mut out);
        }
    }

    #[test]
    fn take_zero_fills_past_the_written_end() {
        let mut t = Timeline::new(RATE);
        let mut out = Vec::new();
        t.take(100, &mut out);
        assert_eq!(out, vec![0; 100]);
        assert_eq!(t.taken(), 100);
        // A packet straddling the taken-out position keeps its tail.
        assert_eq!(
            t.place(40, 7, 0, RATE, &packet(5)),
            Placement::PartlyLate { at: 40, lost: 60 }
        );
        assert_eq!(t.end(), 200);
    }
}

//! Live taps of a call's decoded audio: each subscriber gets 20 ms frames of the legs it
//! asked for, at its rate (resampled when it is not the call's), numbered and timed so equal
//! positions of both legs are simultaneous. A subscriber that reads too slowly loses frames
//! (counted); the recorder never waits for it.

use tokio::sync::mpsc as tokio_mpsc;

use super::{FRAMES_PER_SECOND, TapFrame};
use crate::audio::resample::Resampler;
use crate::metrics::Metrics;
use crate::types::{CallId, Leg};

/// One flush of a call's audio, as the taps take it.
#[derive(Clone, Copy)]
pub(super) struct Chunk<'a> {
    pub(super) call_id: &'a CallId,
    /// The call's (the files') sample rate.
    pub(super) rate: u32,
    /// Time line position of the chunk's first sample.
    pub(super) taken: u64,
    /// Wall-clock milliseconds of time line position 0.
    pub(super) origin_unix_ms: u64,
    /// Caller and callee samples.
    pub(super) audio: [&'a [i16]; 2],
    pub(super) encodings: [&'static str; 2],
    pub(super) media: [u8; 2],
}

/// One tap subscriber.
pub(super) struct Tap {
    leg: Option<Leg>,
    /// Requested rate; 0 until the call's rate is known, if it asked for the codec's.
    rate: u32,
    frames: tokio_mpsc::Sender<TapFrame>,
    legs: [TapLeg; 2],
    dropped: u64,
}

#[derive(Default)]
struct TapLeg {
    resampler: Option<Resampler>,
    pending: Vec<i16>,
    converted: Vec<i16>,
    sequence: u32,
    /// Samples at the tap's rate sent so far, and the timeline position they started at.
    sent: u64,
    start: Option<u64>,
}

impl Tap {
    pub(super) fn new(leg: Option<Leg>, rate: u32, frames: tokio_mpsc::Sender<TapFrame>) -> Self {
        Self {
            leg,
            rate,
            frames,
            legs: [TapLeg::default(), TapLeg::default()],
            dropped: 0,
        }
    }

    /// Feeds one flush of both legs; false when the subscriber has gone.
    pub(super) fn feed(&mut self, chunk: &Chunk<'_>, metrics: &Metrics) -> bool {
        let Chunk {
            call_id,
            rate,
            taken,
            origin_unix_ms,
            audio,
            encodings,
            media,
        } = *chunk;
        if self.rate == 0 {
            self.rate = rate;
        }
        let frame_len = (self.rate / FRAMES_PER_SECOND) as usize;
        for leg in Leg::BOTH {
            if self.leg.is_some_and(|wanted| wanted != leg) {
                continue;
            }
            let state = &mut self.legs[leg.index()];
            state.start.get_or_insert(taken);
            if rate == self.rate {
                state.pending.extend_from_slice(audio[leg.index()]);
            } else {
                let resampler = state
                    .resampler
                    .get_or_insert_with(|| Resampler::new(rate, self.rate));
                state.converted.clear();
                resampler.process(audio[leg.index()], &mut state.converted);
                state.pending.extend_from_slice(&state.converted);
            }
            let mut offset = 0;
            while state.pending.len() - offset >= frame_len {
                let pcm = state.pending[offset..offset + frame_len].to_vec();
                offset += frame_len;
                let start_ms = state.start.unwrap_or(0) * 1000 / u64::from(rate.max(1));
                let frame = TapFrame {
                    call_id: call_id.clone(),
                    leg,
                    media: media[leg.index()],
                    unix_ms: origin_unix_ms + start_ms + state.sent * 1000 / u64::from(self.rate),
                    sequence: state.sequence,
                    position: state.sent,
                    encoding: encodings[leg.index()],
                    sample_rate: self.rate,
                    pcm,
                    dropped_before: self.dropped,
                };
                state.sequence = state.sequence.wrapping_add(1);
                state.sent += frame_len as u64;
                match self.frames.try_send(frame) {
                    Ok(()) => {}
                    Err(tokio_mpsc::error::TrySendError::Full(_)) => {
                        self.dropped += 1;
                        metrics.tap_frames_dropped.inc();
                    }
                    Err(tokio_mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            state.pending.drain(..offset);
        }
        !self.frames.is_closed()
    }
}

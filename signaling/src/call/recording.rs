//! A call's recording: started at the answer when policy asks for it (`--record`, a route's
//! `;record=`, a user's `record`), started, paused or stopped by an operator at any point
//! (admin endpoint), and started again on the new node when the call's media moves. The
//! media proxy does the recording; the core only decides when to ask and remembers enough
//! for the CDR to say what happened when the proxy could not ([`RecordingIntent`]).

use super::{Call, CallId, CallRef, Core, Endpoint, Output, State};
use super::{MediaError, RecordingAction};
use crate::policy::MediaMode;

/// What the core asked of a call's recording, and how the asking went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RecordingIntent {
    /// Policy wanted the call recorded from its answer.
    pub(crate) by_policy: bool,
    /// The last action asked for (by policy or an operator); None when never asked.
    pub(crate) last: Option<RecordingAction>,
    /// Why the last request failed (the proxy refused or could not be reached).
    pub(crate) failure: Option<String>,
    /// Starts on nodes the call moved to (they name their files `<call id>-moved-N`).
    pub(crate) restarts: u32,
}

impl RecordingIntent {
    /// Recording is wanted now (running or paused).
    fn active(&self) -> bool {
        matches!(
            self.last,
            Some(RecordingAction::Start { .. } | RecordingAction::Pause)
        )
    }
}

/// Where an operator's recording request goes: the call's media node and session id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordingTarget {
    pub(crate) call: CallRef,
    pub(crate) endpoint: Endpoint,
    pub(crate) call_id: CallId,
    pub(crate) file_stem: String,
}

/// Why an operator's recording request cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordingRefused {
    #[error("no call {0:?} in progress")]
    NoCall(String),
    #[error("call {0:?} is in direct mode: its media does not pass a proxy that could record it")]
    Direct(String),
    #[error("call {0:?} has no media session yet (waiting for the media proxy)")]
    NoSession(String),
}

/// The file stem of a recording started on the `restarts`-th node a call moved to.
fn file_stem(call_id: &CallId, restarts: u32) -> String {
    if restarts == 0 {
        String::new()
    } else {
        format!("{call_id}-moved-{restarts}")
    }
}

impl Call {
    /// Where a recording request for this call goes, if it has a media session.
    fn recording_target(&self, call: CallRef) -> Option<RecordingTarget> {
        let plan = self.media.as_ref()?;
        Some(RecordingTarget {
            call,
            endpoint: plan.endpoint.clone(),
            call_id: self.key.clone(),
            file_stem: file_stem(&self.key, self.recording.restarts),
        })
    }

    /// The request that performs `action` on this call's session, if it has one.
    fn recording_output(&self, call: CallRef, action: RecordingAction) -> Option<Output> {
        let target = self.recording_target(call)?;
        Some(Output::Recording { target, action })
    }
}

impl Core {
    /// Whether policy records a call from `caller` on a route whose policy is `route`: the
    /// user's setting beats the route's, which beats `--record`.
    pub(super) fn records(&self, caller: &str, route: Option<bool>) -> bool {
        self.settings
            .users
            .get(caller)
            .and_then(|u| u.record)
            .or(route)
            .unwrap_or(self.settings.record)
    }

    /// The call was answered: policy's recording starts now (early media is not recorded).
    pub(super) fn start_recording_at_answer(&mut self, call: CallRef) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        if !record.recording.by_policy || record.mode == MediaMode::Direct {
            return;
        }
        let action = RecordingAction::Start { pcap: false };
        record.recording.last = Some(action);
        if let Some(output) = record.recording_output(call, action) {
            self.push(output);
        }
    }

    /// The call's media moved to a new node: a recording that was on goes on there, in new
    /// files (the lost node's part stays where it was written).
    pub(super) fn restart_recording_after_move(&mut self, call: CallRef) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(last) = record.recording.last.filter(|_| record.recording.active()) else {
            return;
        };
        record.recording.restarts += 1;
        let pcap = matches!(last, RecordingAction::Start { pcap: true });
        let start = record.recording_output(call, RecordingAction::Start { pcap });
        let pause = (last == RecordingAction::Pause)
            .then(|| record.recording_output(call, RecordingAction::Pause))
            .flatten();
        for output in [start, pause].into_iter().flatten() {
            self.push(output);
        }
    }

    /// An operator asks to start, pause or stop the recording of the call with `call_id`
    /// (either leg's). Returns where to send the request; the driver reports its outcome
    /// with [`super::Input::RecordingDone`].
    pub(crate) fn recording_request(
        &mut self,
        call_id: &str,
        action: RecordingAction,
    ) -> Result<RecordingTarget, RecordingRefused> {
        let refused = || RecordingRefused::NoCall(call_id.to_owned());
        let (call, _) = *self.by_call_id.get(call_id).ok_or_else(refused)?;
        let record = self.calls.get_mut(&call).ok_or_else(refused)?;
        if record.finished || matches!(record.state, State::Failed | State::Ended) {
            return Err(refused());
        }
        if record.mode == MediaMode::Direct {
            return Err(RecordingRefused::Direct(call_id.to_owned()));
        }
        let Some(target) = record.recording_target(call) else {
            return Err(RecordingRefused::NoSession(call_id.to_owned()));
        };
        record.recording.last = Some(action);
        Ok(target)
    }

    /// The outcome of a recording request, for the CDR's diagnosis.
    pub(super) fn on_recording_done(
        &mut self,
        call: CallRef,
        action: RecordingAction,
        result: Result<(), MediaError>,
    ) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        match result {
            Ok(()) => record.recording.failure = None,
            Err(error) => {
                tracing::warn!(call_id = %record.key, action = action.as_str(), %error, "recording request failed");
                record.recording.failure = Some(format!("{} failed: {error}", action.as_str()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_recordings_get_their_own_file_names() {
        let call_id = CallId::parse("abc@host").unwrap();
        assert_eq!(file_stem(&call_id, 0), "");
        assert_eq!(file_stem(&call_id, 2), "abc@host-moved-2");
    }

    #[test]
    fn paused_and_running_recordings_are_active_stopped_ones_not() {
        let mut intent = RecordingIntent::default();
        assert!(!intent.active());
        intent.last = Some(RecordingAction::Pause);
        assert!(intent.active());
        intent.last = Some(RecordingAction::Start { pcap: true });
        assert!(intent.active());
        intent.last = Some(RecordingAction::Stop);
        assert!(!intent.active());
    }
}

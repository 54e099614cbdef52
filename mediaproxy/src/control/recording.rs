//! Recordings and the tap: a call's audio is opened at the recorder on first use and its
//! worker told to copy its packets; recordings start, pause and stop, and `reflect` calls can
//! be tapped.

use std::sync::atomic::Ordering;

use super::{Control, ControlError};
use crate::recording::{CallAudioLines, RecorderError, RecordingInfo, TapFrame};
use crate::types::{CallId, Leg};

impl Control {
    /// The recorder's id of a call's audio, opening it on first use, with the call's worker
    /// told to copy its packets.
    async fn capture(&self, call_id: &CallId) -> Result<u64, ControlError> {
        let (worker, capture, copying) = {
            let mut state = self.lock();
            let entry = state
                .calls
                .get_mut(call_id)
                .ok_or_else(|| ControlError::NotFound(call_id.clone()))?;
            let capture = match entry.capture {
                Some(capture) => capture,
                None => {
                    let capture = self.next_capture.fetch_add(1, Ordering::Relaxed);
                    self.recorder
                        .open(
                            capture,
                            CallAudioLines {
                                call_id: call_id.clone(),
                                audio: entry.audio_lines(),
                                codecs: entry.codecs.clone(),
                            },
                        )
                        .map_err(recorder_error)?;
                    entry.capture = Some(capture);
                    capture
                }
            };
            let copying = std::mem::replace(&mut entry.copying, true);
            (entry.worker, capture, copying)
        };
        if !copying && !self.copy(worker, call_id, Some(capture)).await? {
            return Err(ControlError::NotFound(call_id.clone()));
        }
        Ok(capture)
    }

    /// Tells a call's worker to copy its packets to the recorder under `capture`, or to stop;
    /// false when the worker no longer has the call.
    async fn copy(
        &self,
        worker: usize,
        call_id: &CallId,
        capture: Option<u64>,
    ) -> Result<bool, ControlError> {
        Ok(self
            .relay
            .set_capture(worker, call_id.clone(), capture)
            .await?)
    }

    /// Starts or resumes recording a call; `stem` names its files (default: the call id).
    pub(crate) async fn start_recording(
        &self,
        call_id: &CallId,
        stem: Option<String>,
        pcap: bool,
    ) -> Result<RecordingInfo, ControlError> {
        let capture = self.capture(call_id).await?;
        self.recorder
            .start_recording(capture, stem, pcap)
            .await
            .map_err(recorder_error)
    }

    /// Pauses a call's recording (the paused time is silent in the files).
    pub(crate) async fn pause_recording(
        &self,
        call_id: &CallId,
    ) -> Result<RecordingInfo, ControlError> {
        match self.existing_capture(call_id)? {
            Some(capture) => self.recorder.pause(capture).await.map_err(recorder_error),
            None => Ok(RecordingInfo::off()),
        }
    }

    /// Stops a call's recording and closes its files. A call that cannot be tapped stops
    /// being copied to the recorder (a later start copies it again).
    pub(crate) async fn stop_recording(
        &self,
        call_id: &CallId,
    ) -> Result<RecordingInfo, ControlError> {
        let Some(capture) = self.existing_capture(call_id)? else {
            return Ok(RecordingInfo::off());
        };
        let info = self.recorder.stop(capture).await.map_err(recorder_error)?;
        let idle_worker = {
            let mut state = self.lock();
            state
                .calls
                .get_mut(call_id)
                .filter(|entry| !entry.reflect && entry.copying)
                .map(|entry| {
                    entry.copying = false;
                    entry.worker
                })
        };
        if let Some(worker) = idle_worker {
            self.copy(worker, call_id, None).await?;
        }
        Ok(info)
    }

    /// The recording state of a call.
    pub(crate) async fn recording(&self, call_id: &CallId) -> Result<RecordingInfo, ControlError> {
        match self.existing_capture(call_id)? {
            Some(capture) => self.recorder.query(capture).await.map_err(recorder_error),
            None => Ok(RecordingInfo::off()),
        }
    }

    /// Subscribes to a `reflect` call's decoded audio.
    pub(crate) async fn tap(
        &self,
        call_id: &CallId,
        leg: Option<Leg>,
        rate: u32,
    ) -> Result<tokio::sync::mpsc::Receiver<TapFrame>, ControlError> {
        let reflect = {
            let state = self.lock();
            state
                .calls
                .get(call_id)
                .ok_or_else(|| ControlError::NotFound(call_id.clone()))?
                .reflect
        };
        if !reflect {
            return Err(ControlError::FailedPrecondition(format!(
                "call {call_id} is not in reflect mode; only reflect calls can be tapped"
            )));
        }
        let capture = self.capture(call_id).await?;
        self.recorder
            .subscribe(capture, leg, rate)
            .map_err(recorder_error)
    }

    fn existing_capture(&self, call_id: &CallId) -> Result<Option<u64>, ControlError> {
        let state = self.lock();
        let entry = state
            .calls
            .get(call_id)
            .ok_or_else(|| ControlError::NotFound(call_id.clone()))?;
        Ok(entry.capture)
    }

    /// Stops the recorder, closing every recording still open (after the calls' release at
    /// shutdown, nothing should be).
    pub(crate) fn stop_recorder(&self) {
        self.recorder.shutdown();
    }
}

fn recorder_error(error: RecorderError) -> ControlError {
    match error {
        RecorderError::Gone => ControlError::Internal(error.to_string()),
        RecorderError::Failed(text) => {
            ControlError::FailedPrecondition(format!("recording: {text}"))
        }
    }
}

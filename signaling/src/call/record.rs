//! What a call leaves behind: its record for the CDR, and its summary for the admin endpoint.

use std::net::IpAddr;
use std::time::Instant;

use super::{CallId, Endpoint};
use crate::policy::MediaMode;
use crate::sip::SipCallId;

/// How a call ended (docs/cdr.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    Answered,
    Busy,
    NoAnswer,
    Cancelled,
    Failed,
}

impl Disposition {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Busy => "busy",
            Self::NoAnswer => "no_answer",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }

    /// The disposition of a call the callee refused with `status`.
    pub(crate) fn of_refusal(status: u16) -> Self {
        match status {
            486 | 600 => Self::Busy,
            408 | 480 => Self::NoAnswer,
            487 => Self::Cancelled,
            _ => Self::Failed,
        }
    }
}

/// Who ended the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HangupSide {
    Caller,
    Callee,
    System,
}

impl HangupSide {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Caller => "caller",
            Self::Callee => "callee",
            Self::System => "system",
        }
    }
}

/// The signaling half of a CDR; [`crate::cdr::completion::cdr_row`] adds the media's figures.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CallRecord {
    /// The call's key (its caller's Call-ID).
    pub(crate) call_id: CallId,
    /// The Call-ID of our dialog with the callee; None for a call refused before it.
    pub(crate) b_call_id: Option<SipCallId>,
    pub(crate) caller: String,
    pub(crate) callee: String,
    pub(crate) start: Instant,
    pub(crate) answer: Option<Instant>,
    pub(crate) end: Instant,
    pub(crate) disposition: Disposition,
    pub(crate) sip_status: u16,
    pub(crate) hangup_side: HangupSide,
    pub(crate) media_mode: MediaMode,
    pub(crate) media_node: Option<String>,
    /// Where the release goes.
    pub(crate) media_endpoint: Option<Endpoint>,
    /// Nodes the call's media moved away from, in order.
    pub(crate) media_moves: Vec<MediaMove>,
    /// Whether a media session exists to release.
    pub(crate) relayed: bool,
    /// The media address the proxy advertised in SDP.
    pub(crate) media_address: Option<IpAddr>,
    /// Why the call ended, in words ("BYE from the callee", "ring timeout after 60 s").
    pub(crate) end_reason: String,
    /// What was asked of the call's recording (the proxy's release says what came of it).
    pub(crate) recording: super::RecordingIntent,
    /// The key of the call this pairing was transferred out of.
    pub(crate) transferred_from: Option<CallId>,
    /// The key of the pairing this call was transferred into.
    pub(crate) transferred_to: Option<CallId>,
    /// The contact that answered on the callee side (one of the user's devices, a redirect's
    /// or a forward's target).
    pub(crate) callee_contact: Option<String>,
}

impl CallRecord {
    /// The callee leg's Call-ID as a CDR row stores it: empty for a call refused before it.
    pub(crate) fn b_call_id_text(&self) -> String {
        self.b_call_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

/// A move of a call's media away from a lost node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MediaMove {
    /// The node id that was lost.
    pub(crate) from: String,
    /// Why it was given up ("stopped answering its health checks").
    pub(crate) reason: String,
    /// The node the media went to; None when none could take it (the call ended).
    pub(crate) to: Option<String>,
    /// Seconds after the call's start.
    pub(crate) after_s: u64,
}

/// One call in progress, as the admin endpoint shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct CallSummary {
    pub(crate) call_id: String,
    pub(crate) b_call_id: String,
    pub(crate) caller: String,
    pub(crate) callee: String,
    /// mediapending, lateofferpending, calling, proceeding, answered, confirmed.
    pub(crate) state: String,
    pub(crate) media_mode: &'static str,
    pub(crate) media_node: Option<String>,
    /// The gRPC URL of that node.
    pub(crate) media_endpoint: Option<String>,
    pub(crate) media_address: Option<String>,
    /// Relay RTP ports per media line, as given to each side in SDP.
    pub(crate) caller_ports: Vec<u16>,
    pub(crate) callee_ports: Vec<u16>,
    /// Where each side's SIP comes from / goes to.
    pub(crate) caller_address: String,
    pub(crate) callee_address: String,
    pub(crate) age_s: u64,
    /// Seconds since the answer, if answered.
    pub(crate) answered_s: Option<u64>,
}

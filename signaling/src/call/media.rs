//! What the call core knows of media: what a media proxy gave a call, why a request to it
//! failed (with the SIP status the caller gets), and what is done to a recording. The core
//! owns these types; `crate::media`, the gRPC client, fills them in.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

pub(crate) use proto::domain::CallId;

/// A media proxy node as signaling reaches it: the gRPC URL its requests go to. Every
/// request of a call goes to its node (call affinity); the name the node gives itself
/// (`--node-id`, for CDRs and logs) is [`MediaPlan::node`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Endpoint(Arc<str>);

impl Endpoint {
    pub(crate) fn new(url: &str) -> Self {
        Self(Arc::from(url))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Endpoint {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

impl PartialEq<&str> for Endpoint {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the media proxy gave a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MediaPlan {
    /// The node's id (its `--node-id`), for CDRs and logs.
    pub(crate) node: String,
    /// Where the call's media requests go (call affinity).
    pub(crate) endpoint: Endpoint,
    pub(crate) advertised: IpAddr,
    /// RTP ports per media line on the caller leg (go into the SDP sent to the caller).
    pub(crate) caller_ports: Vec<u16>,
    /// RTP ports per media line on the callee leg (go into the SDP sent to the callee).
    pub(crate) callee_ports: Vec<u16>,
}

/// What is done to a call's recording, by policy or by an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordingAction {
    /// Start (or resume) recording; `pcap` also writes the call's datagrams.
    Start {
        pcap: bool,
    },
    Pause,
    Stop,
}

impl RecordingAction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Start { .. } => "start",
            Self::Pause => "pause",
            Self::Stop => "stop",
        }
    }
}

/// Why a media proxy request failed, with the SIP status a call gets for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MediaError {
    /// The proxy could not be reached, did not answer within the deadline, or is draining.
    #[error("media proxy unavailable: {0}")]
    Unavailable(String),
    /// The proxy has no free ports, or no file descriptors for the sockets (the text says
    /// which).
    #[error("media proxy out of resources: {0}")]
    Exhausted(String),
    /// The proxy refused what the SDP asked for (an address family it cannot reach, a
    /// media line it cannot relay).
    #[error("media proxy refused the media: {0}")]
    Refused(String),
    /// A reply this client cannot read, or a failure inside the proxy.
    #[error("media proxy failed: {0}")]
    Failed(String),
}

impl MediaError {
    /// The status a caller gets when its call cannot be set up because of this error:
    /// 503 for what another node or a later attempt may not have (RFC 3261 section
    /// 21.5.4), 488 for media the proxy will not relay (21.4.26), 500 for our own failure.
    pub(crate) fn sip_status(&self) -> u16 {
        match self {
            Self::Unavailable(_) | Self::Exhausted(_) => 503,
            Self::Refused(_) => 488,
            Self::Failed(_) => 500,
        }
    }
}

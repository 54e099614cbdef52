//! Where a message came from or must go: a transport and a socket address.

use std::net::SocketAddr;

/// The transport a message came over or must leave by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// The name in a Via header (`SIP/2.0/UDP`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
        }
    }

    /// Reliable transports carry no retransmissions (RFC 3261 section 17.1.1.2).
    pub fn reliable(self) -> bool {
        self == Self::Tcp
    }
}

/// The remote end of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
}

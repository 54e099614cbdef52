//! Allocate and update: a call's port pairs are bound here and handed to its relay worker,
//! and a leg's SDP is passed on to it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::release::renew;
use super::{
    AllocateRequest, Allocation, CallEntry, Control, ControlError, ControlSettings, LocalMedia,
};
use crate::ports::PortPool;
use crate::relay::NewMedia;
use crate::session::{MAX_MEDIA, UpdateError};
use crate::types::{CallId, Leg, RemoteMedia};

impl Control {
    /// Allocates port pairs for one leg (idempotent, see the `control` module docs).
    pub(crate) fn allocate(&self, request: AllocateRequest) -> Result<Allocation, ControlError> {
        let AllocateRequest {
            call_id,
            leg,
            owner,
            media,
            lease_timeout,
            reflect,
        } = request;
        if media.is_empty() || media.len() > MAX_MEDIA {
            return Err(ControlError::InvalidArgument(format!(
                "media must list 1 to {MAX_MEDIA} media lines, got {}",
                media.len()
            )));
        }
        let now = Instant::now();
        let mut state = self.lock();
        let state = &mut *state;
        let (worker, existing_media) = match state.calls.get(&call_id) {
            Some(entry) if entry.owner != owner => {
                return Err(ControlError::FailedPrecondition(format!(
                    "call {call_id} is owned by {}, not {owner}",
                    entry.owner
                )));
            }
            Some(entry) => (entry.worker, entry.legs[leg.index()].clone()),
            None => {
                if self.draining.load(Ordering::Relaxed) {
                    self.metrics
                        .allocation_failures
                        .with_label_values(&["draining"])
                        .inc();
                    return Err(ControlError::Draining);
                }
                if let Some(limit) = self.settings.max_sessions_per_owner
                    && state.leases.get(&owner).is_some_and(|l| l.calls >= limit)
                {
                    self.metrics
                        .allocation_failures
                        .with_label_values(&["owner_quota"])
                        .inc();
                    tracing::warn!(%call_id, %owner, limit, "allocation refused: the owner's quota is used up");
                    return Err(ControlError::QuotaExceeded { owner, limit });
                }
                (self.relay.pick(), Vec::new())
            }
        };
        let lease = renew(
            &mut state.leases,
            &owner,
            now,
            self.settings.lease_timeout,
            lease_timeout,
        );
        if media.len() <= existing_media.len() {
            return Ok(Allocation {
                call_id,
                leg,
                advertised: self.settings.advertise_ip,
                media: existing_media[..media.len()].to_vec(),
                existing: true,
            });
        }
        // Bind the missing lines; on exhaustion give back what this request took.
        let mut bound = Vec::new();
        for &kind in &media[existing_media.len()..] {
            match self.bind_pair(&mut state.pool, now) {
                Ok((rtp_port, rtp, rtcp)) => bound.push(NewMedia {
                    kind,
                    rtp_port,
                    rtp,
                    rtcp,
                }),
                Err(failure) => {
                    for new in bound {
                        state.pool.release(now, new.rtp_port);
                    }
                    let (reason, error) = match failure {
                        BindFailure::Exhausted => (
                            "ports_exhausted",
                            ControlError::PortsExhausted(self.settings.ports),
                        ),
                        BindFailure::Descriptors(why) => (
                            "descriptors_exhausted",
                            ControlError::DescriptorsExhausted(why),
                        ),
                    };
                    self.metrics
                        .allocation_failures
                        .with_label_values(&[reason])
                        .inc();
                    self.refresh_port_gauge(&mut state.pool, now);
                    tracing::warn!(%call_id, range = %self.settings.ports, "allocation refused: {error}");
                    return Err(error);
                }
            }
        }
        let entry = state.calls.entry(call_id.clone()).or_insert_with(|| {
            lease.calls += 1;
            CallEntry {
                owner: owner.clone(),
                worker,
                legs: [Vec::new(), Vec::new()],
                codecs: [Vec::new(), Vec::new()],
                capture: None,
                copying: false,
                reflect,
            }
        });
        entry.reflect |= reflect;
        let leg_media = &mut entry.legs[leg.index()];
        for new in &bound {
            leg_media.push(LocalMedia {
                index: leg_media.len(),
                kind: new.kind,
                rtp_port: new.rtp_port,
            });
        }
        let all = leg_media.clone();
        let was_existing = !existing_media.is_empty();
        state.tombstones.forget(&call_id, None);
        self.metrics.sessions.set(state.calls.len() as i64);
        self.refresh_port_gauge(&mut state.pool, now);
        self.relay
            .add_media(worker, call_id.clone(), owner, leg, bound)?;
        tracing::debug!(%call_id, leg = leg.as_str(), ports = ?all, "allocated");
        Ok(Allocation {
            call_id,
            leg,
            advertised: self.settings.advertise_ip,
            media: all,
            existing: was_existing,
        })
    }

    /// Takes pairs from the pool until both ports bind; a pair another process holds is
    /// skipped (and retried after the quarantine), never leaked. Out of descriptors, the pair
    /// goes back at once and the search stops: every other pair would fail the same way,
    /// and the range is not what is exhausted.
    fn bind_pair(
        &self,
        pool: &mut PortPool,
        now: Instant,
    ) -> Result<(u16, std::net::UdpSocket, std::net::UdpSocket), BindFailure> {
        for _ in 0..pool.total_pairs() {
            let port = pool.take(now).ok_or(BindFailure::Exhausted)?;
            let rtp = bind_udp(
                SocketAddr::new(self.settings.media_ip, port),
                &self.settings,
            );
            let rtcp = bind_udp(
                SocketAddr::new(self.settings.media_ip, port + 1),
                &self.settings,
            );
            match (rtp, rtcp) {
                (Ok(rtp), Ok(rtcp)) => return Ok((port, rtp, rtcp)),
                (rtp, rtcp) => {
                    let error = rtp.err().or(rtcp.err());
                    if let Some(error) = error.as_ref().filter(|e| out_of_descriptors(e)) {
                        pool.give_back(port);
                        return Err(BindFailure::Descriptors(error.to_string()));
                    }
                    tracing::info!(port, ?error, "RTP port pair unavailable, skipped");
                    pool.skip(now, port);
                }
            }
        }
        Err(BindFailure::Exhausted)
    }

    /// Applies a leg's SDP and starts relaying towards it.
    pub(crate) async fn update(
        &self,
        call_id: CallId,
        leg: Leg,
        remotes: Vec<RemoteMedia>,
    ) -> Result<Allocation, ControlError> {
        let (worker, media) = {
            let mut state = self.lock();
            let entry = state
                .calls
                .get_mut(&call_id)
                .ok_or_else(|| ControlError::NotFound(call_id.clone()))?;
            let audio = entry.audio_lines()[leg.index()];
            if let Some(remote) = remotes.iter().find(|r| Some(r.index as u8) == audio) {
                entry.codecs[leg.index()] = remote.codecs.clone();
                if let Some(capture) = entry.capture {
                    let _ = self.recorder.codecs(capture, leg, remote.codecs.clone());
                }
            }
            (entry.worker, entry.legs[leg.index()].clone())
        };
        if media.is_empty() {
            return Err(ControlError::FailedPrecondition(format!(
                "leg {} of call {call_id} has no ports allocated",
                leg.as_str()
            )));
        }
        self.relay
            .update(worker, call_id.clone(), leg, remotes)
            .await?
            .map_err(|error| match error {
                UpdateError::MediaNotAllocated { .. } => {
                    ControlError::InvalidArgument(error.to_string())
                }
                UpdateError::LegNotAllocated(_) => {
                    ControlError::FailedPrecondition(error.to_string())
                }
            })?;
        Ok(Allocation {
            call_id,
            leg,
            advertised: self.settings.advertise_ip,
            media,
            existing: true,
        })
    }
}

/// Why no port pair could be bound.
enum BindFailure {
    /// Every pair of the range is taken (or unbindable).
    Exhausted,
    /// The process has no descriptor left for the sockets.
    Descriptors(String),
}

/// EMFILE (this process's limit) or ENFILE (the system's).
fn out_of_descriptors(error: &std::io::Error) -> bool {
    // Linux: EMFILE 24, ENFILE 23.
    matches!(error.raw_os_error(), Some(23 | 24))
}

/// Binds one non-blocking UDP socket, without `SO_REUSEADDR`/`SO_REUSEPORT`, so that no two
/// sessions (or processes) can share a port; marks what it sends with the DSCP and sizes its
/// buffers as configured.
fn bind_udp(
    address: SocketAddr,
    settings: &ControlSettings,
) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_nonblocking(true)?;
    let tos = u32::from(settings.dscp) << 2;
    if tos != 0 {
        if address.is_ipv4() {
            socket.set_tos_v4(tos)?;
        } else {
            socket.set_tclass_v6(tos)?;
        }
    }
    if settings.socket_buffer > 0 {
        socket.set_recv_buffer_size(settings.socket_buffer)?;
        socket.set_send_buffer_size(settings.socket_buffer)?;
    }
    socket.bind(&address.into())?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Duration;

    use super::*;
    use crate::ports::PortRange;

    fn settings(dscp: u8, socket_buffer: usize) -> ControlSettings {
        ControlSettings {
            node_id: "t".into(),
            media_ip: IpAddr::from([127, 0, 0, 1]),
            advertise_ip: IpAddr::from([127, 0, 0, 1]),
            ports: PortRange { min: 0, max: 0 },
            port_quarantine: Duration::ZERO,
            lease_timeout: Duration::ZERO,
            max_sessions_per_owner: None,
            dscp,
            socket_buffer,
            encode_release: crate::grpc::encode_release,
        }
    }

    #[test]
    fn relay_sockets_carry_the_dscp_and_the_buffer_size() {
        let socket = bind_udp("127.0.0.1:0".parse().unwrap(), &settings(46, 1 << 20)).unwrap();
        let socket = socket2::SockRef::from(&socket);
        assert_eq!(socket.tos_v4().unwrap(), 46 << 2, "EF");
        // Linux caps the request at rmem_max, then doubles it for its bookkeeping.
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            socket.recv_buffer_size().unwrap(),
            2 * rmem_max.min(1 << 20)
        );
        let plain = bind_udp("127.0.0.1:0".parse().unwrap(), &settings(0, 0)).unwrap();
        assert_eq!(socket2::SockRef::from(&plain).tos_v4().unwrap(), 0);
        let v6 = bind_udp("[::1]:0".parse().unwrap(), &settings(46, 0)).unwrap();
        assert_eq!(socket2::SockRef::from(&v6).tclass_v6().unwrap(), 46 << 2);
    }

    #[test]
    fn a_bound_port_cannot_be_bound_again() {
        let first = bind_udp("127.0.0.1:0".parse().unwrap(), &settings(46, 0)).unwrap();
        let taken = first.local_addr().unwrap();
        assert!(
            bind_udp(taken, &settings(46, 0)).is_err(),
            "no SO_REUSEADDR/PORT sharing"
        );
    }
}

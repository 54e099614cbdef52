//! A fleet of media proxy nodes (docs/architecture.md, "Several hosts"): placement of new
//! calls, allocation that moves on to the next node when one refuses, and a health watch per
//! node that notices a dead or restarted node within about a second.
//!
//! # Placement policy
//!
//! A new call goes to the node with the most headroom among those that are up and not
//! draining: the most free RTP ports as its last `Status` said, less the ports of the calls
//! placed on it since (four per relayed audio call: two legs, RTP and RTCP), so a burst of
//! calls between two status polls spreads instead of piling onto one node. Ties go to the node
//! with fewer sessions, then to the order of `--mediaproxy`. A node whose state is not known
//! yet (just started) ranks after every node known to be up, before none. If a node answers
//! an allocation `UNAVAILABLE` (draining, unreachable, too slow) or `RESOURCE_EXHAUSTED` (out
//! of ports), fails inside (`INTERNAL`), or gives an answer that breaks the contract (no node
//! id, a media line missing, an odd or zero port), what it may have allocated is released and
//! the next node is tried, before the caller notices. Only a refusal of the media
//! (`INVALID_ARGUMENT`, `FAILED_PRECONDITION`: the call's own SDP) ends the placement there.
//! A status that breaks the contract (no node or instance id, more ports free than it has)
//! counts as a missed health check.
//!
//! # Health
//!
//! Each node is asked `Status` every [`HEALTH_INTERVAL`] with a deadline of
//! [`HEALTH_TIMEOUT`]. [`DOWN_AFTER`] misses in a row mark it down and report it lost to the
//! core, which moves its calls; so does a new `instance_id` (the node restarted and knows
//! none of its calls). A down node takes no new calls and comes back with its first answer.
//! Every [`RENEW_EVERY`]th poll also renews this instance's lease on the node.
//!
//! # Discovery
//!
//! A `--mediaproxy` URL whose host is an IP address is one node. One whose host is a name (a
//! Kubernetes headless Service, a DNS round robin) is as many nodes as the name has addresses,
//! re-resolved every [`REFRESH_INTERVAL`] ([`Pool::refresh`]): a new address is a new node; an
//! address gone from the answer *retires* its node (no new calls; its calls stay until they
//! end, or move if it dies), and comes back if the address does. An answer that fails or is
//! empty changes nothing (the known nodes stay, with a warning and
//! `signaling_mediaproxy_dns_failures_total`): a resolver hiccup must not empty the pool.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::domain::Leg;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{CallId, Endpoint, InvalidUrl, MediaClient, MediaError, NodeStatus};
use crate::call::{Input, MediaPlan};
use crate::sdp::SessionDescription;

/// How often each node is asked for its status.
pub(crate) const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// How long a status request may take before it counts as missed.
pub(crate) const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
/// Missed status requests in a row that mark a node down (about a second).
pub(crate) const DOWN_AFTER: u32 = 2;
/// Lease renewal every this many polls (5 s; the proxy's default lease is 30 s).
pub(crate) const RENEW_EVERY: u32 = 10;
/// How often names in `--mediaproxy` are resolved again.
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// How long one resolution may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Ports a relayed audio call takes on a node: two legs, RTP and RTCP each.
const PORTS_PER_CALL: i64 = 4;

/// What is known of a node's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum NodeState {
    /// Not asked yet.
    #[default]
    Unknown,
    Up,
    Down,
}

impl NodeState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// A node's last status and what was placed on it since.
#[derive(Debug, Clone, Default)]
pub(crate) struct Health {
    pub(crate) state: NodeState,
    pub(crate) status: Option<NodeStatus>,
    /// Missed status requests in a row.
    pub(crate) misses: u32,
    /// Calls placed that the last status may not count yet.
    pub(crate) placed: u32,
    /// Its address left its name's DNS answer: no new calls.
    pub(crate) retired: bool,
    /// The embedded proxy, in this very process: it lives and dies with it, so a late
    /// answer (this process starved of CPU) is never taken for the node being lost.
    pub(crate) in_process: bool,
}

impl Health {
    /// Free ports less those of the calls placed since the status said so.
    fn headroom(&self) -> i64 {
        let free = self.status.as_ref().map_or(0, |s| i64::from(s.ports_free));
        free - PORTS_PER_CALL * i64::from(self.placed)
    }

    fn draining(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.draining)
    }
}

/// One media proxy node of the pool.
#[derive(Clone)]
pub(crate) struct Node {
    pub(crate) client: MediaClient,
    pub(crate) health: Arc<Mutex<Health>>,
    /// The `--mediaproxy` URL with a name this node was discovered from.
    pub(crate) source: Option<String>,
}

impl Node {
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.client.url
    }

    pub(crate) fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, change: impl FnOnce(&mut Health)) {
        change(&mut self.health.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The node id, once known (else the URL).
    pub(crate) fn name(&self) -> String {
        self.health()
            .status
            .map_or_else(|| self.client.url.to_string(), |s| s.node_id)
    }
}

/// A `--mediaproxy` URL split for discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Named {
    url: String,
    scheme: String,
    host: String,
    port: u16,
}

/// Splits `scheme://host[:port][/]`; None when the host is an IP address (a static node).
fn named(url: &str) -> Option<Named> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.trim_end_matches('/');
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            (host, port.parse().ok()?)
        }
        _ => (authority, 50051),
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() || bare.is_empty() {
        return None;
    }
    Some(Named {
        url: url.to_owned(),
        scheme: scheme.to_owned(),
        host: bare.to_owned(),
        port,
    })
}

/// The addresses a name resolves to, later.
pub(crate) type Lookup<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>>;

/// How names are resolved: the system resolver in service, a script in tests.
pub(crate) trait Resolve: Send + Sync {
    fn lookup(&self, host: &str, port: u16) -> Lookup<'_>;
}

/// The system resolver (`getaddrinfo`: `/etc/hosts`, then DNS).
pub(crate) struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup(&self, host: &str, port: u16) -> Lookup<'_> {
        let host = host.to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), port)).await?;
            Ok(found.map(|a| a.ip()).collect())
        })
    }
}

/// Every media proxy node signaling may place calls on.
#[derive(Clone)]
pub(crate) struct Pool {
    nodes: Arc<std::sync::RwLock<Vec<Node>>>,
    /// `--mediaproxy` URLs whose host is a name, resolved by [`Pool::refresh`].
    names: Vec<Named>,
    owner: String,
    /// Mutual TLS for every node's channel (nodes discovered later too); replaced by
    /// [`Pool::reload_tls`].
    tls: Arc<std::sync::RwLock<Option<super::ClientTls>>>,
    resolver: Arc<dyn Resolve>,
    dns_failures: Option<prometheus::IntCounter>,
    /// `signaling_mediaproxy_request_duration_seconds`: `place` and `relocate` time the whole
    /// placement (choice, every node tried, allocations and updates).
    durations: prometheus::HistogramVec,
}

/// Whether an allocation error is the node's, not the call's: try another node. Only a
/// refusal of the media (the call's SDP) ends the call's placement.
fn node_refused(error: &MediaError) -> bool {
    !matches!(error, MediaError::Refused(_))
}

impl Pool {
    /// A pool of the nodes at `urls`, each with its own lazily connecting channel (a slow
    /// node holds up only its own requests).
    pub(crate) fn new(
        urls: &[String],
        owner: &str,
        durations: &prometheus::HistogramVec,
        tls: Option<super::ClientTls>,
    ) -> Result<Self, InvalidUrl> {
        let mut nodes = Vec::new();
        let mut names = Vec::new();
        for url in urls {
            match named(url) {
                Some(name) => names.push(name),
                None => nodes.push(Node {
                    client: MediaClient::new(url, owner, tls.as_ref())?
                        .with_durations(durations.clone()),
                    health: Arc::default(),
                    source: None,
                }),
            }
        }
        Ok(Self {
            nodes: Arc::new(std::sync::RwLock::new(nodes)),
            names,
            owner: owner.to_owned(),
            tls: Arc::new(std::sync::RwLock::new(tls)),
            resolver: Arc::new(SystemResolver),
            dns_failures: None,
            durations: durations.clone(),
        })
    }

    /// Marks the pool's nodes as the embedded proxy of this process: never declared lost
    /// for late answers (found by the soak test: with the machine's CPU taken by other work,
    /// two slow health checks had the embedded proxy "lost" and 170 calls ended by the
    /// system).
    pub(crate) fn in_process(self) -> Self {
        for node in self.nodes().iter() {
            node.update(|h| h.in_process = true);
        }
        self
    }

    /// Resolves names with `resolver` instead of the system's.
    #[cfg(test)]
    pub(crate) fn with_resolver(mut self, resolver: Arc<dyn Resolve>) -> Self {
        self.resolver = resolver;
        self
    }

    /// Counts failed or empty resolutions into `counter`.
    pub(crate) fn with_dns_failures(mut self, counter: prometheus::IntCounter) -> Self {
        self.dns_failures = Some(counter);
        self
    }

    /// Whether some `--mediaproxy` URL is a name to resolve.
    pub(crate) fn discovers(&self) -> bool {
        !self.names.is_empty()
    }

    /// Every node known, retired ones included.
    pub(crate) fn nodes(&self) -> Vec<Node> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The node at `endpoint`.
    pub(crate) fn node(&self, endpoint: &Endpoint) -> Option<Node> {
        self.nodes().into_iter().find(|n| n.endpoint() == endpoint)
    }

    /// Resolves every name again: adds a node for each new address, retires the nodes whose
    /// address left the answer, brings back those whose address returned. Returns the nodes
    /// added (the caller starts their watches).
    pub(crate) async fn refresh(&self) -> Vec<Node> {
        let mut added = Vec::new();
        for name in &self.names {
            let answer =
                tokio::time::timeout(RESOLVE_TIMEOUT, self.resolver.lookup(&name.host, name.port))
                    .await;
            let addresses = match answer {
                Ok(Ok(found)) if !found.is_empty() => found,
                failure => {
                    let why = match failure {
                        Ok(Ok(_)) => "no address".to_owned(),
                        Ok(Err(error)) => error.to_string(),
                        Err(_) => format!("no answer within {} s", RESOLVE_TIMEOUT.as_secs()),
                    };
                    let known = self
                        .nodes()
                        .iter()
                        .filter(|n| n.source.as_deref() == Some(name.url.as_str()))
                        .count();
                    tracing::warn!(name = %name.host, %why, known, "media proxy name did not resolve; keeping the nodes known");
                    if let Some(counter) = &self.dns_failures {
                        counter.inc();
                    }
                    continue;
                }
            };
            let urls: Vec<String> = addresses
                .iter()
                .map(|ip| match ip {
                    IpAddr::V4(v4) => format!("{}://{v4}:{}", name.scheme, name.port),
                    IpAddr::V6(v6) => format!("{}://[{v6}]:{}", name.scheme, name.port),
                })
                .collect();
            let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
            for node in nodes
                .iter()
                .filter(|n| n.source.as_deref() == Some(name.url.as_str()))
            {
                let present = urls.iter().any(|u| u == node.endpoint().as_str());
                node.update(|h| {
                    if h.retired == present {
                        h.retired = !present;
                        tracing::info!(url = %node.endpoint(), name = %name.host, retired = h.retired, "media proxy address {} the name's answer", if present { "back in" } else { "gone from" });
                    }
                });
            }
            for url in urls {
                if nodes.iter().any(|n| n.endpoint().as_str() == url) {
                    continue;
                }
                let tls = self.tls.read().unwrap_or_else(|p| p.into_inner()).clone();
                let Ok(client) = MediaClient::new(&url, &self.owner, tls.as_ref()) else {
                    continue;
                };
                tracing::info!(%url, name = %name.host, "media proxy discovered");
                let node = Node {
                    client: client.with_durations(self.durations.clone()),
                    health: Arc::default(),
                    source: Some(name.url.clone()),
                };
                nodes.push(node.clone());
                added.push(node);
            }
        }
        added
    }

    /// The mutual TLS in force, if any.
    pub(crate) fn tls(&self) -> Option<super::ClientTls> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Dials every node with `tls` from now on (a renewed client certificate or CA), and
    /// nodes discovered later. A `tls` the TLS stack refuses fails on the first node, before
    /// any channel is changed ([`MediaClient::reconnect`] builds the new one first).
    pub(crate) fn reload_tls(&self, tls: super::ClientTls) -> Result<(), InvalidUrl> {
        for node in self
            .nodes()
            .iter()
            .filter(|n| n.endpoint().as_str().starts_with("https://"))
        {
            node.client.reconnect(&tls)?;
        }
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = Some(tls);
        Ok(())
    }

    /// The nodes a new call may go to, best first (the placement policy above), without
    /// `exclude`.
    pub(crate) fn candidates(&self, exclude: Option<&Endpoint>) -> Vec<Node> {
        let nodes = self.nodes();
        let mut ranked: Vec<(usize, Health, &Node)> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| Some(n.endpoint()) != exclude)
            .map(|(i, n)| (i, n.health(), n))
            .filter(|(_, h, _)| h.state != NodeState::Down && !h.draining() && !h.retired)
            .collect();
        ranked.sort_by_key(|(i, h, _)| {
            (
                h.state != NodeState::Up,
                std::cmp::Reverse(h.headroom()),
                h.status.as_ref().map_or(0, |s| s.sessions),
                *i,
            )
        });
        ranked.into_iter().map(|(_, _, n)| n.clone()).collect()
    }

    /// Tries `attempt` on each candidate in turn until one takes the call.
    async fn on_some_node<F, Fut>(
        &self,
        call_id: &CallId,
        exclude: Option<&Endpoint>,
        attempt: F,
    ) -> Result<MediaPlan, MediaError>
    where
        F: Fn(Node) -> Fut,
        Fut: std::future::Future<Output = Result<MediaPlan, MediaError>>,
    {
        let mut last = MediaError::Unavailable("no media proxy node is up".into());
        for node in self.candidates(exclude) {
            node.update(|h| h.placed += 1);
            match attempt(node.clone()).await {
                Ok(plan) => return Ok(plan),
                Err(error) if node_refused(&error) => {
                    tracing::warn!(node = %node.name(), %error, %call_id, "media node refused the call; trying the next");
                    if matches!(error, MediaError::Unavailable(_)) {
                        node.update(|h| {
                            if !h.in_process {
                                h.misses = h.misses.max(DOWN_AFTER);
                            }
                        });
                    }
                    // It may have allocated one leg before refusing the other.
                    let client = node.client.clone();
                    let call_id = call_id.clone();
                    tokio::spawn(async move {
                        let _ = client.release(&call_id, "released").await;
                    });
                    last = error;
                }
                Err(error) => return Err(error),
            }
        }
        Err(last)
    }

    /// Places a new call: both legs allocated on one node, `offer_leg` pointed at the offer.
    pub(crate) async fn place(
        &self,
        call_id: &CallId,
        offer: &SessionDescription,
        offer_leg: Leg,
        reflect: bool,
    ) -> Result<MediaPlan, MediaError> {
        let _timer = self.durations.with_label_values(&["place"]).start_timer();
        self.on_some_node(call_id, None, |node| async move {
            node.client
                .prepare(call_id, offer, offer_leg, reflect)
                .await
        })
        .await
    }

    /// Moves a call off the lost node at `lost`: set up again on another, from each leg's
    /// last SDP.
    pub(crate) async fn relocate(
        &self,
        call_id: &CallId,
        caller: &SessionDescription,
        callee: &SessionDescription,
        lost: Option<&Endpoint>,
        reflect: bool,
    ) -> Result<MediaPlan, MediaError> {
        let _timer = self
            .durations
            .with_label_values(&["relocate"])
            .start_timer();
        self.on_some_node(call_id, lost, |node| async move {
            node.client
                .take_over(call_id, caller, callee, reflect)
                .await
        })
        .await
    }
}

/// What the health watch reports, besides the node's state.
pub(crate) trait HealthReport: Send + 'static {
    /// The node answered (`up`) or was marked down; for `signaling_mediaproxy_up`.
    fn state(&self, node: &str, up: bool);

    /// Live figures of this instance's calls on `node` (every lease renewal), kept so a
    /// call's CDR still has them if the node dies.
    fn sessions(
        &self,
        node: &str,
        sessions: Vec<(CallId, Vec<crate::cdr::diagnosis::MediaFigures>)>,
    ) {
        let _ = (node, sessions);
    }
}

/// Watches one node until `stop`: status polls, lease renewals, and `MediaNodeLost` to the
/// core when the node goes down or restarts.
pub(crate) async fn watch(
    node: Node,
    inputs: mpsc::Sender<Input>,
    report: impl HealthReport + Sync,
    stop: CancellationToken,
) {
    let report = Arc::new(report);
    let mut interval = tokio::time::interval(HEALTH_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut polls: u32 = 0;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = stop.cancelled() => return,
        }
        // Placements made before the status was asked for are in its figures; later ones
        // may not be, and keep counting against the node.
        let placed_before = node.health().placed;
        let answer = tokio::time::timeout(HEALTH_TIMEOUT, node.client.status()).await;
        let before = node.health();
        let lost = match answer {
            Ok(Ok(status)) => {
                let restarted = before
                    .status
                    .as_ref()
                    .is_some_and(|old| old.instance_id != status.instance_id);
                if before.state != NodeState::Up {
                    tracing::info!(node = %status.node_id, url = %node.endpoint(), sessions = status.sessions, ports_free = status.ports_free, draining = status.draining, "media node up");
                }
                if status.draining && !before.draining() {
                    tracing::info!(node = %status.node_id, "media node draining: no new calls go to it");
                }
                report.state(&status.node_id, true);
                node.update(|h| {
                    h.state = NodeState::Up;
                    h.misses = 0;
                    h.placed = h.placed.saturating_sub(placed_before);
                    h.status = Some(status);
                });
                restarted.then_some("restarted without its calls")
            }
            failure => {
                let error = match failure {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("no answer within {} ms", HEALTH_TIMEOUT.as_millis()),
                };
                let mut now_down = false;
                if before.in_process && before.misses + 1 == DOWN_AFTER {
                    tracing::warn!(node = %node.name(), %error, "the embedded media proxy answers its health checks late: this process is short of CPU (its calls go on)");
                }
                node.update(|h| {
                    h.misses += 1;
                    if h.misses >= DOWN_AFTER && h.state != NodeState::Down && !h.in_process {
                        h.state = NodeState::Down;
                        now_down = true;
                    }
                });
                if now_down {
                    tracing::warn!(node = %node.name(), url = %node.endpoint(), %error, "media node down");
                    // Labelled by node id, never by an address: a node that never answered
                    // has no series yet.
                    if let Some(status) = node.health().status {
                        report.state(&status.node_id, false);
                    }
                }
                now_down.then_some("stopped answering its health checks")
            }
        };
        if let Some(reason) = lost {
            let input = Input::MediaNodeLost {
                endpoint: node.endpoint().clone(),
                reason: reason.to_owned(),
            };
            if inputs.send(input).await.is_err() {
                return;
            }
        }
        polls = polls.wrapping_add(1);
        if polls % RENEW_EVERY == 1 && node.health().state == NodeState::Up {
            let client = node.client.clone();
            let (report, name) = (report.clone(), node.name());
            let (inputs, endpoint) = (inputs.clone(), node.endpoint().clone());
            tokio::spawn(async move {
                if let Err(error) = client.renew().await {
                    tracing::warn!(url = %client.url, %error, "media proxy lease renewal failed");
                }
                match client.list_sessions().await {
                    Ok(sessions) => {
                        let call_ids = sessions.iter().map(|(id, _)| id.clone()).collect();
                        report.sessions(&name, sessions);
                        let _ = inputs
                            .send(Input::MediaSessions { endpoint, call_ids })
                            .await;
                    }
                    Err(error) => {
                        tracing::debug!(url = %client.url, %error, "session listing failed")
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(nodes: &[(NodeState, u32, u32, bool)]) -> Pool {
        let urls: Vec<String> = (0..nodes.len())
            .map(|i| format!("http://127.0.0.1:{}", 50_000 + i))
            .collect();
        let durations =
            prometheus::HistogramVec::new(prometheus::HistogramOpts::new("t", "t"), &["method"])
                .unwrap();
        let pool = Pool::new(&urls, "owner", &durations, None).unwrap();
        for (node, &(state, free, sessions, draining)) in pool.nodes().iter().zip(nodes) {
            node.update(|h| {
                h.state = state;
                h.status = (state != NodeState::Unknown).then(|| NodeStatus {
                    node_id: node.endpoint().to_string(),
                    ports_total: 10_000,
                    draining,
                    advertised_address: "127.0.0.1".into(),
                    instance_id: "i".into(),
                    sessions,
                    ports_free: free,
                });
            });
        }
        pool
    }

    fn order(pool: &Pool, exclude: Option<&str>) -> Vec<u16> {
        pool.candidates(exclude.map(Endpoint::new).as_ref())
            .iter()
            .map(|n| {
                n.endpoint()
                    .as_str()
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .parse::<u16>()
                    .unwrap()
                    - 50_000
            })
            .collect()
    }

    // Channels connect lazily, but need a runtime to exist.
    #[tokio::test]
    async fn the_node_with_most_headroom_comes_first_and_down_or_draining_ones_not_at_all() {
        let pool = pool(&[
            (NodeState::Up, 4_000, 10, false),
            (NodeState::Up, 9_000, 90, false),
            (NodeState::Down, 10_000, 0, false),
            (NodeState::Up, 10_000, 0, true),
            (NodeState::Unknown, 0, 0, false),
            (NodeState::Up, 9_000, 50, false),
        ]);
        assert_eq!(
            order(&pool, None),
            [5, 1, 0, 4],
            "ties by sessions; unknown last"
        );
        assert_eq!(order(&pool, Some("http://127.0.0.1:50005")), [1, 0, 4]);
    }

    #[tokio::test]
    async fn calls_placed_since_the_last_status_count_against_a_node() {
        let pool = pool(&[
            (NodeState::Up, 1_000, 0, false),
            (NodeState::Up, 990, 0, false),
        ]);
        assert_eq!(order(&pool, None), [0, 1]);
        // Three calls placed on node 0 since its status (12 ports): node 1 now has more.
        pool.nodes()[0].update(|h| h.placed = 3);
        assert_eq!(order(&pool, None), [1, 0]);
    }

    /// Answers lookups from a script, one answer per call.
    struct Scripted(Mutex<std::collections::VecDeque<std::io::Result<Vec<IpAddr>>>>);

    impl Resolve for Scripted {
        fn lookup(&self, _host: &str, _port: u16) -> Lookup<'_> {
            let answer = self
                .0
                .lock()
                .unwrap()
                .pop_front()
                .expect("a scripted answer");
            Box::pin(async move { answer })
        }
    }

    #[test]
    fn urls_with_a_name_are_discovered_and_ip_urls_are_static() {
        let name = named("http://mediaproxy.media.svc.cluster.local:50052").unwrap();
        assert_eq!(
            (name.host.as_str(), name.port),
            ("mediaproxy.media.svc.cluster.local", 50052)
        );
        assert_eq!(named("https://mp/").unwrap().port, 50051);
        assert_eq!(named("http://10.0.0.1:50051"), None);
        assert_eq!(named("http://[2001:db8::1]:50051"), None);
        assert_eq!(named("http://[::1]"), None);
    }

    #[tokio::test]
    async fn a_name_becomes_one_node_per_address_and_a_bad_answer_changes_nothing() {
        let ip = |last: u8| IpAddr::from([10, 0, 0, last]);
        let script = Scripted(Mutex::new(
            [
                Ok(vec![ip(1), ip(2)]),
                Ok(vec![ip(2), ip(3)]),
                Err(std::io::Error::other("SERVFAIL")),
                Ok(vec![]),
                Ok(vec![ip(1), ip(2), ip(3), ip(3)]),
            ]
            .into(),
        ));
        let durations =
            prometheus::HistogramVec::new(prometheus::HistogramOpts::new("t", "t"), &["method"])
                .unwrap();
        let failures = prometheus::IntCounter::new("f", "f").unwrap();
        let pool = Pool::new(
            &[
                "http://10.9.9.9:50051".into(),
                "http://mp.test:50051".into(),
            ],
            "owner",
            &durations,
            None,
        )
        .unwrap()
        .with_resolver(Arc::new(script))
        .with_dns_failures(failures.clone());
        assert!(pool.discovers());
        let urls = |nodes: Vec<Node>| -> Vec<String> {
            nodes.iter().map(|n| n.endpoint().to_string()).collect()
        };
        let offered = |pool: &Pool| urls(pool.candidates(None));
        assert_eq!(
            urls(pool.refresh().await),
            ["http://10.0.0.1:50051", "http://10.0.0.2:50051"]
        );
        assert_eq!(pool.nodes().len(), 3, "the static node and two discovered");
        // 10.0.0.1 leaves the answer: retired (no new calls), not forgotten.
        assert_eq!(urls(pool.refresh().await), ["http://10.0.0.3:50051"]);
        assert_eq!(pool.nodes().len(), 4);
        assert!(!offered(&pool).contains(&"http://10.0.0.1:50051".to_owned()));
        assert!(
            pool.node(&"http://10.0.0.1:50051".into())
                .unwrap()
                .health()
                .retired
        );
        // A failed and an empty answer keep everything as it was.
        for _ in 0..2 {
            assert!(pool.refresh().await.is_empty());
            assert_eq!(offered(&pool).len(), 3);
        }
        assert_eq!(failures.get(), 2);
        // The address comes back (duplicates in an answer count once).
        assert!(pool.refresh().await.is_empty());
        assert_eq!(offered(&pool).len(), 4);
    }
}

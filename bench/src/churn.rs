//! Call churn during a measurement (`--churn R`): while the measured calls carry traffic, a
//! thread of its own sets up R further calls per second through the relay's control protocol
//! (ours: allocate and update both legs over gRPC; rtpengine: ng offer and answer) and
//! releases each one second later (gRPC release, ng delete). The churned calls carry no
//! media; they show whether call setup on the control path disturbs the media of live calls
//! (compare the latency and loss columns with and without churn) and how long a setup takes
//! while the relay is busy.
//!
//! The thread has its own connection (and, for gRPC, its own runtime): the benchmark's
//! runtime is blocked by the busy-polling generator while a point runs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use proto::v1 as pb;
use proto::v1::media_proxy_client::MediaProxyClient;

use crate::ng::NgClient;

/// How long each churned call lives before it is released.
const LIFETIME: Duration = Duration::from_secs(1);

/// Where the churn thread reaches the relay's control protocol.
pub(crate) enum Endpoint {
    /// Our gRPC contract at this URL.
    Grpc(String),
    /// rtpengine's ng port at this address.
    Ng(String),
}

/// What the churn did while it ran.
pub(crate) struct Figures {
    /// Setup time of every call set up (both legs, as for the measured calls).
    pub(crate) setups: Vec<Duration>,
    /// Setups and releases that failed.
    pub(crate) failures: u64,
    /// What the first failure said.
    pub(crate) first_error: Option<String>,
}

impl Figures {
    fn failed(&mut self, what: &str, call_id: &str, error: &anyhow::Error) {
        self.failures += 1;
        self.first_error
            .get_or_insert_with(|| format!("{what} of {call_id}: {error:#}"));
    }
}

/// A running churn thread.
pub(crate) struct Churn {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<Figures>>,
}

impl Churn {
    /// Starts churning `rate` calls per second, their media pointed at the phone ports
    /// `phones` (caller side, callee side).
    pub(crate) fn start(endpoint: Endpoint, rate: u32, phones: [u16; 2]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("churn".into())
            .spawn(move || run(endpoint, rate, phones, &stopped))
            .expect("spawn the churn thread");
        Self { stop, thread }
    }

    /// Stops the churn, releases the calls still up and returns the figures.
    pub(crate) fn finish(self) -> anyhow::Result<Figures> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the churn thread panicked"))?
    }
}

/// The control connection of the churn thread.
enum Client {
    Grpc(
        Box<tokio::runtime::Runtime>,
        MediaProxyClient<tonic::transport::Channel>,
    ),
    Ng(NgClient),
}

impl Client {
    fn connect(endpoint: Endpoint) -> anyhow::Result<Self> {
        Ok(match endpoint {
            Endpoint::Grpc(url) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let client = runtime
                    .block_on(MediaProxyClient::connect(url))
                    .context("churn: connect to the proxy")?;
                Self::Grpc(Box::new(runtime), client)
            }
            Endpoint::Ng(address) => Self::Ng(NgClient::connect(&address)?),
        })
    }

    fn set_up(&mut self, call_id: &str, phones: [u16; 2]) -> anyhow::Result<()> {
        match self {
            Self::Grpc(runtime, client) => {
                runtime.block_on(crate::grpc_call(
                    client,
                    call_id,
                    std::net::Ipv4Addr::LOCALHOST,
                    phones,
                ))?;
            }
            Self::Ng(client) => {
                // Churned calls carry no media: their phones are said to be on loopback.
                crate::ng_call(client, call_id, &crate::netns::Network::default(), phones)?;
            }
        }
        Ok(())
    }

    fn release(&mut self, call_id: &str) -> anyhow::Result<()> {
        match self {
            Self::Grpc(runtime, client) => {
                runtime.block_on(client.release(pb::ReleaseRequest {
                    call_id: call_id.into(),
                    reason: "churn".into(),
                }))?;
            }
            Self::Ng(client) => {
                client.request(&[
                    ("command", "delete"),
                    ("call-id", call_id),
                    ("from-tag", "caller"),
                ])?;
            }
        }
        Ok(())
    }
}

fn run(
    endpoint: Endpoint,
    rate: u32,
    phones: [u16; 2],
    stop: &AtomicBool,
) -> anyhow::Result<Figures> {
    let mut client = Client::connect(endpoint)?;
    let interval = Duration::from_secs(1) / rate.max(1);
    let mut figures = Figures {
        setups: Vec::new(),
        failures: 0,
        first_error: None,
    };
    let mut live: VecDeque<(Instant, String)> = VecDeque::new();
    let mut next = Instant::now();
    let mut count = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(10)));
            continue;
        }
        // A setup slower than the interval delays the next ones; it never makes a burst.
        next = (next + interval).max(now);
        while let Some((since, _)) = live.front()
            && now.duration_since(*since) >= LIFETIME
        {
            let (_, call_id) = live.pop_front().expect("front exists");
            if let Err(error) = client.release(&call_id) {
                figures.failed("release", &call_id, &error);
            }
        }
        let call_id = format!("churn-{count}");
        count += 1;
        let began = Instant::now();
        match client.set_up(&call_id, phones) {
            Ok(()) => {
                figures.setups.push(began.elapsed());
                live.push_back((now, call_id));
            }
            Err(error) => figures.failed("setup", &call_id, &error),
        }
    }
    for (_, call_id) in live {
        if let Err(error) = client.release(&call_id) {
            figures.failed("release", &call_id, &error);
        }
    }
    Ok(figures)
}

//! Per-client request budgets of the gRPC control plane.
//!
//! A client is its certificate's common name under mutual TLS, else the IP address it
//! connects from. Each has two token buckets holding one second's worth: every request of the
//! media proxy service takes from the first, every `Allocate` from the second too (allocating
//! opens sockets; everything else is bookkeeping). A request past its budget is refused
//! `RESOURCE_EXHAUSTED` at once, so a client gone wrong (or a stranger on an exposed control
//! port) cannot take the node's control thread from the others; signaling answers such a
//! refusal of an `Allocate` by trying its next node. Health checks are a separate service and
//! never limited.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// Requests per second one client may make; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientRates {
    /// Any request of the media proxy service.
    pub(crate) requests: Option<NonZeroU32>,
    /// `Allocate` requests (a call takes two, one per leg).
    pub(crate) allocations: Option<NonZeroU32>,
}

impl ClientRates {
    /// 20 000 requests and 4 000 allocations per second: about three and two times what one
    /// signaling instance asks at 1 000 calls/s (two allocations, one or two updates, a
    /// release per call, and its lease renewals).
    pub(crate) const DEFAULT: Self = Self {
        requests: NonZeroU32::new(20_000),
        allocations: NonZeroU32::new(4_000),
    };
}

/// What a request costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Charge {
    Request,
    Allocation,
}

impl Charge {
    fn label(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Allocation => "allocation",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Self::Request => "--grpc-rate",
            Self::Allocation => "--allocate-rate",
        }
    }
}

/// A bucket of `rate` tokens at most, refilled continuously at `rate` per second.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn full(rate: NonZeroU32, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate.get()),
            refilled: now,
        }
    }

    /// Takes one token if there is one.
    fn take(&mut self, rate: NonZeroU32, now: Instant) -> bool {
        let rate = f64::from(rate.get());
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Budget {
    requests: Option<Bucket>,
    allocations: Option<Bucket>,
    /// Last request; a client quiet for a second has full buckets and can be forgotten.
    seen: Instant,
    /// When a refusal of this client was last logged.
    logged: Option<Instant>,
}

/// Clients remembered at once; past it the quiet ones are forgotten, and if none is quiet
/// the newcomers share one budget (a client set this large is an attack, not a fleet).
const CLIENTS_KEPT: usize = 4096;
/// A refused client is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);
const SHARED: &str = "(others)";

/// The budgets of every client, shared by the gRPC interceptor and the `Allocate` handler.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rates: ClientRates,
    clients: Mutex<HashMap<String, Budget>>,
    metrics: Arc<Metrics>,
}

/// A request refused for its client's rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limited {
    pub(crate) message: String,
}

impl RateLimiter {
    pub(crate) fn new(rates: ClientRates, metrics: Arc<Metrics>) -> Self {
        Self {
            rates,
            clients: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Charges `client` one request of kind `charge`; refused when its bucket is empty.
    pub(crate) fn charge(&self, client: &str, charge: Charge, now: Instant) -> Result<(), Limited> {
        let rate = match charge {
            Charge::Request => self.rates.requests,
            Charge::Allocation => self.rates.allocations,
        };
        let Some(rate) = rate else {
            return Ok(());
        };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let known = clients.contains_key(client);
        if !known && clients.len() >= CLIENTS_KEPT {
            clients.retain(|_, b| now.saturating_duration_since(b.seen) < Duration::from_secs(1));
        }
        let key = if known || clients.len() < CLIENTS_KEPT {
            client
        } else {
            SHARED
        };
        // A known client's request allocates nothing (the common case, on every request).
        if !clients.contains_key(key) {
            clients.insert(
                key.to_owned(),
                Budget {
                    requests: None,
                    allocations: None,
                    seen: now,
                    logged: None,
                },
            );
        }
        let Some(budget) = clients.get_mut(key) else {
            return Ok(());
        };
        budget.seen = now;
        let bucket = match charge {
            Charge::Request => &mut budget.requests,
            Charge::Allocation => &mut budget.allocations,
        };
        if bucket
            .get_or_insert_with(|| Bucket::full(rate, now))
            .take(rate, now)
        {
            return Ok(());
        }
        self.metrics
            .grpc_rate_limited
            .with_label_values(&[charge.label()])
            .inc();
        let message = format!(
            "client {client} is past its {} of {rate} per second ({}); retry later",
            match charge {
                Charge::Request => "requests",
                Charge::Allocation => "allocations",
            },
            charge.flag(),
        );
        if budget
            .logged
            .is_none_or(|at| now.saturating_duration_since(at) >= LOG_EVERY)
        {
            budget.logged = Some(now);
            tracing::warn!(%client, kind = charge.label(), %rate, "gRPC client over its rate: refusing requests (logged once a minute)");
        }
        Err(Limited { message })
    }

    /// Clients remembered now.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(requests: u32, allocations: u32) -> RateLimiter {
        RateLimiter::new(
            ClientRates {
                requests: NonZeroU32::new(requests),
                allocations: NonZeroU32::new(allocations),
            },
            Arc::new(Metrics::new("t")),
        )
    }

    #[test]
    fn a_client_gets_a_seconds_worth_at_once_then_its_rate() {
        let limiter = limiter(10, 0);
        let start = Instant::now();
        for _ in 0..10 {
            limiter.charge("a", Charge::Request, start).unwrap();
        }
        let refused = limiter.charge("a", Charge::Request, start).unwrap_err();
        assert!(
            refused
                .message
                .contains("client a is past its requests of 10 per second")
                && refused.message.contains("--grpc-rate"),
            "{refused:?}"
        );
        // Another client has its own budget; allocations are unlimited here.
        limiter.charge("b", Charge::Request, start).unwrap();
        limiter.charge("a", Charge::Allocation, start).unwrap();
        // A tenth of a second refills one request.
        let later = start + Duration::from_millis(100);
        limiter.charge("a", Charge::Request, later).unwrap();
        assert!(limiter.charge("a", Charge::Request, later).is_err());
        // A long pause refills no more than one second's worth.
        let much_later = start + Duration::from_secs(60);
        for _ in 0..10 {
            limiter.charge("a", Charge::Request, much_later).unwrap();
        }
        assert!(limiter.charge("a", Charge::Request, much_later).is_err());
        let limited = &limiter.metrics.grpc_rate_limited;
        assert_eq!(limited.with_label_values(&["request"]).get(), 3);
    }

    #[test]
    fn allocations_have_their_own_budget() {
        let limiter = limiter(0, 2);
        let now = Instant::now();
        limiter.charge("a", Charge::Allocation, now).unwrap();
        limiter.charge("a", Charge::Allocation, now).unwrap();
        let refused = limiter.charge("a", Charge::Allocation, now).unwrap_err();
        assert!(refused.message.contains("--allocate-rate"), "{refused:?}");
        limiter.charge("a", Charge::Request, now).unwrap();
    }

    #[test]
    fn a_swarm_of_clients_is_bounded_and_shares_one_budget() {
        let limiter = limiter(1, 0);
        let now = Instant::now();
        for n in 0..CLIENTS_KEPT + 100 {
            let _ = limiter.charge(
                &format!("10.0.{}.{}", n / 256, n % 256),
                Charge::Request,
                now,
            );
        }
        assert_eq!(
            limiter.clients(),
            CLIENTS_KEPT + 1,
            "the kept ones and the shared budget"
        );
        // Quiet for a second, they are forgotten to make room for a newcomer.
        let later = now + Duration::from_secs(2);
        limiter.charge("newcomer", Charge::Request, later).unwrap();
        assert_eq!(limiter.clients(), 1);
    }
}

//! `testkit`: what the tests of every crate share, written once.
//!
//! It depends on no crate of ours, so any crate's unit tests, integration tests and
//! benchmarks' tests can use it (as a dev-dependency) without a cycle.
//!
//! # Layout
//!
//! - [`wait`]: poll until a condition holds, in threads ([`eventually`]) or async
//!   ([`eventually_async`]).
//! - [`metrics`]: one sample out of a Prometheus text exposition.
//! - [`pki`]: a test certificate authority and the certificates it signs, in memory or as PEM
//!   files.
//! - [`scratch`]: a folder per test, kept when the test fails.
//! - [`netns`]: hosts in network namespaces on a bridge, for tests across a network.
//! - [`ports`]: blocks of free ports handed out across test processes, so no test file needs
//!   a hand-numbered port plan.
#![forbid(unsafe_code)]

pub mod metrics;
pub mod netns;
pub mod pki;
pub mod ports;
pub mod scratch;
pub mod wait;

pub use metrics::metric_value;
pub use pki::{Ca, Pki};
pub use ports::PortBlock;
pub use scratch::Scratch;
pub use wait::{eventually, eventually_async};

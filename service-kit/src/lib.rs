//! `service-kit`: what both services use, so that neither lends the other its internals.
//!
//! `signaling` and `mediaproxy` each depend on this crate and on `proto` (the contract);
//! `signaling` depends on `mediaproxy` only to embed a proxy in its own process.
//!
//! # Layout
//!
//! - [`config`]: durations written for people, networks (`Cidr`), errors that name the option, TOML tables split
//!   between option structs, PEM files read and watched, the host's name.
//! - [`logging`]: text or JSON log lines.
//! - [`metrics`]: registering metrics, the `/metrics` and `/healthz` server, process series.
//! - [`clock`]: monotonic instants projected onto the wall clock, following its steps.
//! - [`thread`]: control threads give way to the relay's workers.
#![forbid(unsafe_code)]

pub mod clock;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod thread;

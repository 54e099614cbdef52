//! The media proxy this process runs itself when no `--mediaproxy` is given: the one-command
//! product. It is the only place signaling uses the `mediaproxy` crate (cargo feature
//! `embedded`, on by default); a build without the feature needs `--mediaproxy`, and proves
//! that nothing else in signaling leans on the proxy's code.

#[cfg(feature = "embedded")]
use std::time::Duration;

#[cfg(feature = "embedded")]
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::StartError;
use crate::config::Config;

/// The embedded media proxy, bound and not yet serving.
#[cfg(feature = "embedded")]
pub(super) struct Embedded(mediaproxy::MediaProxy);

/// A build without the feature has none (its configuration insists on `--mediaproxy`).
#[cfg(not(feature = "embedded"))]
pub(super) enum Embedded {}

impl Embedded {
    /// Binds the proxy's gRPC and metrics listeners on loopback ports of their own; returns
    /// it with the gRPC URL signaling reaches it at.
    #[cfg(feature = "embedded")]
    pub(super) async fn bind(config: &Config) -> Result<(Self, String), StartError> {
        let listener = || async {
            TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| StartError::Embedded(e.to_string()))
        };
        let (grpc, metrics) = (listener().await?, listener().await?);
        let proxy = mediaproxy::MediaProxy::with_listeners(
            "embedded",
            &config.media,
            Duration::from_secs(5),
            grpc,
            metrics,
        )
        .map_err(|e| StartError::Embedded(e.to_string()))?;
        let url = format!("http://{}", proxy.grpc_addr());
        Ok((Self(proxy), url))
    }

    #[cfg(not(feature = "embedded"))]
    pub(super) async fn bind(_config: &Config) -> Result<(Self, String), StartError> {
        Err(StartError::Embedded(
            "this build has none (cargo feature `embedded`): give --mediaproxy".into(),
        ))
    }

    /// The proxy's metrics, served on signaling's own `/metrics`.
    pub(super) fn registry(&self) -> prometheus::Registry {
        #[cfg(feature = "embedded")]
        return self.0.registry();
        #[cfg(not(feature = "embedded"))]
        match *self {}
    }

    /// Serves until `stop`, then drains like a separate proxy.
    pub(super) async fn serve(self, stop: CancellationToken) -> Result<(), String> {
        #[cfg(feature = "embedded")]
        return self
            .0
            .serve(stop.cancelled_owned())
            .await
            .map_err(|e| e.to_string());
        #[cfg(not(feature = "embedded"))]
        {
            let _ = stop;
            match self {}
        }
    }
}

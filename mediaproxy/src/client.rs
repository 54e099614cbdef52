//! How the operator tools (`mpctl`, `mp-analyser`) reach a media proxy: its gRPC URL and, for
//! `https://`, the mutual-TLS files, as command-line options shared by both.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use proto::v1::media_proxy_client::MediaProxyClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The connection options of an operator tool.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// gRPC URL of the media proxy.
    #[arg(
        long,
        env = "MPCTL_GRPC",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub grpc: String,
    /// For an https:// URL (mutual TLS): PEM certificate of the CA that signed the proxy's.
    #[arg(long, env = "MPCTL_CA", value_name = "FILE", global = true)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate (its common name is whose calls the tool sees and may act on).
    #[arg(long, env = "MPCTL_CERT", value_name = "FILE", global = true)]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, env = "MPCTL_KEY", value_name = "FILE", global = true)]
    pub key: Option<PathBuf>,
    /// The name the proxy's certificate must carry, when it is not the URL's host (a probe
    /// dialling 127.0.0.1 of a node whose certificate names the fleet's DNS name).
    #[arg(long, env = "MPCTL_TLS_NAME", value_name = "NAME", global = true)]
    pub tls_name: Option<String>,
}

impl Connection {
    /// A connected client; the error names the option at fault or the unreachable URL.
    pub async fn connect(&self) -> Result<MediaProxyClient<Channel>, String> {
        Ok(MediaProxyClient::new(self.channel().await?))
    }

    /// A connected channel, for any of the proxy's services (health, reflection).
    pub async fn channel(&self) -> Result<Channel, String> {
        let url = &self.grpc;
        let mut endpoint =
            Endpoint::from_shared(url.clone()).map_err(|e| format!("--grpc {url}: {e}"))?;
        if url.starts_with("https://") {
            let read = |flag: &str, path: &Option<PathBuf>| {
                let path = path
                    .as_ref()
                    .ok_or_else(|| format!("{url} is https://: --{flag} is needed"))?;
                std::fs::read(path).map_err(|e| format!("--{flag} {}: {e}", path.display()))
            };
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read("ca", &self.ca)?))
                .identity(Identity::from_pem(
                    read("cert", &self.cert)?,
                    read("key", &self.key)?,
                ));
            if let Some(name) = &self.tls_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("--grpc {url}: TLS: {e}"))?;
        }
        endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot reach the media proxy at {url}: {e}"))
    }
}

/// A gRPC status as the tools print it.
pub fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Runs a tool's work on a single-threaded runtime; an error is printed as `NAME: error` and
/// makes the exit status 1.
pub fn run_tool(name: &str, work: impl Future<Output = Result<(), String>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{name}: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error}");
            ExitCode::FAILURE
        }
    }
}

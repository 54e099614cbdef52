//! The `mediaproxy` binary: parses the configuration and runs [`mediaproxy::server`].
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use mediaproxy::config::{Cli, Config};
use mediaproxy::server::MediaProxy;

fn main() -> ExitCode {
    let config = match Config::load(Cli::parse()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("mediaproxy: {error}");
            return ExitCode::from(2);
        }
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&config.log) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("mediaproxy: --log: {error}");
            return ExitCode::from(2);
        }
    };
    service_kit::logging::init(filter, config.log_format);
    // Every call holds four sockets per media line; the default soft limit (often 1024)
    // would cap a node at a few hundred calls.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open file limit"),
    }
    if let Some(warning) = config.media.advertise_warning() {
        tracing::warn!("{warning}");
    }
    if let Some(problem) = config.media.recordings_problem() {
        tracing::warn!("{problem}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start({
            // The relay workers are spawned later from this (main) thread and keep its priority.
            let nice = config.media.control_nice;
            move || service_kit::thread::lower_control_thread(nice)
        })
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mediaproxy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("mediaproxy: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let proxy = MediaProxy::bind(&config).await?;
    tracing::info!(
        node_id = %config.node_id,
        grpc = %proxy.grpc_addr(),
        metrics = %proxy.metrics_addr(),
        media_ip = %config.media.media_ip,
        advertise_ip = %config.media.advertise_ip,
        ports = %config.media.ports,
        workers = config.media.workers,
        "media proxy listening"
    );
    proxy.serve(shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

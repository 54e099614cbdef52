//! The `signaling` binary: parses the configuration and runs [`signaling::driver`].
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use signaling::config::{Cli, Command, Config};
use signaling::driver::Signaling;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Export(args)) = &cli.command {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        return match signaling::export::run(args, &mut out) {
            Ok(rows) => {
                eprintln!("signaling: exported {rows} rows");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("signaling export: {error}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(Command::Health(args)) = &cli.command {
        return match signaling::health::check(args) {
            Ok(answer) => {
                println!("{answer}");
                ExitCode::SUCCESS
            }
            Err(problem) => {
                eprintln!("signaling health: {problem}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match Config::load(cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("signaling: {error}");
            return ExitCode::from(2);
        }
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&config.log) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("signaling: --log: {error}");
            return ExitCode::from(2);
        }
    };
    service_kit::logging::init(filter, config.log_format);
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(%error, "cannot raise the open file limit");
    }
    #[cfg(feature = "embedded")]
    if config.mediaproxies.is_empty() {
        if let Some(warning) = config.media.advertise_warning() {
            tracing::warn!("{warning}");
        }
        if let Some(problem) = config.media.recordings_problem() {
            if config.record {
                // Recording every call was asked for and cannot work: refuse to start.
                eprintln!("signaling: {problem}");
                return ExitCode::from(2);
            }
            tracing::warn!("{problem}");
        }
    }
    // With an embedded proxy, SIP and the proxy's control share the host with its relay
    // workers (spawned later from this main thread): the workers come first.
    #[cfg(feature = "embedded")]
    let control_nice = if config.mediaproxies.is_empty() {
        config.media.control_nice
    } else {
        0
    };
    #[cfg(not(feature = "embedded"))]
    let control_nice = 0;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .on_thread_start(move || service_kit::thread::lower_control_thread(control_nice))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("signaling: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("signaling: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let mode = config.media_mode.as_str();
    let service = Signaling::bind(config).await?;
    tracing::info!(
        sip = %service.sip_addr(),
        metrics = %service.metrics_addr(),
        mediaproxy = %service.mediaproxy_url(),
        media_mode = mode,
        "signaling listening"
    );
    service.serve(shutdown_signal()).await
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

//! Log output of both services: human-readable lines, or one JSON object per line for log
//! collectors (`--log-format json`), with the same fields either way.

use serde::Deserialize;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-12-02T10:00:00Z  INFO target: message key=value`.
    #[default]
    Text,
    /// `{"timestamp":...,"level":"INFO","fields":{"message":...,"key":...},"target":...}`.
    Json,
}

/// Sends the process's log lines to standard output, filtered by `filter`, in `format`.
pub fn init(filter: tracing_subscriber::EnvFilter, format: LogFormat) {
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

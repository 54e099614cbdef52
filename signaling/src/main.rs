//! The `signaling` binary. Not implemented yet; it says so and exits non-zero.

fn main() -> std::process::ExitCode {
    eprintln!(
        "signaling: the SIP service is not implemented in this build yet; run `mediaproxy` for the media relay"
    );
    std::process::ExitCode::from(2)
}

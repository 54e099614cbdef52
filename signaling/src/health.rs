//! `signaling health`: asks a running signaling's `/healthz` whether it takes calls, for
//! container health checks and probes (the runtime image has no shell and no curl). Exit
//! status 0 when it answers 200, 1 otherwise (draining answers 503).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Arguments of `signaling health`.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// The service's --metrics address (an unspecified address means this host's loopback).
    #[arg(
        long,
        env = "SIGNALING_METRICS",
        default_value = "127.0.0.1:9465",
        value_name = "ADDR"
    )]
    pub metrics: SocketAddr,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
}

/// Checks `/healthz`; `Ok` with the status line when it is 200, `Err` with what went wrong.
pub fn check(args: &HealthArgs) -> Result<String, String> {
    let mut address = args.metrics;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let timeout = Duration::from_secs(args.timeout.max(1));
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .map_err(|e| format!("cannot reach {address}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("{address}: {e}"))?;
    let mut response = String::new();
    stream
        .take(4096)
        .read_to_string(&mut response)
        .map_err(|e| format!("{address}: {e}"))?;
    let status = response.lines().next().unwrap_or_default().to_owned();
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body.trim());
    match status.split_whitespace().nth(1) {
        Some("200") => Ok(format!("{address}: {body}")),
        Some(code) => Err(format!("{address}: {code} {body}")),
        None => Err(format!("{address}: not an HTTP answer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(metrics: SocketAddr) -> HealthArgs {
        HealthArgs {
            metrics,
            timeout: 1,
        }
    }

    /// One HTTP answer on a fresh loopback listener; returns its address.
    fn answering(response: &'static str) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 256];
            let n = stream.read(&mut request).unwrap();
            assert!(request[..n].starts_with(b"GET /healthz HTTP/1.0\r\n"));
            stream.write_all(response.as_bytes()).unwrap();
        });
        address
    }

    #[test]
    fn ok_draining_and_unreachable_are_told_apart() {
        let ok = answering("HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nok\n");
        assert_eq!(check(&args(ok)), Ok(format!("{ok}: ok")));
        let draining = answering("HTTP/1.0 503 Service Unavailable\r\n\r\ndraining\n");
        assert_eq!(
            check(&args(draining)),
            Err(format!("{draining}: 503 draining"))
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        assert!(
            check(&args(gone))
                .unwrap_err()
                .starts_with(&format!("cannot reach {gone}"))
        );
    }

    #[test]
    fn an_unspecified_address_is_asked_on_loopback() {
        let ok = answering("HTTP/1.0 200 OK\r\n\r\nok\n");
        let unspecified: SocketAddr = format!("0.0.0.0:{}", ok.port()).parse().unwrap();
        assert_eq!(check(&args(unspecified)), Ok(format!("{ok}: ok")));
    }
}

//! Ports for tests without a hand-numbered plan.
//!
//! nextest runs every test in a process of its own, many at once, and a test that starts a
//! service needs ports known before it starts (SIP, relay ranges, SIPp's media). Binding to
//! port 0 gives one port, not a range, and the kernel may give the same port to a client
//! socket a moment later. So blocks come from three ranges below the kernel's ephemeral ports
//! (32768 up), clear of the fixed ports this project's services and peers use (SIP 5060,
//! PostgreSQL 5432, metrics 9464/9465, Prometheus 9090) and of the tests that still number
//! their ports (10000-25999), handed out round robin under a file
//! lock shared by every test process of the machine, and each port of a block is checked
//! free (UDP and TCP) before the block is given.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::ops::Range;

/// Where blocks come from.
const SPANS: [Range<u16>; 3] = [2000..5000, 6000..9000, 26000..30000];
/// The lock and the round-robin cursor, shared by every test process of the machine.
const STATE: &str = "testkit-ports";

/// A block of consecutive ports, the first one even (an RTP port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortBlock {
    start: u16,
    len: u16,
}

impl PortBlock {
    /// `len` consecutive ports that were free a moment ago and that no other test of this
    /// machine was given since the cursor last wrapped.
    pub fn take(len: u16) -> Self {
        assert!(len > 0 && len <= 1000, "a block of 1 to 1000 ports");
        let path = std::env::temp_dir().join(STATE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        file.lock().expect("the port lock");
        let mut cursor = read_cursor(&mut file);
        let capacity: u32 = SPANS.iter().map(|s| u32::from(s.end - s.start)).sum();
        let mut skipped = 0u32;
        let block = loop {
            assert!(
                skipped <= capacity,
                "no block of {len} free ports in {SPANS:?}"
            );
            let start = place(cursor, len);
            match (start..start + len).find(|port| !is_free(*port)) {
                None => break Self { start, len },
                Some(busy) => {
                    skipped += u32::from(busy + 1 - start);
                    cursor = busy + 1;
                }
            }
        };
        write_cursor(&mut file, block.start + len);
        block
    }

    /// The first port (even).
    pub fn start(&self) -> u16 {
        self.start
    }

    /// The `index`-th port of the block.
    pub fn port(&self, index: u16) -> u16 {
        assert!(index < self.len, "port {index} of a block of {}", self.len);
        self.start + index
    }

    pub fn range(&self) -> Range<u16> {
        self.start..self.start + self.len
    }

    /// `FIRST-LAST`, as `--ports` takes a range.
    pub fn range_arg(&self) -> String {
        format!("{}-{}", self.start, self.start + self.len - 1)
    }
}

/// The even start of a block of `len` at or after `cursor`, inside one span (wrapping to the
/// first span past the last).
fn place(cursor: u16, len: u16) -> u16 {
    let mut at = cursor + cursor % 2;
    for _ in 0..=SPANS.len() {
        for span in &SPANS {
            let start = at.max(span.start);
            let start = start + start % 2;
            if start < span.end && span.end - start >= len {
                return start;
            }
        }
        at = SPANS[0].start;
    }
    panic!("a block of {len} ports fits no span of {SPANS:?}");
}

fn is_free(port: u16) -> bool {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn read_cursor(file: &mut File) -> u16 {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    text.trim().parse().unwrap_or(SPANS[0].start)
}

fn write_cursor(file: &mut File, cursor: u16) {
    file.set_len(0).expect("the cursor file truncated");
    file.seek(SeekFrom::Start(0))
        .expect("the cursor file rewound");
    write!(file, "{cursor}").expect("the cursor written");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_even_inside_a_span_and_wrap() {
        assert_eq!(place(2000, 20), 2000);
        assert_eq!(place(2001, 20), 2002);
        assert_eq!(place(4990, 20), 6000, "does not straddle the gap");
        assert_eq!(place(8990, 20), 26000, "on to the next span");
        assert_eq!(place(29990, 20), 2000, "wraps past the last span");
        assert_eq!(place(5500, 4), 6000);
    }

    #[test]
    fn blocks_taken_one_after_another_do_not_overlap_and_are_free() {
        let first = PortBlock::take(10);
        let second = PortBlock::take(10);
        assert_eq!(first.start() % 2, 0);
        assert_eq!(first.range_arg().split('-').count(), 2);
        let overlap = first.range().any(|p| second.range().contains(&p));
        assert!(
            !overlap || second.start() < first.start(),
            "{first:?} {second:?}"
        );
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, second.port(3)));
        assert!(socket.is_ok(), "handed out free");
    }
}

//! A pcap file of a call's packets (RTP and RTCP of both legs, as received), for
//! troubleshooting with Wireshark or tshark.
//!
//! Link type 101 (raw IP): each record is an IPv4 or IPv6 header and a UDP header made up
//! from the packet's source and the proxy port it arrived on, then the datagram. UDP
//! checksums are left 0 (allowed for IPv4; Wireshark does not check them by default).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

const LINKTYPE_RAW: u32 = 101;
const SNAPLEN: u32 = 65_535;

/// A pcap file being written.
#[derive(Debug)]
pub(crate) struct PcapWriter {
    file: BufWriter<File>,
    bytes: u64,
}

impl PcapWriter {
    pub(crate) fn create(path: &Path) -> io::Result<Self> {
        let file = File::options().write(true).create_new(true).open(path)?;
        let mut writer = Self {
            file: BufWriter::with_capacity(64 * 1024, file),
            bytes: 0,
        };
        let mut header = Vec::with_capacity(24);
        header.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        header.extend_from_slice(&2u16.to_le_bytes());
        header.extend_from_slice(&4u16.to_le_bytes());
        header.extend_from_slice(&0i32.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&SNAPLEN.to_le_bytes());
        header.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
        writer.file.write_all(&header)?;
        writer.bytes = header.len() as u64;
        Ok(writer)
    }

    /// Appends one datagram from `source` to `destination`, received at `unix_us`.
    pub(crate) fn write(
        &mut self,
        unix_us: u64,
        source: SocketAddr,
        destination: SocketAddr,
        datagram: &[u8],
    ) -> io::Result<()> {
        let udp_len = 8 + datagram.len();
        let mut ip = Vec::with_capacity(48);
        match (source.ip(), destination.ip()) {
            (IpAddr::V4(from), to) => {
                let to = match to {
                    IpAddr::V4(to) => to,
                    IpAddr::V6(to) => to
                        .to_ipv4_mapped()
                        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                };
                let total = (20 + udp_len) as u16;
                ip.extend_from_slice(&[0x45, 0]);
                ip.extend_from_slice(&total.to_be_bytes());
                ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
                ip.extend_from_slice(&from.octets());
                ip.extend_from_slice(&to.octets());
                let checksum = ipv4_checksum(&ip);
                ip[10..12].copy_from_slice(&checksum.to_be_bytes());
            }
            (IpAddr::V6(from), to) => {
                let to = match to {
                    IpAddr::V6(to) => to,
                    IpAddr::V4(to) => to.to_ipv6_mapped(),
                };
                ip.extend_from_slice(&[0x60, 0, 0, 0]);
                ip.extend_from_slice(&(udp_len as u16).to_be_bytes());
                ip.extend_from_slice(&[17, 64]);
                ip.extend_from_slice(&from.octets());
                ip.extend_from_slice(&to.octets());
            }
        }
        ip.extend_from_slice(&source.port().to_be_bytes());
        ip.extend_from_slice(&destination.port().to_be_bytes());
        ip.extend_from_slice(&(udp_len as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0]);
        let captured = (ip.len() + datagram.len()) as u32;
        let mut record = Vec::with_capacity(16);
        record.extend_from_slice(&((unix_us / 1_000_000) as u32).to_le_bytes());
        record.extend_from_slice(&((unix_us % 1_000_000) as u32).to_le_bytes());
        record.extend_from_slice(&captured.to_le_bytes());
        record.extend_from_slice(&captured.to_le_bytes());
        self.file.write_all(&record)?;
        self.file.write_all(&ip)?;
        self.file.write_all(datagram)?;
        self.bytes += 16 + u64::from(captured);
        Ok(())
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    pub(crate) fn finish(mut self) -> io::Result<u64> {
        self.file.flush()?;
        self.file.get_ref().sync_data()?;
        Ok(self.bytes)
    }
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_ip_and_udp_headers_around_the_datagram() {
        let dir = std::env::temp_dir().join(format!("pcap-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.pcap");
        let _ = std::fs::remove_file(&path);
        let mut pcap = PcapWriter::create(&path).unwrap();
        let from: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let to: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        pcap.write(1_700_000_000_250_000, from, to, &[0x80, 0, 1, 2])
            .unwrap();
        pcap.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[0..4], &0xa1b2_c3d4u32.to_le_bytes());
        assert_eq!(&bytes[20..24], &101u32.to_le_bytes());
        let record = &bytes[24..];
        assert_eq!(&record[0..4], &1_700_000_000u32.to_le_bytes());
        assert_eq!(&record[4..8], &250_000u32.to_le_bytes());
        assert_eq!(&record[8..12], &32u32.to_le_bytes());
        let ip = &record[16..];
        assert_eq!(ip[0], 0x45);
        assert_eq!(&ip[12..16], &[192, 0, 2, 1]);
        assert_eq!(&ip[16..20], &[198, 51, 100, 7]);
        assert_eq!(ipv4_checksum(&ip[..20]), 0, "a valid header sums to 0");
        assert_eq!(&ip[20..22], &4000u16.to_be_bytes());
        assert_eq!(&ip[22..24], &40000u16.to_be_bytes());
        assert_eq!(&ip[28..], &[0x80, 0, 1, 2]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

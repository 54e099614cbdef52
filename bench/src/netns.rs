//! `--generator-netns`: the generator in a network namespace of its own, joined to the
//! relay's by a veth pair, with receive packet steering on each end. On loopback, the kernel
//! delivers a relayed packet into the phone's socket inside the relay's `sendto`, so the
//! relay pays for a delivery that a real network does on the phone's host; across veth with
//! RPS, the delivery into the generator's sockets runs on the generator's CPU and the
//! delivery into the relay's on the relay's, as a NIC's receive queues would do.
//!
//! The generator's sockets are created inside the namespace (a socket belongs to the
//! namespace it was made in) by the main thread entering it and coming back; the relay and
//! its control channel stay in the root namespace.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::Command;

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, setns};

/// Where the relay's media sockets and the phones live.
#[derive(Debug, Default)]
pub(crate) struct Network {
    /// The generator's namespace, when it has one.
    netns: Option<Netns>,
}

impl Network {
    /// Loopback for both, or the two ends of a veth pair between namespaces.
    pub(crate) fn new(
        generator_netns: bool,
        relay_cpus: &str,
        generator_cpus: &str,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            netns: generator_netns
                .then(|| Netns::create(relay_cpus, generator_cpus))
                .transpose()?,
        })
    }

    /// The address the relay binds its media sockets to.
    pub(crate) fn relay_ip(&self) -> Ipv4Addr {
        if self.netns.is_some() {
            RELAY_IP
        } else {
            Ipv4Addr::LOCALHOST
        }
    }

    /// The address the phones bind to.
    pub(crate) fn phone_ip(&self) -> Ipv4Addr {
        if self.netns.is_some() {
            PHONE_IP
        } else {
            Ipv4Addr::LOCALHOST
        }
    }

    /// Runs `make` inside the generator's namespace (or here, without one).
    pub(crate) fn in_generator<T>(
        &self,
        make: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let Some(netns) = &self.netns else {
            return make();
        };
        let home = std::fs::File::open("/proc/self/ns/net").context("this namespace")?;
        let there = std::fs::File::open(format!("/run/netns/{}", netns.name))
            .context("the generator's namespace")?;
        setns(there.as_fd(), CloneFlags::CLONE_NEWNET)
            .context("enter the generator's namespace")?;
        let made = make();
        setns(home.as_fd(), CloneFlags::CLONE_NEWNET).context("back to the root namespace")?;
        made
    }

    /// One line for the header: how packets travel.
    pub(crate) fn describe(&self) -> String {
        match &self.netns {
            None => "loopback (the relay's sends deliver into the phones' sockets on its own CPU)"
                .into(),
            Some(netns) => format!(
                "veth between namespaces ({RELAY_IP} relay, {PHONE_IP} phones in {}), receive steering to each side's CPU",
                netns.name
            ),
        }
    }
}

const RELAY_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const PHONE_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);

/// A namespace and veth pair of this run, removed when dropped.
#[derive(Debug)]
struct Netns {
    name: String,
}

impl Netns {
    fn create(relay_cpus: &str, generator_cpus: &str) -> anyhow::Result<Self> {
        let id = std::process::id();
        let netns = Self {
            name: format!("benchgen-{id}"),
        };
        let (relay_end, phone_end) = (format!("bgr{id}"), format!("bgg{id}"));
        let ip = |args: &[&str]| -> anyhow::Result<()> {
            let status = Command::new("ip")
                .args(args)
                .status()
                .context("ip (iproute2)")?;
            if !status.success() {
                bail!(
                    "ip {}: failed (--generator-netns needs root)",
                    args.join(" ")
                );
            }
            Ok(())
        };
        ip(&["netns", "add", &netns.name])?;
        ip(&[
            "link", "add", &relay_end, "type", "veth", "peer", "name", &phone_end,
        ])?;
        ip(&["link", "set", &phone_end, "netns", &netns.name])?;
        ip(&["addr", "add", &format!("{RELAY_IP}/30"), "dev", &relay_end])?;
        ip(&["link", "set", &relay_end, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", netns.name.as_str()];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("{PHONE_IP}/30"), "dev", &phone_end])?;
        inside(&["link", "set", &phone_end, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        // What arrives at each end is delivered on that side's CPU.
        steer(None, &relay_end, relay_cpus)?;
        steer(Some(&netns.name), &phone_end, generator_cpus)?;
        Ok(netns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The veth pair goes with the namespace.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Sets the RPS CPU mask of `device`'s receive queue from a CPU list ("1", "0,2", "2-3");
/// "none" leaves the kernel's choice.
fn steer(netns: Option<&str>, device: &str, cpus: &str) -> anyhow::Result<()> {
    if cpus == "none" {
        return Ok(());
    }
    let mask = cpu_mask(cpus)?;
    let path = format!("/sys/class/net/{device}/queues/rx-0/rps_cpus");
    let write = format!("echo {mask:x} > {path}");
    let status = match netns {
        // `ip netns exec` mounts the namespace's own /sys, where its device is.
        Some(name) => Command::new("ip")
            .args(["netns", "exec", name, "sh", "-c", &write])
            .status(),
        None => Command::new("sh").args(["-c", &write]).status(),
    }
    .context("set receive packet steering")?;
    if !status.success() {
        bail!("could not write {path}");
    }
    Ok(())
}

/// The bit mask of a CPU list.
fn cpu_mask(cpus: &str) -> anyhow::Result<u64> {
    let mut mask = 0u64;
    for part in cpus.split(',') {
        let (from, to) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>()?, b.trim().parse::<u32>()?),
            None => {
                let cpu = part.trim().parse::<u32>()?;
                (cpu, cpu)
            }
        };
        if to >= 64 || from > to {
            bail!("CPU list {cpus:?}: CPUs 0-63 only");
        }
        for cpu in from..=to {
            mask |= 1 << cpu;
        }
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::cpu_mask;

    #[test]
    fn cpu_lists_become_masks() {
        assert_eq!(cpu_mask("0").unwrap(), 0b1);
        assert_eq!(cpu_mask("1").unwrap(), 0b10);
        assert_eq!(cpu_mask("0,2").unwrap(), 0b101);
        assert_eq!(cpu_mask("2-4").unwrap(), 0b11100);
        assert!(cpu_mask("x").is_err());
        assert!(cpu_mask("3-1").is_err());
        assert!(cpu_mask("64").is_err());
    }
}

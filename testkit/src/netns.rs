//! Hosts for tests that need a network: each host a Linux network namespace of its own,
//! cabled by a veth pair to a bridge in a namespace of the test's, on 10.77.0.0/24. Processes
//! started on a host (`Host::command`) see only that network, so every packet between them
//! crosses a real (virtual) link that a test can cut and mend. Namespaces are named after the
//! test and the process, so tests run in parallel, and are removed when the [`Lan`] is
//! dropped, passed or not. Making them needs root and iproute2; where they cannot be made,
//! [`Lan::new`] prints `SKIPPED` with the reason and returns None.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use crate::scratch::Scratch;

/// Runs `ip` with `args`; `Err` with its message if it failed.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// One test's network: a namespace holding the bridge, and one namespace per host.
pub struct Lan {
    prefix: String,
    hosts: Vec<String>,
    /// Logs, databases and certificates of the test.
    dir: Scratch,
}

impl Lan {
    /// The bridge's namespace, or `None` (after printing why) where namespaces cannot be made.
    pub fn new(test: &str) -> Option<Self> {
        let lan = Self {
            prefix: format!("{test}-{}", std::process::id()),
            hosts: Vec::new(),
            dir: Scratch::new(&format!("lan-{test}")),
        };
        let hub = lan.hub();
        let _ = ip(&["netns", "del", &hub]);
        let made = ip(&["netns", "add", &hub])
            .and_then(|()| ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]))
            .and_then(|()| ip(&["-n", &hub, "link", "set", "br0", "up"]));
        match made {
            Ok(()) => Some(lan),
            Err(error) => {
                eprintln!(
                    "SKIPPED {test}: network namespaces cannot be made here ({error}); these \
                     tests need root and iproute2"
                );
                None
            }
        }
    }

    pub fn hub(&self) -> String {
        format!("{}-lan", self.prefix)
    }

    /// A host `name` at 10.77.0.`octet`, cabled to the bridge.
    pub fn host(&mut self, name: &str, octet: u8) -> Host {
        let (ns, hub) = (format!("{}-{name}", self.prefix), self.hub());
        let cable = format!("c{octet}");
        let _ = ip(&["netns", "del", &ns]);
        let address = format!("10.77.0.{octet}/24");
        let steps: [&[&str]; 6] = [
            &["netns", "add", &ns],
            &[
                "-n", &hub, "link", "add", &cable, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ],
            &["-n", &hub, "link", "set", &cable, "master", "br0", "up"],
            &["-n", &ns, "addr", "add", &address, "dev", "eth0"],
            &["-n", &ns, "link", "set", "eth0", "up"],
            &["-n", &ns, "link", "set", "lo", "up"],
        ];
        self.hosts.push(ns.clone());
        for step in steps {
            ip(step).unwrap_or_else(|e| panic!("host {name}: {e}"));
        }
        Host {
            name: name.to_owned(),
            ns,
            hub,
            cable,
            address: Ipv4Addr::new(10, 77, 0, octet),
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.hosts {
            let _ = ip(&["netns", "del", ns]);
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
        }
        let _ = ip(&["netns", "del", &self.hub()]);
    }
}

/// A host of the LAN.
#[derive(Clone)]
pub struct Host {
    pub name: String,
    pub ns: String,
    hub: String,
    cable: String,
    pub address: Ipv4Addr,
}

impl Host {
    /// `program` run on this host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns]).arg(program);
        command
    }

    /// Unplugs the host's cable: a network partition (its processes go on running).
    pub fn cut(&self) {
        ip(&["-n", &self.hub, "link", "set", &self.cable, "down"]).unwrap();
    }

    /// Plugs it back.
    pub fn mend(&self) {
        ip(&["-n", &self.hub, "link", "set", &self.cable, "up"]).unwrap();
    }

    /// Writes the host's `/etc/hosts` (`ip netns exec` mounts `/etc/netns/<ns>/hosts` over
    /// it for processes started afterwards). Written in place, so a process already running
    /// sees later versions too.
    pub fn hosts_file(&self, lines: &str) {
        let dir = PathBuf::from(format!("/etc/netns/{}", self.ns));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), format!("127.0.0.1 localhost\n{lines}")).unwrap();
    }
}

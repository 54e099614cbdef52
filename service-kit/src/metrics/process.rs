//! Metrics of the process rather than of one proxy instance: the standard `process_*` series
//! every Prometheus client library exports (CPU, memory, descriptors, threads, start time) and
//! `<service>_build_info`. A process serves them once, on its own `/metrics`, whatever number
//! of proxy instances it holds (signaling with its embedded proxy serves one set).

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge, IntGaugeVec, Opts, Registry};

/// A registry holding the process collector and `<service>_build_info{version}` (value 1).
pub fn registry(service: &str, version: &str) -> Registry {
    let registry = Registry::new();
    registry
        .register(Box::new(ProcessCollector::new()))
        .expect("process metrics are registered once");
    let info = IntGaugeVec::new(
        Opts::new(
            format!("{service}_build_info"),
            format!("Always 1; the labels say which build of {service} runs."),
        ),
        &["version"],
    )
    .expect("valid metric");
    info.with_label_values(&[version]).set(1);
    registry
        .register(Box::new(info))
        .expect("build_info is registered once");
    registry
}

/// The `process_*` series, read from `/proc/self` at each scrape.
struct ProcessCollector {
    cpu: Counter,
    open_fds: IntGauge,
    max_fds: IntGauge,
    virtual_memory: IntGauge,
    resident_memory: IntGauge,
    start_time: Gauge,
    threads: IntGauge,
    /// Serialises scrapes: the CPU counter advances by the difference since the last one.
    scrape: Mutex<()>,
}

impl ProcessCollector {
    fn new() -> Self {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let collector = Self {
            cpu: Counter::new(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            )
            .expect("valid metric"),
            open_fds: gauge("process_open_fds", "Number of open file descriptors."),
            max_fds: gauge(
                "process_max_fds",
                "Maximum number of open file descriptors (the soft RLIMIT_NOFILE).",
            ),
            virtual_memory: gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
            resident_memory: gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            start_time: Gauge::new(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
            )
            .expect("valid metric"),
            threads: gauge("process_threads", "Number of OS threads in the process."),
            scrape: Mutex::new(()),
        };
        // The start time does not change: read once (boot time plus the start in ticks).
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        if let (Some(stat), Some(boot)) = (
            read("/proc/self/stat").as_deref().and_then(Stat::parse),
            read("/proc/stat").as_deref().and_then(boot_time),
        ) {
            collector
                .start_time
                .set(boot as f64 + stat.start_ticks as f64 / ticks);
        }
        collector
    }

    fn refresh(&self) {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        if let Some(stat) = read("/proc/self/stat").as_deref().and_then(Stat::parse) {
            let cpu = (stat.utime + stat.stime) as f64 / ticks;
            let advance = cpu - self.cpu.get();
            if advance > 0.0 {
                self.cpu.inc_by(advance);
            }
            self.threads.set(stat.threads);
            self.virtual_memory.set(stat.vsize);
            self.resident_memory
                .set(stat.rss_pages * rustix::param::page_size() as i64);
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle being read is itself one of the entries.
            self.open_fds.set(entries.count().saturating_sub(1) as i64);
        }
        if let Ok((soft, _)) = rlimit::Resource::NOFILE.get() {
            self.max_fds.set(i64::try_from(soft).unwrap_or(i64::MAX));
        }
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        [
            self.cpu.desc(),
            self.open_fds.desc(),
            self.max_fds.desc(),
            self.virtual_memory.desc(),
            self.resident_memory.desc(),
            self.start_time.desc(),
            self.threads.desc(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh();
        [
            self.cpu.collect(),
            self.open_fds.collect(),
            self.max_fds.collect(),
            self.virtual_memory.collect(),
            self.resident_memory.collect(),
            self.start_time.collect(),
            self.threads.collect(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// The fields of `/proc/self/stat` (proc(5)) the collector reports.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    threads: i64,
    start_ticks: u64,
    vsize: i64,
    rss_pages: i64,
}

impl Stat {
    /// Parses the one line of `/proc/<pid>/stat`. The command name (field 2) is in
    /// parentheses and may hold spaces and parentheses itself, so fields are counted from the
    /// last `)`.
    fn parse(line: &str) -> Option<Self> {
        let rest = &line[line.rfind(')')? + 1..];
        // rest[0] is field 3 (state), so field n is rest[n - 3].
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<i64>().ok();
        Some(Self {
            utime: u64::try_from(field(14)?).ok()?,
            stime: u64::try_from(field(15)?).ok()?,
            threads: field(20)?,
            start_ticks: u64::try_from(field(22)?).ok()?,
            vsize: field(23)?,
            rss_pages: field(24)?,
        })
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The boot time (seconds since the epoch) from `/proc/stat`'s `btime` line.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with a space and a ')' of its own, as a thread may be named.
        let line = "4242 (relay) worker) S 1 4242 4242 0 -1 4194560 1503 0 0 0 250 75 0 0 20 0 \
                    9 0 123456 104857600 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 \
                    1 0 0 0 0 0";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                utime: 250,
                stime: 75,
                threads: 9,
                start_ticks: 123456,
                vsize: 104857600,
                rss_pages: 2048,
            })
        );
        assert_eq!(Stat::parse("4242 (truncated) S 1 2"), None);
        assert_eq!(Stat::parse("no parenthesis at all"), None);
    }

    #[test]
    fn boot_time_is_read_from_the_btime_line() {
        let proc_stat = "cpu  1 2 3 4\nintr 5\nctxt 6\nbtime 1764770000\nprocesses 7\n";
        assert_eq!(boot_time(proc_stat), Some(1_764_770_000));
        assert_eq!(boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn this_process_is_reported_with_sane_figures() {
        // Burn more than a clock tick (10 ms) of CPU, so the CPU counter cannot read 0.
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(spin.elapsed());
        }
        let text = super::super::render(&[registry("mediaproxy", "9.9.9")]);
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
                .parse()
                .expect("a number")
        };
        assert!(text.contains("mediaproxy_build_info{version=\"9.9.9\"} 1"));
        assert!(
            value("process_open_fds") >= 3.0,
            "stdin, stdout, stderr at least"
        );
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_threads") >= 1.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "started {started}, now {now}"
        );
        assert!(value("process_cpu_seconds_total") > 0.0);
    }
}

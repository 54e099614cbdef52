//! What the benchmark reads of the relay under test: CPU time of the process and of its
//! threads, resident memory, and percentiles of sorted samples.

use anyhow::Context;

/// CPU seconds (user + system) a process has used.
pub(crate) fn cpu_seconds(pid: &str, clock_ticks: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields[11].parse()?;
    let stime: f64 = fields[12].parse()?;
    Ok((utime + stime) / clock_ticks)
}

/// CPU seconds the threads of a process whose names start with `prefix` have used (relay
/// workers are `relay-N`, the recorder `recorder`); 0 for a process without such threads.
pub(crate) fn threads_cpu_seconds(pid: &str, prefix: &str, clock_ticks: f64) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
            let (head, after) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1;
            if !name.starts_with(prefix) {
                return None;
            }
            let fields: Vec<&str> = after.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / clock_ticks)
        })
        .sum()
}

pub(crate) fn rss_kib(pid: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

pub(crate) fn percentile(sorted: &[u32], p: f64) -> u64 {
    u64::from(nearest_rank(sorted, p))
}

/// The value at fraction `p` of sorted values (nearest rank); the default for none.
pub(crate) fn nearest_rank<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

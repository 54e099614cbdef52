//! The benchmark's output: a row per target and load point, and the summary of rounds.

use crate::{ChurnRow, Recorded, Target};

pub(crate) fn print_row(target: Target, calls: usize, row: &Row) {
    let mut line = format!(
        "{:<9} {:>6} {:>9.0} {:>9.0} {:>8.3} {:>5} {:>8} {:>8} {:>9} {:>7.1} {:>12.0} {:>9.2} {:>6.1} {:>7.2}ms {:>6}us",
        target.name(),
        calls,
        row.offered_pps,
        row.relayed_pps,
        row.loss_percent,
        row.duplicates,
        row.p50_us,
        row.p99_us,
        row.p999_us,
        row.proxy_cpu_percent,
        row.packets_per_cpu_second,
        row.rss_kib_per_call,
        row.idle_cpu_percent,
        row.setup_p99_ms,
        row.lag99_us,
    );
    if let Some(churn) = &row.churn {
        line += &format!(
            " {:>8} {:>7.2}ms {:>5}",
            churn.calls, churn.setup_p99_ms, churn.failures
        );
    }
    println!("{line}");
    if let Some((relay, recorder)) = row.threads {
        println!(
            "          ^ threads: relay workers {relay:.1}% of a core, recorder {recorder:.1}%"
        );
    }
    if let Some(recorded) = &row.recorded {
        println!(
            "          ^ recorded {} calls: {} packets written, {} dropped by the recorder, {:.0} MiB of files",
            recorded.recording,
            recorded.packets,
            recorded.dropped,
            recorded.bytes as f64 / 1048576.0
        );
    }
    if let Some(error) = row.churn.as_ref().and_then(|c| c.first_error.as_ref()) {
        println!("          ^ churn: the first of the failed operations: {error}");
    }
    if row.offered_pps < 0.99 * row.intended_pps {
        println!(
            "          ^ the generator offered under 99 % of {:.0} packets/s: this row measures the generator, not the relay",
            row.intended_pps
        );
    }
}

/// The lowest and the highest of positive figures.
fn span(values: &[f64]) -> (f64, f64) {
    let lowest = values.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = values.iter().copied().fold(0.0, f64::max);
    (lowest, highest)
}

/// The middle value (the mean of the two middle ones for an even count); NaN for none.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[middle],
        _ => (values[middle - 1] + values[middle]) / 2.0,
    }
}

/// After several rounds of one call count: each target's median efficiency with its range,
/// and its ratio to the reference relay (rtpengine when measured, else the last target)
/// taken round by round, so that both relays of a ratio ran minutes apart at most.
pub(crate) fn print_summary(targets: &[Target], calls: usize, rows: &[Vec<Row>]) {
    let reference = targets
        .iter()
        .position(|&t| t == Target::Rtpengine)
        .unwrap_or(targets.len() - 1);
    println!(
        "summary   {calls} calls, {} rounds: median pkt/cpu-s (min-max), worst loss%, ratio to {} per round: median (min-max), median p50/p99 us",
        rows[0].len(),
        targets[reference].name()
    );
    for (index, target) in targets.iter().enumerate() {
        let efficiency: Vec<f64> = rows[index]
            .iter()
            .map(|r| r.packets_per_cpu_second)
            .collect();
        let (lowest, highest) = span(&efficiency);
        let loss = rows[index]
            .iter()
            .map(|r| r.loss_percent)
            .fold(0.0, f64::max);
        let ratios: Vec<f64> = rows[index]
            .iter()
            .zip(&rows[reference])
            .map(|(row, reference)| row.packets_per_cpu_second / reference.packets_per_cpu_second)
            .collect();
        let (ratio_low, ratio_high) = span(&ratios);
        let p50 = median(rows[index].iter().map(|r| r.p50_us as f64).collect());
        let p99 = median(rows[index].iter().map(|r| r.p99_us as f64).collect());
        println!(
            "  {:<10} {:>9.0} ({:.0}-{:.0})  loss {:.3}  x{:.2} ({:.2}-{:.2})  p50 {:.0}  p99 {:.0}",
            target.name(),
            median(efficiency),
            lowest,
            highest,
            loss,
            median(ratios),
            ratio_low,
            ratio_high,
            p50,
            p99
        );
    }
}

pub(crate) struct Row {
    pub(crate) offered_pps: f64,
    pub(crate) relayed_pps: f64,
    pub(crate) loss_percent: f64,
    pub(crate) duplicates: u64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) proxy_cpu_percent: f64,
    pub(crate) packets_per_cpu_second: f64,
    pub(crate) rss_kib_per_call: f64,
    /// The relay's CPU with every call set up and no packets (timers, statistics).
    pub(crate) idle_cpu_percent: f64,
    pub(crate) setup_p99_ms: f64,
    /// 99th percentile of how late the generator sent against its schedule.
    pub(crate) lag99_us: u64,
    pub(crate) intended_pps: f64,
    /// With `--churn`: what the churn did.
    pub(crate) churn: Option<ChurnRow>,
    /// Target ours+rec: what the recordings hold.
    pub(crate) recorded: Option<Recorded>,
    /// Ours: CPU % of a core of the relay worker threads and of the recorder thread.
    pub(crate) threads: Option<(f64, f64)>,
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts_and_of_nothing() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }
}

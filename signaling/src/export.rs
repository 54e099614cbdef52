//! `signaling export`: CDRs of a date range as CSV or JSON lines, from SQLite or PostgreSQL
//! (docs/cdr.md explains every column).

use std::io::Write;

use clap::{Args, ValueEnum};

use crate::cdr::{Store, Target, Value};

/// Output format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// RFC 4180 CSV with a header line.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// `signaling export` options.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// CDR store: sqlite://PATH or postgres://...
    #[arg(
        long,
        env = "SIGNALING_CDR",
        default_value = "sqlite://cdr.db",
        value_name = "URL"
    )]
    pub cdr: String,
    /// First call start included: YYYY-MM-DD, YYYY-MM-DDTHH:MM:SS (UTC) or unix milliseconds.
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,
    /// End of the range (exclusive); a bare date includes that whole day.
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
    #[arg(long, value_enum, default_value = "csv")]
    pub format: Format,
    /// `cdr` (one row per call) or `cdr_media` (one row per leg and media line).
    #[arg(long, default_value = "cdr", value_parser = ["cdr", "cdr_media"])]
    pub table: String,
}

/// Runs an export to `out`; returns the number of rows written.
pub fn run(args: &ExportArgs, out: &mut impl Write) -> Result<usize, String> {
    let target = Target::parse(&args.cdr).map_err(|e| format!("--cdr {}: {e}", args.cdr))?;
    let from = match &args.from {
        Some(text) => parse_time(text, false).map_err(|e| format!("--from {text:?}: {e}"))?,
        None => 0,
    };
    let to = match &args.to {
        Some(text) => parse_time(text, true).map_err(|e| format!("--to {text:?}: {e}"))?,
        None => i64::MAX,
    };
    if to <= from {
        return Err("--to must be after --from".into());
    }
    if let Target::Sqlite(path) = &target
        && !path.exists()
    {
        return Err(format!("--cdr {}: no such file", path.display()));
    }
    let mut store = Store::open(&target).map_err(|e| format!("--cdr {}: {e}", target.display()))?;
    let (names, rows) = store
        .rows(&args.table, from, to)
        .map_err(|e| format!("reading {}: {e}", args.table))?;
    let io = |e: std::io::Error| format!("writing the export: {e}");
    match args.format {
        Format::Csv => {
            let header: Vec<String> = names.iter().map(|n| csv_field(n)).collect();
            writeln!(out, "{}", header.join(",")).map_err(io)?;
            for row in &rows {
                let fields: Vec<String> = row.iter().map(|v| csv_field(&value_text(v))).collect();
                writeln!(out, "{}", fields.join(",")).map_err(io)?;
            }
        }
        Format::Jsonl => {
            for row in &rows {
                let object: serde_json::Map<String, serde_json::Value> = names
                    .iter()
                    .cloned()
                    .zip(
                        row.iter()
                            .map(|v| serde_json::to_value(v).unwrap_or_default()),
                    )
                    .collect();
                let line = serde_json::to_string(&object).map_err(|e| e.to_string())?;
                writeln!(out, "{line}").map_err(io)?;
            }
        }
    }
    out.flush().map_err(io)?;
    Ok(rows.len())
}

fn value_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Int(v) => v.to_string(),
        Value::Real(v) => v.to_string(),
        Value::Text(t) => t.clone(),
        Value::Bool(b) => i64::from(*b).to_string(),
    }
}

/// One CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
pub fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// Unix milliseconds of `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SS` (UTC, a trailing `Z` allowed) or a
/// plain number of milliseconds. With `end_of_day`, a bare date means the start of the next
/// day (so `--to 2026-11-22` includes the 22nd).
pub fn parse_time(text: &str, end_of_day: bool) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let text = text.strip_suffix('Z').unwrap_or(text);
    let (date, time) = match text.split_once(['T', ' ']) {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let parts: Vec<&str> = date.split('-').collect();
    let [year, month, day] = parts[..] else {
        return Err("expected YYYY-MM-DD[THH:MM:SS] or unix milliseconds".into());
    };
    let number = |s: &str, what: &str| s.parse::<i64>().map_err(|_| format!("bad {what} {s:?}"));
    let (year, month, day) = (
        number(year, "year")?,
        number(month, "month")?,
        number(day, "day")?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err("month or day out of range".into());
    }
    let mut seconds = days_from_civil(year, month, day) * 86_400;
    match time {
        Some(time) => {
            let parts: Vec<&str> = time.split(':').collect();
            if parts.len() < 2 || parts.len() > 3 {
                return Err("expected HH:MM or HH:MM:SS".into());
            }
            let hours = number(parts[0], "hour")?;
            let minutes = number(parts[1], "minute")?;
            let secs = parts.get(2).map_or(Ok(0), |s| number(s, "second"))?;
            if hours > 23 || minutes > 59 || secs > 60 {
                return Err("time out of range".into());
            }
            seconds += hours * 3600 + minutes * 60 + secs;
        }
        None if end_of_day => seconds += 86_400,
        None => {}
    }
    Ok(seconds * 1000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_utc() {
        assert_eq!(parse_time("1970-01-01", false), Ok(0));
        assert_eq!(parse_time("1970-01-01", true), Ok(86_400_000));
        assert_eq!(parse_time("2026-11-22", false), Ok(1_795_305_600_000));
        assert_eq!(
            parse_time("2026-11-22T10:30:05Z", false),
            Ok(1_795_305_600_000 + (10 * 3600 + 30 * 60 + 5) * 1000)
        );
        assert_eq!(parse_time("2000-03-01", false), Ok(951_868_800_000));
        assert_eq!(parse_time("1795305600000", false), Ok(1_795_305_600_000));
        assert!(parse_time("2026-13-01", false).is_err());
        assert!(parse_time("22/11/2026", false).is_err());
        assert!(parse_time("2026-11-22T25:00", false).is_err());
    }

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(
            csv_field("no packet reached 1.2.3.4:30000; check, please"),
            "\"no packet reached 1.2.3.4:30000; check, please\""
        );
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("a\nb"), "\"a\nb\"");
    }
}

//! Where a recording's files go: `DIR/YYYY/MM/DD/STEM` with STEM the call id made safe for a
//! file name and kept unique in its directory.

use std::path::{Path, PathBuf};

/// `path` with `suffix` appended to its file name.
pub(super) fn append(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A file name stem from a call id: characters outside `[A-Za-z0-9._-]` become `_`, and a
/// leading dot is not kept (no hidden files, no `..`).
pub(super) fn sanitise(text: &str) -> String {
    let mut stem: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    while stem.starts_with('.') {
        stem.replace_range(..1, "_");
    }
    stem.truncate(200);
    if stem.is_empty() {
        stem.push_str("recording");
    }
    stem
}

/// `directory/base`, or `directory/base-N` with the first N whose files do not exist.
pub(super) fn unique_stem(directory: &Path, base: &str) -> PathBuf {
    let taken = |stem: &Path| append(stem, ".json").exists() || append(stem, ".wav").exists();
    let first = directory.join(base);
    if !taken(&first) {
        return first;
    }
    (2..)
        .map(|n| directory.join(format!("{base}-{n}")))
        .find(|stem| !taken(stem))
        .expect("an unused name")
}

/// Year, month and day of a count of days since 1970-01-01 (the proleptic Gregorian
/// calendar, after Howard Hinnant's `civil_from_days`).
pub(super) fn civil_date(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_names_are_what_the_layout_promises() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        // 2026-12-02 is day 20 789; 2024-02-29 is day 19 782.
        assert_eq!(civil_date(20_789), (2026, 12, 2));
        assert_eq!(civil_date(19_782), (2024, 2, 29));
        assert_eq!(
            sanitise("a84b4c76e66710@pc33.atlanta.com"),
            "a84b4c76e66710_pc33.atlanta.com"
        );
        assert_eq!(sanitise("../../etc/passwd"), "_._.._etc_passwd");
        assert_eq!(sanitise(""), "recording");
        let dir = std::env::temp_dir().join(format!("stem-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("call.example.com.wav"), b"").unwrap();
        std::fs::write(dir.join("call.example.com-2.json"), b"").unwrap();
        assert_eq!(
            unique_stem(&dir, "call.example.com"),
            dir.join("call.example.com-3")
        );
        assert_eq!(unique_stem(&dir, "other"), dir.join("other"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The spool file: CDRs the database could not take, one JSON object per line, replayed
//! first at the next start (inserts are idempotent, so a replay after a crash between a
//! commit and the cleanup writes nothing twice).
//!
//! Beside it, the outage journal (the spool's name with the extension `queue`): while the
//! database is down, every CDR that waits in memory is appended there too (one `fsync` per
//! batch), so a process killed in the middle of an outage loses none; the journal is removed
//! once the queue is written, and replayed like the spool by the next start.
//!
//! And the open-call journal (extension `open`): the durable records of calls that are up
//! which the database has not taken (it was down at their answer), as lines that open and
//! close them; its modification time is kept fresh every heartbeat while it exists. A process
//! killed during an outage leaves it, and the next start completes those calls like the
//! orphans of its own instance, ended at the file's last touch.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Worker;
use crate::cdr::{Cdr, OpenCall, Target};

/// One line of the open-call journal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OpenLine {
    Open(Box<OpenCall>),
    Closed { call_id: String, start_time_ms: i64 },
}

/// The JSON objects of `file`, one per line; an unreadable line is logged (it stays in the
/// log only) and skipped.
fn read_lines<T: DeserializeOwned>(file: File, what: &str) -> Vec<T> {
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter(|line| !line.trim().is_empty())
        .filter_map(|line| match serde_json::from_str(&line) {
            Ok(item) => Some(item),
            Err(error) => {
                tracing::error!(%error, line, "unreadable line in {what}; kept in the log only");
                None
            }
        })
        .collect()
}

/// Appends `items` to `path`, one JSON object per line, and syncs it.
fn append<T: Serialize>(path: &Path, items: &[T]) -> std::io::Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    for item in items {
        let line = serde_json::to_string(item).map_err(std::io::Error::other)?;
        writeln!(file, "{line}")?;
    }
    file.sync_data()
}

impl Worker {
    fn open_journal_path(&self) -> PathBuf {
        self.options.spool.with_extension("open")
    }

    /// Keeps the open-call journal in step with the records the database has not taken:
    /// opens the new ones, closes the ones saved or ended, removes the file once none is left.
    pub(super) fn open_journal(&mut self) {
        let path = self.open_journal_path();
        let key = |call: &OpenCall| (call.call_id.clone(), call.start_time_ms);
        let waiting: HashSet<(String, i64)> = self.unsaved.iter().map(key).collect();
        if waiting.is_empty() {
            if !self.open_in_file.is_empty() {
                if let Err(error) = std::fs::remove_file(&path)
                    && error.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(%error, journal = %path.display(), "cannot remove the open-call journal");
                }
                self.open_in_file.clear();
            }
            return;
        }
        let mut lines: Vec<OpenLine> = self
            .unsaved
            .iter()
            .filter(|call| !self.open_in_file.contains(&key(call)))
            .map(|call| OpenLine::Open(Box::new(call.clone())))
            .collect();
        lines.extend(
            self.open_in_file
                .iter()
                .filter(|k| !waiting.contains(*k))
                .map(|(call_id, start_time_ms)| OpenLine::Closed {
                    call_id: call_id.clone(),
                    start_time_ms: *start_time_ms,
                }),
        );
        if lines.is_empty() {
            return;
        }
        match append(&path, &lines) {
            Ok(()) => self.open_in_file = waiting,
            Err(error) => {
                tracing::error!(%error, journal = %path.display(), "cannot journal the records of calls that are up; a kill now would lose their CDRs");
            }
        }
    }

    /// Marks the open-call journal, if there is one, as alive now (its modification time is
    /// the end of its calls should this process be killed).
    pub(super) fn touch_open_journal(&self) {
        if self.open_in_file.is_empty() {
            return;
        }
        let touched = OpenOptions::new()
            .write(true)
            .open(self.open_journal_path())
            .and_then(|file| file.set_modified(std::time::SystemTime::now()));
        if let Err(error) = touched {
            tracing::warn!(%error, "cannot mark the open-call journal alive");
        }
    }

    /// Takes the open-call journal a killed predecessor left: its calls still open become
    /// orphans of this instance, ended at the file's last touch.
    pub(super) fn load_open_journal(&mut self) {
        let path = self.open_journal_path();
        let taken = path.with_extension("open-orphans");
        // An earlier start that was stopped before handing its orphans over left this.
        let source = if taken.exists() {
            taken.clone()
        } else {
            path.clone()
        };
        let Ok(file) = File::open(&source) else {
            return;
        };
        let alive_at_ms = file
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        let mut open: Vec<OpenCall> = Vec::new();
        for line in read_lines::<OpenLine>(file, "the open-call journal") {
            match line {
                OpenLine::Open(call) => open.push(*call),
                OpenLine::Closed {
                    call_id,
                    start_time_ms,
                } => open.retain(|c| c.call_id != call_id || c.start_time_ms != start_time_ms),
            }
        }
        if source == path
            && let Err(error) = std::fs::rename(&path, &taken)
        {
            tracing::error!(%error, journal = %path.display(), "cannot take the open-call journal; its calls wait for the next start");
            return;
        }
        if !open.is_empty() {
            tracing::warn!(
                calls = open.len(),
                "a process killed during a database outage left calls that were up; completing them"
            );
        }
        for call in open {
            let known = self
                .orphans
                .iter()
                .any(|(o, _)| o.call_id == call.call_id && o.start_time_ms == call.start_time_ms);
            if !known {
                self.orphans.push((call, alive_at_ms));
            }
        }
        self.open_orphans_file = Some(taken);
    }

    /// The outage journal's path.
    fn journal_path(&self) -> PathBuf {
        self.options.spool.with_extension("queue")
    }

    /// Keeps the outage journal in step with the queue: appends the CDRs that wait and are
    /// not in it yet, and removes it once nothing waits.
    pub(super) fn journal(&mut self) {
        let path = self.journal_path();
        if self.pending.is_empty() {
            self.fresh = 0;
            if self.journaled {
                if let Err(error) = std::fs::remove_file(&path)
                    && error.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(%error, journal = %path.display(), "cannot remove the CDR outage journal; the next start replays it (inserts are idempotent)");
                }
                self.journaled = false;
            }
            return;
        }
        if self.fresh == 0 {
            return;
        }
        let from = self.pending.len() - self.fresh.min(self.pending.len());
        let waiting: Vec<Cdr> = self.pending.range(from..).cloned().collect();
        match append(&path, &waiting) {
            Ok(()) => {
                self.fresh = 0;
                self.journaled = true;
            }
            Err(error) => {
                // Kept in memory as before; said once per batch.
                tracing::error!(%error, journal = %path.display(), count = waiting.len(), "cannot journal the waiting CDRs; a kill now would lose them");
            }
        }
    }

    /// Appends CDRs to the spool file (one JSON object per line).
    pub(super) fn spool(&self, cdrs: &[Cdr]) {
        match append(&self.options.spool, cdrs) {
            Ok(()) => {
                self.metrics.spooled.inc_by(cdrs.len() as u64);
                tracing::warn!(
                    count = cdrs.len(),
                    spool = %self.options.spool.display(),
                    "CDRs written to the spool file; the next start replays them"
                );
            }
            Err(error) => {
                for cdr in cdrs {
                    // Last resort: the record in the log, whole.
                    tracing::error!(
                        spool = %self.options.spool.display(),
                        %error,
                        cdr = %serde_json::to_string(cdr).unwrap_or_default(),
                        "CDR could not be stored or spooled"
                    );
                }
            }
        }
    }

    /// Moves a spool file left by an earlier run into the queue. The file is renamed first
    /// and removed once every record from it is stored, so a crash meanwhile loses nothing.
    pub(super) fn load_spool(&mut self) {
        let spool = &self.options.spool;
        let replay = spool.with_extension("replaying");
        let journal = self.journal_path();
        let mut sources = Vec::new();
        for path in [&replay, spool, &journal] {
            if path.exists() {
                sources.push(path.clone());
            }
        }
        if sources.is_empty() {
            return;
        }
        let mut records = Vec::new();
        for path in &sources {
            let Ok(file) = File::open(path) else {
                continue;
            };
            records.extend(read_lines::<Cdr>(file, "the CDR spool file"));
        }
        // One file to replay from now on.
        let merged = (|| -> std::io::Result<()> {
            let mut file = File::create(replay.with_extension("replaying.tmp"))?;
            for cdr in &records {
                let line = serde_json::to_string(cdr).map_err(std::io::Error::other)?;
                writeln!(file, "{line}")?;
            }
            file.sync_data()?;
            std::fs::rename(replay.with_extension("replaying.tmp"), &replay)?;
            for left in [spool, &journal] {
                if left.exists() {
                    std::fs::remove_file(left)?;
                }
            }
            Ok(())
        })();
        if let Err(error) = merged {
            tracing::error!(%error, spool = %spool.display(), "cannot prepare the CDR spool replay; will retry at next start");
            return;
        }
        tracing::info!(
            count = records.len(),
            spool = %spool.display(),
            "replaying CDRs left in the spool file"
        );
        self.replaying = Some((replay, records.len()));
        self.pending.extend(records);
        if self.replaying.as_ref().is_some_and(|(_, n)| *n == 0) {
            self.replayed_one();
        }
    }

    pub(super) fn replayed_one(&mut self) {
        if let Some((path, left)) = self.replaying.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                let _ = std::fs::remove_file(&*path);
                self.replaying = None;
            }
        }
    }
}

/// Path of the spool file beside `--cdr` when none is configured.
pub fn default_spool(target: &Target) -> PathBuf {
    match target {
        Target::Sqlite(path) => {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(".spool");
            path.with_file_name(name)
        }
        Target::Postgres(_) => Path::new("cdr-spool.jsonl").to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spool_sits_beside_a_sqlite_database() {
        assert_eq!(
            default_spool(&Target::Sqlite("/data/cdr.db".into())),
            PathBuf::from("/data/cdr.db.spool")
        );
    }
}

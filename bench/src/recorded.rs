//! Target `ours+rec`: every call recorded, and what the recordings hold at the end.

use anyhow::{Context, bail};
use proto::v1 as pb;

use crate::Control;

/// What the recordings of a point hold, from the proxy's recording states and the files.
pub(crate) struct Recorded {
    /// Calls whose recording was running at the end.
    pub(crate) recording: usize,
    /// RTP packets whose audio was written, and packets the recorder could not take.
    pub(crate) packets: u64,
    pub(crate) dropped: u64,
    pub(crate) bytes: u64,
}

/// Starts recording every call of a point (ours+rec).
pub(crate) async fn record_all(control: &mut Control, calls: usize) -> anyhow::Result<()> {
    let Control::Grpc(client, _) = control else {
        bail!("only our relay records");
    };
    for call in 0..calls {
        client
            .start_recording(pb::StartRecordingRequest {
                call_id: format!("bench-{call}"),
                file_stem: String::new(),
                pcap: false,
            })
            .await
            .with_context(|| format!("start recording bench-{call}"))?;
    }
    Ok(())
}

/// The recordings' totals at the end of a point.
pub(crate) async fn recording_totals(
    control: &mut Control,
    calls: usize,
    directory: &std::path::Path,
) -> anyhow::Result<Recorded> {
    let Control::Grpc(client, _) = control else {
        bail!("only our relay records");
    };
    let mut totals = Recorded {
        recording: 0,
        packets: 0,
        dropped: 0,
        bytes: 0,
    };
    for call in 0..calls {
        let stats = client
            .query_stats(pb::QueryStatsRequest {
                call_id: format!("bench-{call}"),
            })
            .await?
            .into_inner();
        let state = stats.recording.unwrap_or_default();
        if state.state == pb::recording_state::State::Recording as i32 {
            totals.recording += 1;
        }
        totals.packets += state.packets;
        totals.dropped += state.dropped_packets;
        for file in &state.files {
            totals.bytes += std::fs::metadata(file).map_or(0, |m| m.len());
        }
    }
    anyhow::ensure!(
        totals.recording == calls,
        "{} of {calls} recordings running in {}",
        totals.recording,
        directory.display()
    );
    Ok(totals)
}

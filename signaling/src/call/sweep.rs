//! Stale sessions on a node: a session this instance owns there that none of its calls has
//! there (the call moved away while the node was partitioned off, or ended while the node
//! could not be told). Every lease renewal lists the node's sessions of ours
//! ([`Input::MediaSessions`](super::Input::MediaSessions)); a session found stale in two
//! listings in a row (5 s apart) is released ([`Output::ReleaseStale`]), so a node that comes
//! back from a partition is cleaned within about 10 s instead of its media timeout. Two
//! listings, not one: a call whose allocation answer is still on its way is listed before the
//! core knows its plan.

use std::collections::HashSet;

use super::{CallId, Core, Endpoint, Output};

impl Core {
    pub(super) fn on_media_sessions(&mut self, endpoint: &Endpoint, call_ids: Vec<CallId>) {
        let stale: HashSet<CallId> = call_ids
            .into_iter()
            .filter(|call_id| !self.media_is_on(call_id, endpoint))
            .collect();
        let before = self.stale.remove(endpoint).unwrap_or_default();
        let (mut release, keep): (Vec<CallId>, Vec<CallId>) =
            stale.into_iter().partition(|id| before.contains(id));
        release.sort_unstable();
        for call_id in release {
            self.push(Output::ReleaseStale {
                endpoint: endpoint.clone(),
                call_id,
            });
        }
        if !keep.is_empty() {
            self.stale
                .insert(endpoint.clone(), keep.into_iter().collect());
        }
    }

    /// Whether the session `call_id` on `endpoint` belongs to a live call there, or may (its
    /// allocation or move is under way).
    fn media_is_on(&self, call_id: &CallId, endpoint: &Endpoint) -> bool {
        let Some(&call) = self.by_key.get(call_id) else {
            return false;
        };
        self.calls.get(&call).is_some_and(|record| {
            !record.finished
                && (record.relocating.is_some()
                    || record.transfer_key() == Some(call_id)
                    || record
                        .media
                        .as_ref()
                        .map_or(record.allocation_requested, |m| m.endpoint == *endpoint))
        })
    }
}

//! Where a call rings: every live contact of the called user at once (parallel forking,
//! RFC 3261 section 16.6), the contacts of a callee's 3xx (redirects, section 8.1.3.4), and
//! the called user's forwarding (always, on busy, on no answer), each target routed like any
//! call.
//!
//! The callee's dialog of a call is forked into **branches**, one INVITE each (same Call-ID,
//! From tag and CSeq, their own Via branch and Request-URI). Contacts of equal `q` ring
//! together; lower ones ring when all of the higher failed (section 16.6 step 1's groups).
//! The first 2xx wins: its branch becomes the callee's dialog and the others are CANCELled; a
//! second 2xx is acknowledged and hung up (section 13.2.2.4). Early media is the first
//! branch's that brought SDP; other branches' provisionals reach the caller without it. When
//! every branch failed and nothing is left to try, the caller gets the best final answer
//! (section 16.7: a 6xx, else the lowest class, 3xx excepted when it was followed).
//!
//! A 3xx's Contacts are new targets (at most [`MAX_REDIRECTS`] redirects; a target already
//! tried is not tried again: loops end); a 3xx none of whose Contacts can be routed goes to
//! the caller. Forwarding comes from the users file: `forward` replaces the user's own
//! contacts, `forward-busy` follows a 486 or 600, `forward-no-answer` CANCELs the user's
//! branches after `forward-no-answer-after` seconds of ringing. The CDR's `callee_contact`
//! names the contact that answered, and `end_reason` where the call went.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::messages::transport_named;
use super::{CallRef, CallTimer, Core, Flow, Side, State, TxTag};
use crate::dialog::Dialog;
use crate::sip::Peer;
use crate::sip::header::NameAddr;
use crate::sip::message::{Method, Request, Response};
use crate::sip::uri::Uri;
use crate::transaction::TxId;

/// Redirects (3xx) followed in one call, at most.
pub(super) const MAX_REDIRECTS: u8 = 5;

/// One destination of a call.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Target {
    /// The Request-URI of its INVITE.
    pub(super) uri: String,
    /// Where the INVITE goes.
    pub(super) peer: Peer,
    pub(super) q: f32,
    /// The user (or number) it was routed for: what loops are detected on.
    pub(super) user: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BranchState {
    Calling,
    Proceeding,
    /// A final non-2xx answer came (or Timer B), or we CANCELled it.
    Done,
    Answered,
}

/// One forked INVITE.
#[derive(Debug, Clone)]
pub(super) struct Branch {
    pub(super) target: Target,
    pub(super) dialog: Dialog,
    pub(super) tx: TxId,
    pub(super) cseq: u32,
    state: BranchState,
    /// We CANCELled it: its 487 says nothing about the callee.
    cancelled: bool,
    /// The last RSeq of its reliable provisionals we PRACKed (RFC 3262).
    pub(super) rseq: Option<u32>,
}

/// Forwarding of the called user (users file).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Forwarding {
    pub(super) busy: Option<String>,
    pub(super) no_answer: Option<String>,
    pub(super) no_answer_after: Duration,
}

/// The branches of a call's callee side.
#[derive(Debug, Clone, Default)]
pub(super) struct Forks {
    pub(super) branches: Vec<Branch>,
    /// Targets not tried yet, highest `q` first.
    waiting: Vec<Target>,
    /// Final answers of failed branches (the best goes to the caller).
    finals: Vec<Response>,
    /// Users tried: a redirect or forward to one of them again is a loop.
    tried: HashSet<String>,
    redirects: u8,
    /// The branch whose early media the caller gets.
    early: Option<usize>,
    pub(super) forwarding: Forwarding,
    /// Where the call went, in words, for the CDR.
    pub(super) notes: Vec<String>,
}

impl Forks {
    /// The forks of a call to `targets` (highest `q` first), for `user`.
    pub(super) fn new(user: &str, targets: Vec<Target>, forwarding: Forwarding) -> Self {
        let mut tried = HashSet::new();
        tried.insert(user.to_owned());
        Self {
            waiting: targets,
            tried,
            forwarding,
            ..Self::default()
        }
    }

    /// The next group to ring: the waiting targets of the highest `q`.
    fn next_group(&mut self) -> Vec<Target> {
        let Some(top) = self.waiting.first().map(|t| t.q) else {
            return Vec::new();
        };
        let split = self
            .waiting
            .iter()
            .position(|t| t.q < top)
            .unwrap_or(self.waiting.len());
        self.waiting.drain(..split).collect()
    }

    fn active(&self) -> bool {
        self.branches
            .iter()
            .any(|b| matches!(b.state, BranchState::Calling | BranchState::Proceeding))
    }

    /// Inserts `targets` among the waiting ones by `q` (stable: earlier first on a tie).
    fn add(&mut self, targets: Vec<Target>) {
        self.waiting.extend(targets);
        self.waiting.sort_by(|a, b| b.q.total_cmp(&a.q));
    }

    /// Branch `i` is replaced by a new INVITE to its target (after a 422): its answer says
    /// nothing more.
    pub(super) fn retire(&mut self, i: usize) {
        if let Some(branch) = self.branches.get_mut(i) {
            branch.state = BranchState::Done;
            branch.cancelled = true;
        }
    }

    /// The branch of `tx`.
    pub(super) fn branch(&self, tx: TxId) -> Option<usize> {
        self.branches.iter().position(|b| b.tx == tx)
    }

    /// The answer the caller gets when every branch failed (RFC 3261 section 16.7 step 6).
    fn best(&self) -> Option<Response> {
        let class = |r: &Response| r.status / 100;
        if let Some(decline) = self.finals.iter().find(|r| class(r) == 6) {
            return Some(decline.clone());
        }
        self.finals.iter().min_by_key(|r| class(r)).cloned()
    }
}

/// The `q` of a Contact (1.0 when absent or unreadable).
fn q_of(contact: &NameAddr) -> f32 {
    contact
        .param("q")
        .flatten()
        .and_then(|q| q.parse::<f32>().ok())
        .filter(|q| (0.0..=1.0).contains(q))
        .unwrap_or(1.0)
}

impl Core {
    /// Every target of a call to `user`: its live registered contacts (highest `q` first),
    /// else the longest matching static route.
    pub(super) fn targets(&self, now: Instant, user: &str) -> Vec<Target> {
        let bindings = self.registrar.lookup(now, user);
        if !bindings.is_empty() {
            return bindings
                .into_iter()
                .map(|binding| Target {
                    uri: binding.contact.uri.to_string(),
                    peer: Peer {
                        transport: transport_named(binding.transport),
                        addr: binding.source,
                    },
                    q: binding.q,
                    user: user.to_owned(),
                })
                .collect();
        }
        self.route(now, user)
            .map(|(uri, peer, _)| Target {
                uri,
                peer,
                q: 1.0,
                user: user.to_owned(),
            })
            .into_iter()
            .collect()
    }

    /// Sends our INVITE `template` (its Request-URI and Via branch replaced) to each
    /// target of the call's next group; false when no target is left.
    pub(super) fn ring_next_group(&mut self, now: Instant, call: CallRef) -> bool {
        let Some(record) = self.calls.get_mut(&call) else {
            return false;
        };
        let group = record.forks.next_group();
        if group.is_empty() {
            return false;
        }
        let Some(template) = record.b_template.clone() else {
            return false;
        };
        for target in group {
            self.send_branch(now, call, &template, target);
        }
        true
    }

    /// One forked INVITE.
    pub(super) fn send_branch(
        &mut self,
        now: Instant,
        call: CallRef,
        template: &Request,
        target: Target,
    ) {
        let local = self.local();
        let branch = self.ids.branch();
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let mut dialog = record.b.clone();
        dialog.remote_target = target.uri.clone();
        dialog.peer = target.peer;
        let mut invite = template.clone();
        invite.uri = target.uri.clone();
        invite.headers.set(
            "Via",
            crate::dialog::via(local, target.peer.transport, &branch),
        );
        let cseq = invite.cseq().map_or(1, |c| c.number);
        record.forks.tried.insert(target.user.clone());
        let tag = TxTag {
            call,
            side: Side::B,
            flow: Flow::Invite,
        };
        let peer = target.peer;
        let tx = self.transactions.send(now, peer, invite, tag);
        if let Some(record) = self.calls.get_mut(&call) {
            record.forks.branches.push(Branch {
                target,
                dialog,
                tx,
                cseq,
                state: BranchState::Calling,
                cancelled: false,
                rseq: None,
            });
        }
    }

    /// CANCELs every branch still ringing but `except`.
    pub(super) fn cancel_branches(&mut self, now: Instant, call: CallRef, except: Option<usize>) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let mut cancel = Vec::new();
        for (i, branch) in record.forks.branches.iter_mut().enumerate() {
            if Some(i) != except
                && matches!(branch.state, BranchState::Calling | BranchState::Proceeding)
            {
                branch.state = BranchState::Done;
                branch.cancelled = true;
                cancel.push(branch.tx);
            }
        }
        let tag = TxTag {
            call,
            side: Side::B,
            flow: Flow::Hangup,
        };
        for tx in cancel {
            self.transactions.cancel(now, tx, tag);
        }
    }

    /// A provisional from branch `i`: whether its SDP may reach the caller (the first branch
    /// with early media keeps it). Makes the branch the callee's dialog while none answered.
    pub(super) fn branch_provisional(
        &mut self,
        call: CallRef,
        i: usize,
        provisional: &Response,
    ) -> bool {
        let Some(record) = self.calls.get_mut(&call) else {
            return false;
        };
        let forks = &mut record.forks;
        let Some(branch) = forks.branches.get_mut(i) else {
            return false;
        };
        branch.dialog.early(provisional);
        if branch.state == BranchState::Calling {
            branch.state = BranchState::Proceeding;
        }
        let media = !provisional.body.is_empty() && forks.early.is_none_or(|e| e == i);
        if media {
            forks.early = Some(i);
        }
        if media || forks.early.is_none() {
            record.b = forks.branches[i].dialog.clone();
        }
        media
    }

    /// Branch `i` answered first: it becomes the callee's dialog, the others are CANCELled.
    pub(super) fn branch_won(&mut self, now: Instant, call: CallRef, i: usize, ok: &Response) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(branch) = record.forks.branches.get_mut(i) else {
            return;
        };
        branch.state = BranchState::Answered;
        branch.dialog.confirm(ok);
        record.b = branch.dialog.clone();
        record.b_tx = Some(branch.tx);
        record.b_invite_cseq = branch.cseq;
        let contact = branch.target.uri.clone();
        if record.forks.branches.len() > 1 {
            tracing::info!(call_id = %record.key, %contact, "answered by one branch; cancelling the others");
        }
        record.callee_contact = Some(contact);
        self.cancel_branches(now, call, Some(i));
    }

    /// A 2xx of branch `i` when the call is already answered by another or over: ACK and
    /// BYE on that branch's dialog (RFC 3261 section 13.2.2.4).
    pub(super) fn hang_up_branch(&mut self, now: Instant, call: CallRef, i: usize, ok: &Response) {
        let (local, ack_branch, bye_branch) = (self.local(), self.ids.branch(), self.ids.branch());
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(branch) = record.forks.branches.get_mut(i) else {
            return;
        };
        if branch.state == BranchState::Answered && record.b_tx == Some(branch.tx) {
            // The winner's retransmitted 2xx: its transaction resends the ACK.
            return;
        }
        branch.state = BranchState::Answered;
        branch.dialog.confirm(ok);
        let (peer, ack) = branch
            .dialog
            .request(Method::Ack, Some(branch.cseq), local, &ack_branch);
        let (bye_peer, bye) = branch.dialog.request(Method::Bye, None, local, &bye_branch);
        let tx = branch.tx;
        tracing::info!(call_id = %record.key, contact = %branch.target.uri, "a second branch answered: ACK and BYE");
        self.transactions.set_ack(tx, &ack);
        self.send(peer, ack.to_bytes());
        let tag = TxTag {
            call,
            side: Side::B,
            flow: Flow::Hangup,
        };
        self.transactions.send(now, bye_peer, bye, tag);
    }

    /// Branch `i` failed with `answer` (a final non-2xx, or Timer B as 408). Follows a
    /// redirect or a forward, rings the next group; returns the answer for the caller when
    /// nothing is left to try.
    pub(super) fn branch_failed(
        &mut self,
        now: Instant,
        call: CallRef,
        i: usize,
        answer: Response,
    ) -> Option<Response> {
        let record = self.calls.get_mut(&call)?;
        let branch = record.forks.branches.get_mut(i)?;
        let was_cancelled = branch.cancelled;
        branch.state = BranchState::Done;
        let user = branch.target.user.clone();
        let status = answer.status;
        let mut followed = false;
        if !was_cancelled {
            if (300..400).contains(&status) {
                followed = self.follow_redirect(now, call, &user, &answer);
            } else if matches!(status, 486 | 600) {
                followed = self.forward(now, call, "busy");
            }
        }
        let record = self.calls.get_mut(&call)?;
        if !was_cancelled && !followed {
            record.forks.finals.push(answer);
        }
        if status >= 600 && !followed {
            // Section 16.7 step 5: a global failure ends the search.
            record.forks.waiting.clear();
            self.cancel_branches(now, call, None);
        }
        let record = self.calls.get_mut(&call)?;
        if record.forks.active() {
            return None;
        }
        if self.ring_next_group(now, call) {
            return None;
        }
        let record = self.calls.get(&call)?;
        record.forks.best()
    }

    /// The Contacts of a 3xx from `user`'s branch as new targets; false when none can be
    /// routed (the 3xx then counts as the branch's answer).
    fn follow_redirect(
        &mut self,
        now: Instant,
        call: CallRef,
        user: &str,
        redirect: &Response,
    ) -> bool {
        let Some(record) = self.calls.get(&call) else {
            return false;
        };
        if record.forks.redirects >= MAX_REDIRECTS {
            tracing::info!(call_id = %record.key, "redirect limit reached; the 3xx goes to the caller");
            return false;
        }
        let contacts: Vec<(String, f32)> = redirect
            .headers
            .values("Contact")
            .filter_map(NameAddr::parse)
            .filter_map(|c| Some((c.uri.user.clone()?, q_of(&c))))
            .collect();
        let mut found = Vec::new();
        for (to, q) in contacts {
            if record.forks.tried.contains(&to) || found.iter().any(|t: &Target| t.user == to) {
                continue;
            }
            for mut target in self.targets(now, &to) {
                target.q = q;
                found.push(target);
            }
        }
        if found.is_empty() {
            return false;
        }
        let names: Vec<String> = found.iter().map(|t| t.user.clone()).collect();
        let record = self.calls.get_mut(&call).expect("checked above");
        record.forks.redirects += 1;
        record.forks.notes.push(format!(
            "redirected by {user} ({} {}) to {}",
            redirect.status,
            redirect.reason,
            names.join(", ")
        ));
        tracing::info!(call_id = %record.key, from = user, to = %names.join(", "), "following a redirect");
        record.forks.add(found);
        true
    }

    /// Forwards the call on `why` (`busy`, `no answer`) when the called user asks for it and
    /// the target is routable and not tried yet.
    pub(super) fn forward(&mut self, now: Instant, call: CallRef, why: &str) -> bool {
        let Some(record) = self.calls.get(&call) else {
            return false;
        };
        let to = match why {
            "busy" => record.forks.forwarding.busy.clone(),
            _ => record.forks.forwarding.no_answer.clone(),
        };
        let Some(to) = to.map(|t| forward_user(&t)) else {
            return false;
        };
        if record.forks.tried.contains(&to) {
            return false;
        }
        let targets = self.targets(now, &to);
        if targets.is_empty() {
            tracing::info!(call_id = %record.key, to, why, "forwarding target cannot be routed");
            return false;
        }
        let callee = record.callee.clone();
        let record = self.calls.get_mut(&call).expect("checked above");
        record
            .forks
            .notes
            .push(format!("forwarded on {why} from {callee} to {to}"));
        tracing::info!(call_id = %record.key, from = %callee, to, why, "forwarding the call");
        // The forward goes before anything else still waiting.
        let mut targets = targets;
        for target in &mut targets {
            target.q = 2.0;
        }
        record.forks.add(targets);
        true
    }

    /// The called user rang for its `forward-no-answer-after`: its branches are CANCELled
    /// and the call goes to its `forward-no-answer` target.
    pub(super) fn on_no_answer_forward(&mut self, now: Instant, call: CallRef) {
        let Some(record) = self.calls.get(&call) else {
            return;
        };
        if !matches!(record.state, State::Calling | State::Proceeding) {
            return;
        }
        if !self.forward(now, call, "no answer") {
            return;
        }
        self.cancel_branches(now, call, None);
        // The forward rings for a whole ring timeout of its own.
        let ring = self.settings.ring_timeout;
        self.set_timer(now, call, CallTimer::Ring, ring);
        self.ring_next_group(now, call);
    }
}

/// The user a forwarding value names: `carol`, `+4420...` or a SIP URI's user part.
pub(super) fn forward_user(value: &str) -> String {
    let value = value.trim();
    let inner = value.trim_start_matches('<').trim_end_matches('>');
    Uri::parse(inner)
        .ok()
        .and_then(|u| u.user)
        .unwrap_or_else(|| value.to_owned())
}

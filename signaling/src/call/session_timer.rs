//! Session timers (RFC 4028), negotiated and kept on each leg on its own, as a B2BUA must:
//! a leg whose phone or trunk does timers gets them, a leg that does not keeps the OPTIONS
//! keepalive alone.
//!
//! - **Caller's leg.** An INVITE whose `Session-Expires` is below our `--min-se` is refused
//!   `422` with our `Min-SE` (section 8.1). A caller that supports `timer` gets in our 2xx
//!   `Session-Expires: N;refresher=uac` (it asked to refresh, or did not say) or
//!   `refresher=uas` (it asked us to), with `Require: timer`; N is its interval, never above
//!   our `--session-expires`. A caller that does not support timers but whose INVITE carries
//!   `Session-Expires` (a proxy added it) has us refresh.
//! - **Callee's leg.** Our INVITE offers `Supported: timer`, `Session-Expires` (ours) and
//!   `Min-SE`; a `422` is answered by a new INVITE with the callee's `Min-SE` (once). The
//!   callee's 2xx says who refreshes; without `Session-Expires` the leg has no timer.
//! - **Refreshing.** When we refresh a leg we send, every half interval, an UPDATE without
//!   SDP (a re-INVITE with the SDP the leg already has when it does not allow UPDATE, or
//!   answered 501/405), and end the call if a refresh fails (408, 481, no answer). When the
//!   phone refreshes, any re-INVITE or UPDATE from it counts; none before the interval's
//!   end less min(32 s, a third) ends the call (section 10), its CDR saying so. An UPDATE
//!   without SDP is a refresh of its own leg only: answered here, not relayed (a callee that
//!   does not take UPDATE must not fail the caller's refresh: "calls that drop after 15
//!   or 30 minutes").

use std::time::{Duration, Instant};

use super::messages::response;
use super::{CallRef, CallTimer, Core, Flow, HangupSide, Side, TxTag};
use crate::sip::message::{Method, Request, Response};
use crate::transaction::TxId;

/// Who refreshes, as a `refresher` parameter names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refresher {
    Uac,
    Uas,
}

/// A `Session-Expires` value: the interval and the refresher, if named.
fn session_expires(headers: &crate::sip::message::Headers) -> Option<(u64, Option<Refresher>)> {
    let value = headers
        .get("Session-Expires")
        .or_else(|| headers.get("x"))?;
    let mut parts = value.split(';');
    let seconds = parts.next()?.trim().parse::<u64>().ok()?;
    let refresher = parts.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("refresher") {
            return None;
        }
        match value.trim().to_ascii_lowercase().as_str() {
            "uac" => Some(Refresher::Uac),
            "uas" => Some(Refresher::Uas),
            _ => None,
        }
    });
    Some((seconds, refresher))
}

fn min_se(headers: &crate::sip::message::Headers) -> Option<u64> {
    headers
        .get("Min-SE")?
        .split(';')
        .next()?
        .trim()
        .parse()
        .ok()
}

fn supports_timer(headers: &crate::sip::message::Headers) -> bool {
    headers
        .values("Supported")
        .chain(headers.values("Require"))
        .chain(headers.values("k"))
        .any(|o| o.trim().eq_ignore_ascii_case("timer"))
}

fn allows_update(headers: &crate::sip::message::Headers) -> bool {
    headers
        .values("Allow")
        .any(|m| m.trim().eq_ignore_ascii_case("UPDATE"))
}

/// One leg's timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LegTimer {
    interval: Duration,
    /// We refresh (else the phone does, and we watch).
    we_refresh: bool,
    /// The phone supports `timer` (our answers to its refreshes then require it).
    supported: bool,
    /// Refresh by UPDATE (the phone allows it), else by re-INVITE.
    update: bool,
}

/// A call's session timers.
#[derive(Debug, Clone, Default)]
pub(super) struct SessionTimers {
    /// The caller's INVITE: supports `timer`; its `Session-Expires`.
    caller_supports: bool,
    caller_asks: Option<(u64, Option<Refresher>)>,
    caller_allows_update: bool,
    /// The interval offered to the callee (raised once by its 422).
    offered: Option<Duration>,
    retried: bool,
    legs: [Option<LegTimer>; 2],
    /// Our refresh in flight per leg.
    refreshing: [Option<TxId>; 2],
}

impl SessionTimers {
    /// Forgets `side`'s timer (its phone was replaced by a transfer).
    pub(super) fn forget(&mut self, side: Side) {
        self.legs[side.index()] = None;
        self.refreshing[side.index()] = None;
    }

    /// The caller's INVITE, checked: `Err(min_se)` when its interval is below ours (422).
    pub(super) fn of(invite: &Request, ours: Duration, min: Duration) -> Result<Self, u64> {
        let asks = session_expires(&invite.headers);
        if let Some((seconds, _)) = asks
            && seconds < min.as_secs()
        {
            return Err(min.as_secs());
        }
        Ok(Self {
            caller_supports: supports_timer(&invite.headers),
            caller_asks: asks,
            caller_allows_update: allows_update(&invite.headers),
            offered: Some(ours),
            ..Self::default()
        })
    }
}

/// The deadline by which a refresh from the phone must have come (RFC 4028 section 10).
fn expiry(interval: Duration) -> Duration {
    interval - (interval / 3).min(Duration::from_secs(32))
}

impl Core {
    /// Our INVITE to the callee offers timers.
    pub(super) fn offer_session_timer(&self, call: CallRef, invite: &mut Request) {
        let Some(offered) = self.calls.get(&call).and_then(|r| r.timers.offered) else {
            return;
        };
        invite
            .headers
            .push("Session-Expires", offered.as_secs().to_string());
        invite
            .headers
            .push("Min-SE", self.settings.min_se.as_secs().to_string());
    }

    /// The callee answered 422: our INVITE goes again with its Min-SE (once). False when
    /// the 422 is the call's final answer.
    pub(super) fn retry_after_422(&mut self, call: CallRef, refusal: &Response) -> bool {
        let ours = self.settings.session_expires;
        let Some(record) = self.calls.get_mut(&call) else {
            return false;
        };
        let Some(wanted) = min_se(&refusal.headers) else {
            return false;
        };
        if record.timers.retried {
            return false;
        }
        record.timers.retried = true;
        record.timers.offered = Some(Duration::from_secs(wanted).max(ours));
        tracing::info!(call_id = %record.key, min_se = wanted, "callee asked for a longer session interval (422); INVITE again");
        true
    }

    /// The callee's 2xx: its leg's timer, if it does timers.
    pub(super) fn callee_timer(&mut self, call: CallRef, ok: &Response) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let Some((seconds, refresher)) = session_expires(&ok.headers) else {
            return;
        };
        record.timers.legs[Side::B.index()] = Some(LegTimer {
            interval: Duration::from_secs(seconds.max(1)),
            // The callee's 2xx names the refresher of our INVITE's dialog: uac is us.
            we_refresh: refresher != Some(Refresher::Uas),
            supported: supports_timer(&ok.headers),
            update: allows_update(&ok.headers),
        });
    }

    /// Our 2xx to the caller: its leg's timer and the headers that say so.
    pub(super) fn caller_timer(&mut self, call: CallRef, ok: &mut Response) {
        let ours = self.settings.session_expires;
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let timers = &mut record.timers;
        let leg = match (timers.caller_supports, timers.caller_asks) {
            (false, None) => None,
            // A proxy on the way asked for timers the caller cannot refresh: we do.
            (false, Some((seconds, _))) => Some(LegTimer {
                interval: Duration::from_secs(seconds).min(ours),
                we_refresh: true,
                supported: false,
                update: timers.caller_allows_update,
            }),
            (true, asks) => Some(LegTimer {
                interval: asks.map_or(ours, |(s, _)| Duration::from_secs(s).min(ours)),
                we_refresh: matches!(asks, Some((_, Some(Refresher::Uas)))),
                supported: true,
                update: timers.caller_allows_update,
            }),
        };
        timers.legs[Side::A.index()] = leg;
        if let Some(leg) = leg {
            stamp(ok, leg);
        }
    }

    /// Arms both legs' timers at the answer.
    pub(super) fn arm_session_timers(&mut self, now: Instant, call: CallRef) {
        for side in [Side::A, Side::B] {
            self.arm_leg(now, call, side);
        }
    }

    fn arm_leg(&mut self, now: Instant, call: CallRef, side: Side) {
        let Some(leg) = self
            .calls
            .get(&call)
            .and_then(|r| r.timers.legs[side.index()])
        else {
            return;
        };
        if leg.we_refresh {
            self.set_timer(now, call, CallTimer::SessionRefresh(side), leg.interval / 2);
        } else {
            self.set_timer(
                now,
                call,
                CallTimer::SessionExpiry(side),
                expiry(leg.interval),
            );
        }
    }

    /// A re-INVITE or UPDATE from `side`: a refresh of its leg (and of the interval or the
    /// refresher, when it says so).
    pub(super) fn session_refreshed(
        &mut self,
        now: Instant,
        call: CallRef,
        side: Side,
        request: &Request,
    ) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(leg) = record.timers.legs[side.index()].as_mut() else {
            return;
        };
        if let Some((seconds, refresher)) = session_expires(&request.headers) {
            leg.interval = Duration::from_secs(seconds.max(1));
            // refresher=uas: the phone hands the refreshing to us.
            let we_refresh = refresher == Some(Refresher::Uas);
            if we_refresh != leg.we_refresh {
                leg.we_refresh = we_refresh;
                self.stop_timer(call, CallTimer::SessionRefresh(side));
                self.stop_timer(call, CallTimer::SessionExpiry(side));
            }
        }
        self.arm_leg(now, call, side);
    }

    /// Adds the leg's `Session-Expires` (and `Require: timer`) to our 2xx to a refresh from
    /// `side` (else the phone would take its timer as off).
    pub(super) fn stamp_session(&self, call: CallRef, side: Side, ok: &mut Response) {
        if let Some(leg) = self
            .calls
            .get(&call)
            .and_then(|r| r.timers.legs[side.index()])
        {
            stamp(ok, leg);
        }
    }

    /// An UPDATE without SDP: a refresh (or target refresh) of `side`'s own leg, answered
    /// here.
    pub(super) fn answer_refresh(
        &mut self,
        now: Instant,
        call: CallRef,
        side: Side,
        tx: TxId,
        update: &Request,
    ) {
        self.session_refreshed(now, call, side, update);
        let mut ok = response(update, 200, "OK", None);
        ok.headers.push("Contact", self.contact());
        self.stamp_session(call, side, &mut ok);
        self.transactions.respond(now, tx, &ok);
    }

    /// Time to refresh `side`'s leg.
    pub(super) fn send_refresh(&mut self, now: Instant, call: CallRef, side: Side) {
        let (local, branch) = (self.local(), self.ids.branch());
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(leg) = record.timers.legs[side.index()] else {
            return;
        };
        if record.reinvite.is_some() || record.relocating.is_some() || record.transfer.is_some() {
            // An offer under way refreshes nothing yet and would make ours glare.
            self.set_timer(
                now,
                call,
                CallTimer::SessionRefresh(side),
                Duration::from_secs(2),
            );
            return;
        }
        let se = format!("{};refresher=uac", leg.interval.as_secs());
        let (peer, request) = if leg.update {
            let (peer, mut update) =
                record
                    .dialog(side)
                    .request(Method::Update, None, local, &branch);
            update
                .headers
                .push("Contact", crate::dialog::contact(local));
            (peer, update)
        } else {
            let Some(body) = record.last_sdp[side.other().index()]
                .clone()
                .and_then(|sdp| match &record.media {
                    Some(_) => record.rewrite_to(side, &sdp).ok(),
                    None => Some(sdp),
                })
            else {
                tracing::info!(call_id = %record.key, side = side.party(), "no SDP to refresh the session with by re-INVITE; leg left to its keepalive");
                record.timers.legs[side.index()] = None;
                return;
            };
            record
                .dialog(side)
                .invite(local, &branch, "application/sdp", body)
        };
        let mut request = request;
        request.headers.push("Session-Expires", se);
        request.headers.push("Supported", "timer");
        if leg.supported {
            request.headers.push("Require", "timer");
        }
        let tag = TxTag {
            call,
            side,
            flow: Flow::Refresh,
        };
        let tx = self.transactions.send(now, peer, request, tag);
        if let Some(record) = self.calls.get_mut(&call) {
            record.timers.refreshing[side.index()] = Some(tx);
        }
    }

    /// The answer to our refresh of `side`.
    pub(super) fn on_refresh_response(
        &mut self,
        now: Instant,
        call: CallRef,
        side: Side,
        tx: TxId,
        answer: &Response,
    ) {
        if answer.status < 200 {
            return;
        }
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        if record.timers.refreshing[side.index()] != Some(tx) {
            return;
        }
        record.timers.refreshing[side.index()] = None;
        let invite = answer.cseq().is_some_and(|c| c.method == Method::Invite);
        if (200..300).contains(&answer.status) {
            if invite {
                self.ack_reinvite(call, side, tx, answer);
            }
            if let Some(leg) = self
                .calls
                .get_mut(&call)
                .and_then(|r| r.timers.legs[side.index()].as_mut())
                && let Some((seconds, refresher)) = session_expires(&answer.headers)
            {
                leg.interval = Duration::from_secs(seconds.max(1));
                leg.we_refresh = refresher != Some(Refresher::Uas);
            }
            return self.arm_leg(now, call, side);
        }
        let leg = record.timers.legs[side.index()].as_mut();
        match (answer.status, leg) {
            (491, _) => {
                self.set_timer(
                    now,
                    call,
                    CallTimer::SessionRefresh(side),
                    Duration::from_secs(2),
                );
            }
            (405 | 501, Some(leg)) if leg.update => {
                leg.update = false;
                self.send_refresh(now, call, side);
            }
            (422, Some(leg)) => {
                if let Some(wanted) = min_se(&answer.headers) {
                    leg.interval = leg.interval.max(Duration::from_secs(wanted));
                }
                self.send_refresh(now, call, side);
            }
            (status, _) => {
                let reason = format!(
                    "the {}'s session refresh (RFC 4028) was answered {status} {}",
                    side.party(),
                    answer.reason
                );
                self.end_answered(now, call, HangupSide::System, reason);
            }
        }
    }

    /// Our refresh of `side` was never answered.
    pub(super) fn on_refresh_timeout(&mut self, now: Instant, call: CallRef, side: Side, tx: TxId) {
        let Some(record) = self.calls.get(&call) else {
            return;
        };
        if record.timers.refreshing[side.index()] != Some(tx) || record.finished {
            return;
        }
        let reason = format!(
            "the {} never answered its session refresh (RFC 4028)",
            side.party()
        );
        self.end_answered(now, call, HangupSide::System, reason);
    }

    /// The phone of `side` stopped refreshing its session.
    pub(super) fn on_session_expired(&mut self, now: Instant, call: CallRef, side: Side) {
        let Some(record) = self.calls.get(&call) else {
            return;
        };
        if record.finished || !record.state.answered() {
            return;
        }
        let interval = record.timers.legs[side.index()].map_or(0, |l| l.interval.as_secs());
        tracing::info!(call_id = %record.key, side = side.party(), interval, "session expired: no refresh");
        let reason = format!(
            "the {} stopped refreshing the session (RFC 4028 session timer, {interval} s)",
            side.party()
        );
        self.end_answered(now, call, HangupSide::System, reason);
    }
}

/// `Session-Expires` (who refreshes, from the phone's side: `uac` is the phone when it
/// refreshes) and `Require: timer` on our 2xx.
fn stamp(ok: &mut Response, leg: LegTimer) {
    let refresher = if leg.we_refresh { "uas" } else { "uac" };
    ok.headers.set(
        "Session-Expires",
        format!("{};refresher={refresher}", leg.interval.as_secs()),
    );
    if leg.supported {
        ok.headers.push("Require", "timer");
    }
}

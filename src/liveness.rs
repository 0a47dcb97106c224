//! Heartbeat and authorization rules of one client connection, as a clock-free state machine.
//! Owns the exact due timing: ticks every interval from accept, close after > 2 intervals silent.
//!
//! The connection driver feeds it "a frame arrived", "a uid was bound/unbound" and "the timer
//! fired at `now`", and asks it when to wake up next. Keeping the rule free of sockets and clocks
//! lets the unit tests walk through every boundary with synthetic instants.

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// What the connection must do after a timer check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing due yet.
    Idle,
    /// `tick` mode: send one heartbeat now.
    SendHeartbeat,
    /// Close now (forced): no frame for more than two intervals.
    HeartbeatTimeout,
    /// Close now (forced): still unbound when the authorization deadline passed.
    AuthorizeTimeout,
}

/// Per-connection liveness settings, shared by all connections of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessRules {
    /// Zero disables ticks and the timeout.
    pub interval: Duration,
    /// `tick` mode: the server sends a heartbeat at every tick.
    pub tick_mode: bool,
    /// Zero disables the authorization deadline.
    pub authorize: Duration,
}

/// A [`Liveness`] as plain data: every instant as a duration from the moment of export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivenessRecord {
    pub since_last_receive: Duration,
    pub until_next_tick: Option<Duration>,
    /// `None`: no authorization deadline is running (bound, or switched off).
    pub until_authorize: Option<Duration>,
}

/// The state of one connection.
#[derive(Debug, Clone)]
pub struct Liveness {
    rules: LivenessRules,
    last_receive: Instant,
    next_tick: Option<Instant>,
    auth_deadline: Option<Instant>,
}

impl Liveness {
    /// A connection admitted at `now`: first tick at `now + interval`, authorization armed.
    pub fn new(rules: LivenessRules, now: Instant) -> Self {
        Liveness {
            rules,
            last_receive: now,
            next_tick: (!rules.interval.is_zero()).then(|| now + rules.interval),
            auth_deadline: (!rules.authorize.is_zero()).then(|| now + rules.authorize),
        }
    }

    /// Any complete inbound frame (data, heartbeat, even malformed) refreshes liveness.
    pub fn on_frame(&mut self, now: Instant) {
        self.last_receive = now;
    }

    /// A uid was bound: the authorization deadline no longer applies.
    pub fn on_bound(&mut self) {
        self.auth_deadline = None;
    }

    /// The uid was cleared: the full authorization timeout starts again from `now`.
    pub fn on_unbound(&mut self, now: Instant) {
        if !self.rules.authorize.is_zero() {
            self.auth_deadline = Some(now + self.rules.authorize);
        }
    }

    /// When the client last sent a frame.
    pub fn last_receive(&self) -> Instant {
        self.last_receive
    }

    /// The state as durations relative to `now` (instants do not cross processes).
    pub fn export(&self, now: Instant) -> LivenessRecord {
        LivenessRecord {
            since_last_receive: now.saturating_duration_since(self.last_receive),
            until_next_tick: self.next_tick.map(|t| t.saturating_duration_since(now)),
            until_authorize: self.auth_deadline.map(|t| t.saturating_duration_since(now)),
        }
    }

    /// The state `record` describes, taken up at `now` under `rules`. A rule switched off since
    /// the export stays off; one switched on starts from `now`.
    pub fn import(rules: LivenessRules, record: &LivenessRecord, now: Instant) -> Self {
        let fresh = Liveness::new(rules, now);
        Liveness {
            rules,
            last_receive: now.checked_sub(record.since_last_receive).unwrap_or(now),
            next_tick: fresh
                .next_tick
                .map(|t| record.until_next_tick.map_or(t, |d| now + d)),
            auth_deadline: match (rules.authorize.is_zero(), record.until_authorize) {
                (true, _) | (false, None) => None,
                (false, Some(d)) => Some(now + d),
            },
        }
    }

    /// When the driver must call [`Liveness::check`] next, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.next_tick, self.auth_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Applies every rule that is due at `now`. Call again until it returns `Idle`.
    ///
    /// A late wake-up skips missed ticks (like Go's ticker, which drops them): lateness can only
    /// delay a timeout, never advance it.
    pub fn check(&mut self, now: Instant) -> Verdict {
        if let Some(deadline) = self.auth_deadline {
            if now >= deadline {
                self.auth_deadline = None;
                return Verdict::AuthorizeTimeout;
            }
        }
        let Some(tick) = self.next_tick else {
            return Verdict::Idle;
        };
        if now < tick {
            return Verdict::Idle;
        }
        let interval = self.rules.interval;
        let mut next = tick + interval;
        while next <= now {
            next += interval;
        }
        self.next_tick = Some(next);
        // due: close when lastReceive < tickTime - 2·interval.
        if now
            .checked_sub(interval * 2)
            .is_some_and(|limit| self.last_receive < limit)
        {
            return Verdict::HeartbeatTimeout;
        }
        if self.rules.tick_mode {
            Verdict::SendHeartbeat
        } else {
            Verdict::Idle
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_secs(10);
    const EPS: Duration = Duration::from_millis(1);

    fn rules(tick: bool, auth: u64) -> LivenessRules {
        LivenessRules {
            interval: I,
            tick_mode: tick,
            authorize: Duration::from_secs(auth),
        }
    }

    /// Runs the machine from `t0` until `end`, waking at every deadline (plus `late`), feeding
    /// frames at the given offsets; returns the verdicts with their offsets.
    fn run(
        r: LivenessRules,
        frames: &[Duration],
        end: Duration,
        late: Duration,
    ) -> Vec<(Duration, Verdict)> {
        let t0 = Instant::now();
        let mut l = Liveness::new(r, t0);
        let mut out = vec![];
        let mut fi = 0;
        for _ in 0..100_000 {
            let Some(dl) = l.next_deadline() else { break };
            let wake = dl + late;
            while fi < frames.len() && t0 + frames[fi] < wake {
                l.on_frame(t0 + frames[fi]);
                fi += 1;
            }
            if wake - t0 > end {
                break;
            }
            loop {
                let v = l.check(wake);
                if v == Verdict::Idle {
                    break;
                }
                out.push((wake - t0, v));
                if matches!(v, Verdict::HeartbeatTimeout | Verdict::AuthorizeTimeout) {
                    return out;
                }
            }
        }
        out
    }

    #[test]
    fn silent_client_closed_at_second_tick() {
        let v = run(rules(false, 0), &[], I * 10, EPS);
        assert_eq!(v, vec![(I * 2 + EPS, Verdict::HeartbeatTimeout)]);
    }

    #[test]
    fn silence_after_traffic_closes_between_two_and_three_intervals() {
        for offset_ms in [1u64, 2500, 5000, 9999] {
            let last = I * 3 + Duration::from_millis(offset_ms);
            let frames: Vec<_> = (0..=3).map(|k| I * k).chain([last]).collect();
            let v = run(rules(false, 0), &frames, I * 20, EPS);
            let (at, verdict) = v[0];
            assert_eq!(verdict, Verdict::HeartbeatTimeout);
            let silence = at - last;
            assert!(silence > I * 2 && silence <= I * 3 + EPS, "{silence:?}");
        }
    }

    #[test]
    fn client_sending_every_interval_or_faster_stays() {
        for period_ms in [10_000u64, 9_000, 3_000] {
            let p = Duration::from_millis(period_ms);
            let frames: Vec<_> = (1..200).map(|k| p * k).collect();
            let v = run(rules(false, 0), &frames, I * 12, EPS);
            assert!(v.is_empty(), "period {period_ms}: {v:?}");
        }
    }

    #[test]
    fn tick_mode_sends_every_interval_starting_after_one() {
        let frames: Vec<_> = (1..200).map(|k| I * k - EPS * 2).collect();
        let v = run(rules(true, 0), &frames, I * 5 + EPS * 2, EPS);
        let at: Vec<_> = v.iter().map(|(t, _)| *t).collect();
        assert_eq!(at, (1..=5).map(|k| I * k + EPS).collect::<Vec<_>>());
        assert!(v.iter().all(|(_, x)| *x == Verdict::SendHeartbeat));
    }

    #[test]
    fn tick_mode_still_times_out_a_silent_client() {
        let v = run(rules(true, 0), &[], I * 10, EPS);
        assert_eq!(
            v,
            vec![
                (I + EPS, Verdict::SendHeartbeat),
                (I * 2 + EPS, Verdict::HeartbeatTimeout)
            ]
        );
    }

    #[test]
    fn zero_interval_disables_everything() {
        let r = LivenessRules {
            interval: Duration::ZERO,
            tick_mode: true,
            authorize: Duration::ZERO,
        };
        let l = Liveness::new(r, Instant::now());
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    fn authorization_deadline_ignores_frames_and_is_cancelled_by_bind() {
        let frames: Vec<_> = (1..100).map(|k| Duration::from_secs(1) * k).collect();
        let v = run(rules(false, 5), &frames, I * 3, EPS);
        assert_eq!(
            v,
            vec![(Duration::from_secs(5) + EPS, Verdict::AuthorizeTimeout)]
        );

        let t0 = Instant::now();
        let mut l = Liveness::new(rules(false, 5), t0);
        l.on_bound();
        assert_eq!(l.next_deadline(), Some(t0 + I));
        // Unbind at 7 s re-arms the full timeout from then.
        l.on_unbound(t0 + Duration::from_secs(7));
        assert_eq!(l.next_deadline(), Some(t0 + I));
        l.on_frame(t0 + I);
        assert_eq!(l.check(t0 + I), Verdict::Idle);
        assert_eq!(l.next_deadline(), Some(t0 + Duration::from_secs(12)));
        assert_eq!(
            l.check(t0 + Duration::from_secs(12)),
            Verdict::AuthorizeTimeout
        );
    }

    #[test]
    fn late_wakeup_skips_missed_ticks() {
        let t0 = Instant::now();
        let mut l = Liveness::new(rules(true, 0), t0);
        l.on_frame(t0 + I * 3);
        assert_eq!(l.check(t0 + I * 3 + EPS), Verdict::SendHeartbeat);
        assert_eq!(l.check(t0 + I * 3 + EPS), Verdict::Idle);
        assert_eq!(l.next_deadline(), Some(t0 + I * 4));
    }
}

//! Limits on what one client may take: the packet-rate bucket of one connection, and the table
//! of source IPs (accept rate, open connections) that every shard of a gate shares.
//! Sans-IO: clocks come in as `Instant`, so both are unit-tested over simulated time.
//!
//! Both limits are token buckets written as GCRA (the generic cell rate algorithm): a bucket
//! is one instant, the *theoretical arrival time* (`tat`) of the next conforming event. An
//! event at `now` conforms when `tat − now ≤ (burst − 1) × interval`; it then moves `tat` on by
//! one `interval` (from `now` if `tat` is in the past: the bucket was full). A full bucket lets
//! `burst` events through at once, then one per `interval`; a refused event takes nothing.
//! One comparison and one addition per event, no division.
//!
//! [`IpLimits`] is touched at accept and at release only, never per message. Its memory is
//! bounded (see [`IDLE_CAP`]); `docs/ops/limits.md` has the operator's view.

use std::collections::hash_map::{Entry, HashMap, RandomState};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::logging::Throttle;

/// Whether an event at `now` conforms to a bucket of `interval_ns` per token that holds
/// `tolerance_ns / interval_ns + 1` tokens; a conforming event takes a token.
#[inline]
fn conform(tat: &mut Instant, now: Instant, interval_ns: u64, tolerance_ns: u64) -> bool {
    let interval = Duration::from_nanos(interval_ns);
    if *tat <= now {
        *tat = now + interval;
        return true;
    }
    if (*tat - now) > Duration::from_nanos(tolerance_ns) {
        return false;
    }
    *tat += interval;
    true
}

/// A rate and a burst as a bucket's constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Nanoseconds per token (`1 s / rate`; a rate is at least 1 per second, so this fits).
    interval_ns: u32,
    /// `(burst − 1) × interval_ns`.
    tolerance_ns: u64,
}

impl Rate {
    /// `per_second` events per second with bursts of up to `burst`; `None` when `per_second`
    /// is 0 (off). A burst of 0 is taken as 1.
    pub fn new(per_second: u32, burst: u32) -> Option<Rate> {
        if per_second == 0 {
            return None;
        }
        let interval_ns = (1_000_000_000 / u64::from(per_second)).max(1) as u32;
        Some(Rate {
            interval_ns,
            tolerance_ns: u64::from(burst.max(1) - 1) * u64::from(interval_ns),
        })
    }

    /// How long a bucket of this rate takes to fill up from empty.
    pub fn refill(&self) -> Duration {
        Duration::from_nanos(self.tolerance_ns + u64::from(self.interval_ns))
    }
}

/// The inbound packet bucket of one connection (`packetRate`, `packetBurst`): 32 bytes, in the
/// connection machine. It starts full, also for a connection taken over by `--upgrade`.
#[derive(Debug, Clone, Copy)]
pub struct PacketBucket {
    tat: Instant,
    rate: Rate,
}

impl PacketBucket {
    /// A full bucket at `now`.
    pub fn new(rate: Rate, now: Instant) -> Self {
        PacketBucket { tat: now, rate }
    }

    /// Takes a token for a packet that arrived at `now`; `false` = over the rate.
    #[inline]
    pub fn take(&mut self, now: Instant) -> bool {
        conform(
            &mut self.tat,
            now,
            u64::from(self.rate.interval_ns),
            self.rate.tolerance_ns,
        )
    }
}

/// Why a new connection from a source IP was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpRefusal {
    /// `ipAcceptRate`: the IP connected too often.
    Rate,
    /// `ipMaxConns`: the IP has as many connections open as it may.
    Conns,
}

/// How many entries of source IPs without an open connection (kept only for their accept-rate
/// bucket) the table holds at most. Entries of IPs with open connections are never evicted:
/// there are at most as many of those as open connections, which `maxConnNum` bounds. At the
/// cap a stripe forgets all its idle entries at once (those IPs start again with a full
/// bucket): a scan from many addresses cannot grow the table beyond ~`IDLE_CAP` × 64 bytes.
pub const IDLE_CAP: usize = 65_536;
const STRIPES: usize = 16;
const STRIPE_CAP: usize = IDLE_CAP / STRIPES;
/// A stripe sweeps out its expired entries when it grows past this, then past twice what
/// remained (amortised O(1) per insert).
const FIRST_SWEEP: usize = 64;

/// One source IP: its open connections (all servers of the gate) and its accept bucket.
#[derive(Debug)]
struct IpEntry {
    open: u32,
    /// The accept bucket's theoretical arrival time; `≤ now` = full. Without an accept rate it
    /// stays at the entry's creation.
    tat: Instant,
}

#[derive(Debug)]
struct Stripe {
    map: HashMap<IpAddr, IpEntry>,
    sweep_at: usize,
}

/// Source IPs with open connections or recent accepts, shared by every shard and server of a
/// gate (SO_REUSEPORT spreads one IP's connections over the shards). Striped by a keyed hash,
/// so shards accepting at once rarely wait on each other and no client picks the stripe.
///
/// IPv6 addresses count by their /64 prefix: one host gets a whole /64 and can pick any
/// address in it. IPv4-mapped IPv6 arrives here as IPv4 (`connection::client_ip`).
#[derive(Debug)]
pub struct IpLimits {
    /// `ipMaxConns`; 0 = no limit (open connections are still counted).
    max_conns: u32,
    /// `ipAcceptRate` and `ipAcceptBurst`.
    accept: Option<Rate>,
    stripes: Box<[Mutex<Stripe>]>,
    hasher: RandomState,
    /// Idle entries forgotten at the cap (for tests and the log).
    evicted: AtomicU64,
}

impl IpLimits {
    /// The table for these limits, or `None` when both are off.
    pub fn new(max_conns: u32, accept: Option<Rate>) -> Option<IpLimits> {
        if max_conns == 0 && accept.is_none() {
            return None;
        }
        Some(IpLimits {
            max_conns,
            accept,
            stripes: (0..STRIPES)
                .map(|_| {
                    Mutex::new(Stripe {
                        map: HashMap::new(),
                        sweep_at: FIRST_SWEEP,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            evicted: AtomicU64::new(0),
        })
    }

    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
            v4 => v4,
        }
    }

    fn stripe(&self, key: &IpAddr) -> std::sync::MutexGuard<'_, Stripe> {
        let i = (self.hasher.hash_one(key) as usize) % STRIPES;
        // A panic while holding it leaves consistent counts (every change is one statement).
        self.stripes[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new connection from `ip` at `now`: counts it open, or says why it may not be.
    /// Every `Ok` must be matched by one [`IpLimits::close`].
    pub fn open(&self, ip: IpAddr, now: Instant) -> Result<(), IpRefusal> {
        let key = Self::key(ip);
        let mut s = self.stripe(&key);
        if !s.map.contains_key(&key) {
            s.make_room(now, &self.evicted);
        }
        let e = s.map.entry(key).or_insert(IpEntry { open: 0, tat: now });
        if self.max_conns > 0 && e.open >= self.max_conns {
            return Err(IpRefusal::Conns);
        }
        if let Some(r) = self.accept {
            if !conform(&mut e.tat, now, u64::from(r.interval_ns), r.tolerance_ns) {
                return Err(IpRefusal::Rate);
            }
        }
        e.open += 1;
        Ok(())
    }

    /// A connection from `ip` handed over by `--upgrade`: counted open whatever the limits
    /// (it was admitted by the previous process); takes no accept token.
    pub fn adopt(&self, ip: IpAddr, now: Instant) {
        let key = Self::key(ip);
        let mut s = self.stripe(&key);
        if !s.map.contains_key(&key) {
            s.make_room(now, &self.evicted);
        }
        s.map
            .entry(key)
            .or_insert(IpEntry { open: 0, tat: now })
            .open += 1;
    }

    /// A connection from `ip` counted by `open` or `adopt` has ended. The entry goes once no
    /// connection is open and its accept bucket is full again (or, later, at a sweep).
    pub fn close(&self, ip: IpAddr, now: Instant) {
        let key = Self::key(ip);
        let mut s = self.stripe(&key);
        if let Entry::Occupied(mut o) = s.map.entry(key) {
            let e = o.get_mut();
            e.open = e.open.saturating_sub(1);
            if e.open == 0 && e.tat <= now {
                o.remove();
            }
        }
    }

    /// Connections open from `ip` (its /64 for IPv6).
    pub fn open_count(&self, ip: IpAddr) -> u32 {
        let key = Self::key(ip);
        self.stripe(&key).map.get(&key).map_or(0, |e| e.open)
    }

    /// Entries held now, all stripes.
    pub fn len(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Idle entries forgotten because the table was at its cap, since the start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

impl Stripe {
    /// Before a new entry: once the stripe has grown enough since the last sweep, sweeps out
    /// expired idle entries, and forgets every idle one if more than half the stripe's share of
    /// [`IDLE_CAP`] is still left. The next sweep comes after as many inserts as the stripe
    /// holds (at most half its share): amortised O(1) per insert, and at most its share of
    /// idle entries in between.
    fn make_room(&mut self, now: Instant, evicted: &AtomicU64) {
        if self.map.len() < self.sweep_at {
            return;
        }
        self.map.retain(|_, e| e.open > 0 || e.tat > now);
        let idle = self.map.values().filter(|e| e.open == 0).count();
        if idle > STRIPE_CAP / 2 {
            self.map.retain(|_, e| e.open > 0);
            evicted.fetch_add(idle as u64, Ordering::Relaxed);
            tracing::warn!(
                forgotten = idle,
                "source IP table full: accept-rate state of idle addresses forgotten"
            );
        }
        let len = self.map.len();
        self.sweep_at = len + len.clamp(FIRST_SWEEP, STRIPE_CAP / 2);
    }
}

/// What a shard logs about limits, each at most once a second ([`Throttle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitLog {
    PacketDropped = 0,
    PacketClosed = 1,
    IpRate = 2,
    IpConns = 3,
}

thread_local! {
    static LOGS: [Throttle; 4] = const { [const { Throttle::new(Duration::from_secs(1)) }; 4] };
}

/// Whether this shard may log `what` at `now`: `Some(n)` with the lines suppressed since the
/// last one, or `None` (this one is suppressed and counted).
pub fn may_log(what: LimitLog, now: Instant) -> Option<u64> {
    LOGS.with(|l| l[what as usize].allow(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_lets_the_burst_through_then_the_rate() {
        let t0 = Instant::now();
        let mut b = PacketBucket::new(Rate::new(10, 5).unwrap(), t0);
        let at_once = (0..20).filter(|_| b.take(t0)).count();
        assert_eq!(at_once, 5, "the burst");
        // One token every 100 ms afterwards, never early.
        assert!(!b.take(t0 + ms(99)));
        assert!(b.take(t0 + ms(100)));
        assert!(!b.take(t0 + ms(100)));
        assert!(!b.take(t0 + ms(199)));
        assert!(b.take(t0 + ms(200)));
        // Idle for 10 s: full again, but no more than the burst.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!((0..20).filter(|_| b.take(t1)).count(), 5);
    }

    #[test]
    fn a_steady_flood_gets_burst_plus_rate_times_elapsed() {
        let t0 = Instant::now();
        let (rate, burst) = (50u32, 20u32);
        let mut b = PacketBucket::new(Rate::new(rate, burst).unwrap(), t0);
        // 1000 packets a second for 3 s, one every millisecond.
        let passed = (0..3000u64).filter(|i| b.take(t0 + ms(*i))).count() as u64;
        let expected = u64::from(burst) + u64::from(rate) * 3;
        assert!(
            passed.abs_diff(expected) <= 1,
            "{passed} passed, expected {expected}"
        );
    }

    #[test]
    fn a_client_at_its_rate_is_never_refused() {
        let t0 = Instant::now();
        let mut b = PacketBucket::new(Rate::new(100, 1).unwrap(), t0);
        for i in 0..1000u64 {
            assert!(b.take(t0 + ms(10 * i)), "packet {i}");
        }
    }

    #[test]
    fn rate_constants() {
        assert_eq!(Rate::new(0, 10), None);
        let r = Rate::new(4, 0).unwrap();
        assert_eq!((r.interval_ns, r.tolerance_ns), (250_000_000, 0));
        assert_eq!(r.refill(), ms(250));
        let r = Rate::new(1, 3).unwrap();
        assert_eq!(r.refill(), Duration::from_secs(3));
        let r = Rate::new(2_000_000_000, u32::MAX).unwrap();
        assert_eq!(r.interval_ns, 1);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn open_connections_per_ip_are_capped() {
        let t = IpLimits::new(3, None).unwrap();
        let now = Instant::now();
        for _ in 0..3 {
            t.open(ip("10.0.0.2"), now).unwrap();
        }
        assert_eq!(t.open(ip("10.0.0.2"), now), Err(IpRefusal::Conns));
        t.open(ip("10.0.0.3"), now).unwrap();
        assert_eq!(t.open_count(ip("10.0.0.2")), 3);
        t.close(ip("10.0.0.2"), now);
        t.open(ip("10.0.0.2"), now).unwrap();
        assert_eq!(t.open(ip("10.0.0.2"), now), Err(IpRefusal::Conns));
        // Every entry goes with its last connection.
        for _ in 0..3 {
            t.close(ip("10.0.0.2"), now);
        }
        t.close(ip("10.0.0.3"), now);
        assert!(t.is_empty());
        // A close without an entry (cannot happen, but must not underflow or insert).
        t.close(ip("10.0.0.9"), now);
        assert!(t.is_empty());
    }

    #[test]
    fn adopted_connections_count_beyond_the_limit() {
        let t = IpLimits::new(1, None).unwrap();
        let now = Instant::now();
        t.adopt(ip("10.0.0.2"), now);
        t.adopt(ip("10.0.0.2"), now);
        assert_eq!(t.open_count(ip("10.0.0.2")), 2);
        assert_eq!(t.open(ip("10.0.0.2"), now), Err(IpRefusal::Conns));
        t.close(ip("10.0.0.2"), now);
        assert_eq!(t.open(ip("10.0.0.2"), now), Err(IpRefusal::Conns));
        t.close(ip("10.0.0.2"), now);
        t.open(ip("10.0.0.2"), now).unwrap();
    }

    #[test]
    fn accept_rate_per_ip() {
        let t = IpLimits::new(0, Rate::new(2, 3)).unwrap();
        let t0 = Instant::now();
        let a = ip("10.0.0.2");
        let ok = (0..10).filter(|_| t.open(a, t0).is_ok()).count();
        assert_eq!(ok, 3, "the burst");
        assert_eq!(t.open(a, t0), Err(IpRefusal::Rate));
        assert!(t.open(ip("10.0.0.3"), t0).is_ok(), "another IP has its own");
        assert!(t.open(a, t0 + ms(499)).is_err());
        assert!(t.open(a, t0 + ms(500)).is_ok());
        // Closed, but the bucket is not full yet: the entry stays until it is.
        for _ in 0..4 {
            t.close(a, t0 + ms(600));
        }
        assert_eq!(t.open_count(a), 0);
        assert_eq!(t.len(), 2);
        // A refusal took nothing: full again 2 s after the last accepted one.
        t.close(ip("10.0.0.3"), t0 + Duration::from_secs(5));
        assert_eq!(t.len(), 1, "expired and idle: removed at its close");
    }

    #[test]
    fn ipv6_counts_by_64_prefix() {
        let t = IpLimits::new(2, None).unwrap();
        let now = Instant::now();
        t.open(ip("2001:db8:1:2::1"), now).unwrap();
        t.open(ip("2001:db8:1:2:ffff::7"), now).unwrap();
        assert_eq!(
            t.open(ip("2001:db8:1:2:abcd::"), now),
            Err(IpRefusal::Conns)
        );
        t.open(ip("2001:db8:1:3::1"), now).unwrap();
        assert_eq!(t.open_count(ip("2001:db8:1:2::99")), 2);
    }

    #[test]
    fn a_scan_of_many_addresses_stays_bounded() {
        let t = IpLimits::new(0, Rate::new(1, 10)).unwrap();
        let t0 = Instant::now();
        // Expired entries are swept: one address a millisecond, each expired 1 s later.
        for i in 0..100_000u32 {
            let now = t0 + ms(u64::from(i));
            let a = IpAddr::from(i.to_be_bytes());
            t.open(a, now).unwrap();
            t.close(a, now);
        }
        assert!(
            t.len() <= 2 * 1_000 + 2 * STRIPES * FIRST_SWEEP,
            "{}",
            t.len()
        );
        assert_eq!(t.evicted(), 0, "sweeping sufficed");
        // All at one instant: nothing expires, the cap forgets idle entries.
        let t = IpLimits::new(0, Rate::new(1, 10)).unwrap();
        let mut open = Vec::new();
        for i in 0..(3 * IDLE_CAP as u32) {
            let a = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            t.open(a, t0).unwrap();
            if i % 1000 == 0 {
                open.push(a); // stays open: never forgotten
            } else {
                t.close(a, t0);
            }
        }
        assert!(t.len() <= IDLE_CAP + open.len(), "{}", t.len());
        assert!(t.evicted() > 0);
        for a in &open {
            assert_eq!(t.open_count(*a), 1);
        }
    }

    #[test]
    fn off_when_both_limits_are_off() {
        assert!(IpLimits::new(0, None).is_none());
        assert!(IpLimits::new(0, Rate::new(0, 5)).is_none());
    }
}

//! The dispatcher's view of the cluster (cluster-protocol.md §3.2, §3.3): which node serves a
//! message route or event. Owns the route table built from the registry's node list and the
//! random/rr/wrr endpoint picks.
//!
//! The table is rebuilt from scratch on every registry change and never patched: a rebuild is
//! cheap (a few nodes × their routes), it resets the rr counters and wrr weights exactly like
//! due's `ReplaceServices`, and a shard can swap the whole table atomically between two packets.
//! Pick state lives in `Cell`s because a table belongs to one shard and is only touched from that
//! shard's thread: picking needs no `&mut`, so a shard can hold it behind an `Rc` and replace it
//! while an older copy is still borrowed by an in-flight task.

use std::cell::Cell;
use std::sync::Arc;

use ahash::AHashMap;

use crate::registry::{endpoint_address, InstanceState, ServiceInstance};

/// How a stateless route chooses among its serving nodes (`etc.cluster.gate.dispatch`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Uniform random over the work bucket (else busy).
    #[default]
    Random,
    /// Per-route counter over the work bucket (else busy).
    RoundRobin,
    /// Smooth weighted round robin over the work bucket (else busy), by instance weight.
    WeightedRoundRobin,
}

impl Strategy {
    /// Reads the configuration text: `random`, `rr` or `wrr` (exact match). Anything else is
    /// `Random`, because that is what due falls back to — an unknown value is not an error there.
    pub fn parse(text: &str) -> Strategy {
        match text {
            "rr" => Strategy::RoundRobin,
            "wrr" => Strategy::WeightedRoundRobin,
            _ => Strategy::Random,
        }
    }

    /// The configuration text of the strategy.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Random => "random",
            Strategy::RoundRobin => "rr",
            Strategy::WeightedRoundRobin => "wrr",
        }
    }
}

/// A node instance as a delivery target: its ID (for logs and Redis checks) and the link
/// `host:port` to dial. Both are shared strings, so handing one out is two reference-count bumps.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointRef {
    pub id: Arc<str>,
    pub address: Arc<str>,
}

/// One endpoint inside a route's state bucket, with its wrr bookkeeping.
#[derive(Debug)]
struct Member {
    endpoint: EndpointRef,
    /// The instance's registry weight. `i64` (like Go's `int`) so sums cannot overflow.
    weight: i64,
    /// Smooth-wrr current weight; starts at 0 on every rebuild.
    current: Cell<i64>,
}

/// Everything the gate knows about one message route.
#[derive(Debug)]
pub struct RouteEntry {
    id: i32,
    internal: bool,
    stateful: bool,
    authorized: bool,
    group: String,
    work: Vec<Member>,
    busy: Vec<Member>,
    hang: Vec<Member>,
    shut: Vec<Member>,
    /// Every endpoint of the route, any state — what stateful delivery checks against.
    by_id: AHashMap<Arc<str>, EndpointRef>,
    /// rr counter, shared by the work and busy buckets as in due.
    counter: Cell<u64>,
}

impl RouteEntry {
    fn new(id: i32, internal: bool, stateful: bool, authorized: bool, group: &str) -> RouteEntry {
        RouteEntry {
            id,
            internal,
            stateful,
            authorized,
            group: group.to_string(),
            work: Vec::new(),
            busy: Vec::new(),
            hang: Vec::new(),
            shut: Vec::new(),
            by_id: AHashMap::new(),
            counter: Cell::new(0),
        }
    }

    pub fn id(&self) -> i32 {
        self.id
    }

    /// Node-to-node only: the gate drops client packets for internal routes.
    pub fn internal(&self) -> bool {
        self.internal
    }

    /// Delivered to the user's bound node (Redis lookup by [`RouteEntry::group`]), not balanced.
    pub fn stateful(&self) -> bool {
        self.stateful
    }

    /// Requires a bound uid; anonymous packets are dropped.
    pub fn authorized(&self) -> bool {
        self.authorized
    }

    /// The alias (node name) of the first instance that registered the route: the Redis hash
    /// field under which a user's node for this route is stored.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The route's endpoint for `node_id` in any state, if that node serves the route.
    pub fn find(&self, node_id: &str) -> Option<&EndpointRef> {
        self.by_id.get(node_id)
    }

    /// How many distinct instances serve the route, in any state.
    pub fn endpoint_count(&self) -> usize {
        self.by_id.len()
    }

    fn bucket(&mut self, state: InstanceState) -> &mut Vec<Member> {
        match state {
            InstanceState::Work => &mut self.work,
            InstanceState::Busy => &mut self.busy,
            InstanceState::Hang => &mut self.hang,
            InstanceState::Shut => &mut self.shut,
        }
    }

    /// The stateless pick: only the work bucket, or the busy one when no node is working; hang
    /// and shut nodes are draining or gone and never get new stateless traffic.
    fn pick(&self, strategy: Strategy, rand: u64) -> Option<&EndpointRef> {
        let bucket = if !self.work.is_empty() {
            &self.work
        } else if !self.busy.is_empty() {
            &self.busy
        } else {
            return None;
        };
        let len = bucket.len() as u64;
        let member = match strategy {
            Strategy::Random => &bucket[(rand % len) as usize],
            Strategy::RoundRobin => {
                // Incremented before use, so with two endpoints the first pick is the second one
                // — due's observable order (`B A B A`).
                let counter = self.counter.get().wrapping_add(1);
                self.counter.set(counter);
                &bucket[(counter % len) as usize]
            }
            Strategy::WeightedRoundRobin => smooth_wrr(bucket),
        };
        Some(&member.endpoint)
    }
}

/// Smooth weighted round robin (nginx's algorithm, as due implements it): every endpoint gains its
/// weight, the highest current weight wins (ties go to the earlier one, hence `>` not `>=`), and
/// the winner pays back the total. Over one cycle of `Σweight` picks each endpoint is chosen
/// exactly `weight` times, interleaved rather than in bursts. With all weights 0 nothing ever
/// changes and the first endpoint always wins — due's behaviour for nodes without a weight.
fn smooth_wrr(bucket: &[Member]) -> &Member {
    let mut total: i64 = 0;
    let mut best = &bucket[0];
    let mut best_current = i64::MIN;
    for member in bucket {
        let current = member.current.get().saturating_add(member.weight);
        member.current.set(current);
        total = total.saturating_add(member.weight);
        if current > best_current {
            best = member;
            best_current = current;
        }
    }
    best.current.set(best_current.saturating_sub(total));
    best
}

/// The dispatcher's whole view: routes by ID and event subscribers (and, in tests only,
/// every endpoint by instance ID).
#[derive(Debug, Default)]
pub struct RouteTable {
    strategy: Strategy,
    /// Every parsed instance by ID. Production reaches endpoints through routes and events
    /// only; tests use this map to check what `build` kept.
    #[cfg(test)]
    endpoints: AHashMap<Arc<str>, EndpointRef>,
    routes: AHashMap<i32, RouteEntry>,
    events: AHashMap<i32, Vec<EndpointRef>>,
}

impl RouteTable {
    /// Builds the view from the full instance list of service `node`, in registry list order
    /// (due's `ReplaceServices`):
    ///
    /// * An instance whose endpoint has no dialable `host:port` is skipped entirely — no
    ///   endpoint, no routes, no events — since nothing could be sent to it anyway.
    /// * A route entry is created when a route ID is first seen; its flags and group come from
    ///   that first instance. Later instances with the same ID only add themselves as endpoints
    ///   (deployments should not reuse a route ID across node names).
    /// * Each instance joins the route's bucket for its state, in list order, with its weight.
    ///   An instance listing the same route twice is added twice, as in due.
    /// * Each instance is added once to every event it lists, whatever its state.
    /// * If an instance ID appears twice, the later endpoint wins for ID lookups (a map insert
    ///   in Go); both stay in the buckets. Consul keys instances uniquely, so this is theoretical.
    pub fn build(instances: &[ServiceInstance], strategy: Strategy) -> RouteTable {
        let mut table = RouteTable {
            strategy,
            ..RouteTable::default()
        };
        for inst in instances {
            let Some(address) = endpoint_address(&inst.endpoint) else {
                tracing::error!(
                    id = %inst.id,
                    kind = %inst.kind,
                    name = %inst.name,
                    alias = %inst.alias,
                    endpoint = %inst.endpoint,
                    "service endpoint parse failed, instance ignored"
                );
                continue;
            };
            let endpoint = EndpointRef {
                id: Arc::from(inst.id.as_str()),
                address: Arc::from(address),
            };
            #[cfg(test)]
            table
                .endpoints
                .insert(endpoint.id.clone(), endpoint.clone());

            for info in &inst.routes {
                let entry = table.routes.entry(info.id).or_insert_with(|| {
                    RouteEntry::new(
                        info.id,
                        info.internal,
                        info.stateful,
                        info.authorized,
                        &inst.alias,
                    )
                });
                entry.bucket(inst.state).push(Member {
                    endpoint: endpoint.clone(),
                    weight: i64::from(inst.weight),
                    current: Cell::new(0),
                });
                entry.by_id.insert(endpoint.id.clone(), endpoint.clone());
            }

            for &event in &inst.events {
                let targets = table.events.entry(event).or_default();
                match targets.iter_mut().find(|t| t.id == endpoint.id) {
                    Some(existing) => *existing = endpoint.clone(),
                    None => targets.push(endpoint.clone()),
                }
            }
        }
        table
    }

    /// The strategy stateless picks use.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The entry for a message route; `None` means "not found route" (the packet is dropped).
    pub fn route(&self, route: i32) -> Option<&RouteEntry> {
        self.routes.get(&route)
    }

    /// Chooses the node for a stateless delivery on `route` with the table's strategy.
    ///
    /// `rand` is only used by `random` (index = `rand % bucket size`); passing the randomness in
    /// keeps this module deterministic under test. The route's flags are not checked here —
    /// the caller has already decided the route is stateless. `None` when the route is unknown
    /// or has no node in work or busy state.
    pub fn pick_stateless(&self, route: i32, rand: u64) -> Option<EndpointRef> {
        self.routes.get(&route)?.pick(self.strategy, rand).cloned()
    }

    /// The endpoint of `node_id` for a stateful delivery on `route`: the node located through
    /// Redis must serve the route, in any state — a hanging node still owns its users until they
    /// move. `None` means "not found endpoint" (the packet is dropped).
    pub fn find_in_route(&self, route: i32, node_id: &str) -> Option<EndpointRef> {
        self.routes.get(&route)?.find(node_id).cloned()
    }

    /// Every node that listed `event` (in any state, registry order). Empty when none did — the
    /// caller then skips the trigger ("not found event").
    pub fn event_targets(&self, event: u8) -> &[EndpointRef] {
        self.events
            .get(&i32::from(event))
            .map_or(&[], |targets| targets.as_slice())
    }

    /// The endpoint of any instance in the view, by instance ID (tests only).
    #[cfg(test)]
    pub fn endpoint(&self, id: &str) -> Option<&EndpointRef> {
        self.endpoints.get(id)
    }

    /// All endpoints in the view, unordered (tests only).
    #[cfg(test)]
    pub fn endpoints(&self) -> impl Iterator<Item = &EndpointRef> {
        self.endpoints.values()
    }

    /// How many message routes the view knows.
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{endpoint_url, RouteInfo};

    fn plain(id: i32) -> RouteInfo {
        RouteInfo {
            id,
            ..RouteInfo::default()
        }
    }

    /// A node named `id` whose address is `<id>:1`, so picks are easy to read back.
    fn node(id: &str, state: InstanceState, weight: i32, routes: &[RouteInfo]) -> ServiceInstance {
        ServiceInstance {
            id: id.into(),
            name: "node".into(),
            kind: "node".into(),
            alias: "game".into(),
            state,
            routes: routes.to_vec(),
            endpoint: endpoint_url(&format!("{id}:1")),
            weight,
            ..ServiceInstance::default()
        }
    }

    fn work(id: &str, routes: &[RouteInfo]) -> ServiceInstance {
        node(id, InstanceState::Work, 1, routes)
    }

    fn picks(table: &RouteTable, route: i32, n: usize) -> String {
        (0..n)
            .map(|i| {
                table
                    .pick_stateless(route, i as u64)
                    .map_or("-".to_string(), |e| e.id.to_string())
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn ids(targets: &[EndpointRef]) -> Vec<&str> {
        targets.iter().map(|t| &*t.id).collect()
    }

    const ALL: [Strategy; 3] = [
        Strategy::Random,
        Strategy::RoundRobin,
        Strategy::WeightedRoundRobin,
    ];

    #[test]
    fn strategy_parse() {
        assert_eq!(Strategy::parse("random"), Strategy::Random);
        assert_eq!(Strategy::parse("rr"), Strategy::RoundRobin);
        assert_eq!(Strategy::parse("wrr"), Strategy::WeightedRoundRobin);
        for other in ["", "RR", "Wrr", "round-robin", "weighted", " rr", "rr "] {
            assert_eq!(Strategy::parse(other), Strategy::Random, "{other:?}");
        }
        for s in ALL {
            assert_eq!(Strategy::parse(s.as_str()), s);
        }
        assert_eq!(Strategy::default(), Strategy::Random);
    }

    #[test]
    fn wrr_4_2_1_vector() {
        let r = [plain(1)];
        let nodes = [
            node("A", InstanceState::Work, 4, &r),
            node("B", InstanceState::Work, 2, &r),
            node("C", InstanceState::Work, 1, &r),
        ];
        let table = RouteTable::build(&nodes, Strategy::WeightedRoundRobin);
        assert_eq!(picks(&table, 1, 14), "A B A C A B A A B A C A B A");
    }

    #[test]
    fn wrr_over_200_picks_is_4_2_1() {
        let r = [plain(1)];
        let nodes = [
            node("A", InstanceState::Work, 4, &r),
            node("B", InstanceState::Work, 2, &r),
            node("C", InstanceState::Work, 1, &r),
        ];
        let table = RouteTable::build(&nodes, Strategy::WeightedRoundRobin);
        let count = |n: usize| {
            let mut c = [0usize; 3];
            for _ in 0..n {
                let id = table.pick_stateless(1, 0).unwrap().id;
                c[(id.as_bytes()[0] - b'A') as usize] += 1;
            }
            c
        };
        // 200 picks = 28 full cycles of 7 + the first 4 of the next (A B A C).
        assert_eq!(count(200), [114, 57, 29]);
        // The table is now 4 picks into a cycle; 3 more finish it, then 30 cycles are exact.
        count(3);
        assert_eq!(count(210), [120, 60, 30]);
    }

    #[test]
    fn wrr_equal_weights_alternate_from_the_first() {
        let r = [plain(1)];
        let table = RouteTable::build(
            &[
                node("A", InstanceState::Work, 1, &r),
                node("B", InstanceState::Work, 1, &r),
            ],
            Strategy::WeightedRoundRobin,
        );
        assert_eq!(picks(&table, 1, 4), "A B A B");
    }

    #[test]
    fn wrr_all_zero_weights_always_first() {
        let r = [plain(1)];
        let table = RouteTable::build(
            &[
                node("A", InstanceState::Work, 0, &r),
                node("B", InstanceState::Work, 0, &r),
                node("C", InstanceState::Work, 0, &r),
            ],
            Strategy::WeightedRoundRobin,
        );
        assert_eq!(picks(&table, 1, 5), "A A A A A");
    }

    #[test]
    fn wrr_zero_weight_node_is_never_chosen_next_to_weighted_ones() {
        let r = [plain(1)];
        let table = RouteTable::build(
            &[
                node("A", InstanceState::Work, 0, &r),
                node("B", InstanceState::Work, 1, &r),
            ],
            Strategy::WeightedRoundRobin,
        );
        assert_eq!(picks(&table, 1, 4), "B B B B");
    }

    #[test]
    fn wrr_state_is_per_route() {
        let both = [plain(1), plain(2)];
        let table = RouteTable::build(
            &[
                node("A", InstanceState::Work, 2, &both),
                node("B", InstanceState::Work, 1, &both),
            ],
            Strategy::WeightedRoundRobin,
        );
        assert_eq!(picks(&table, 1, 3), "A B A");
        assert_eq!(picks(&table, 2, 3), "A B A");
    }

    #[test]
    fn rr_two_endpoints_starts_with_the_second() {
        let r = [plain(1)];
        let table = RouteTable::build(&[work("A", &r), work("B", &r)], Strategy::RoundRobin);
        assert_eq!(picks(&table, 1, 4), "B A B A");
    }

    #[test]
    fn rr_three_and_one() {
        let r = [plain(1)];
        let table = RouteTable::build(
            &[work("A", &r), work("B", &r), work("C", &r)],
            Strategy::RoundRobin,
        );
        assert_eq!(picks(&table, 1, 6), "B C A B C A");
        let table = RouteTable::build(&[work("A", &r)], Strategy::RoundRobin);
        assert_eq!(picks(&table, 1, 3), "A A A");
    }

    #[test]
    fn rr_counters_are_per_route_and_reset_by_rebuild() {
        let both = [plain(1), plain(2)];
        let nodes = [work("A", &both), work("B", &both)];
        let table = RouteTable::build(&nodes, Strategy::RoundRobin);
        assert_eq!(picks(&table, 1, 3), "B A B");
        assert_eq!(picks(&table, 2, 1), "B");
        let table = RouteTable::build(&nodes, Strategy::RoundRobin);
        assert_eq!(picks(&table, 1, 1), "B");
    }

    #[test]
    fn random_uses_rand_modulo_bucket_size() {
        let r = [plain(1)];
        let table = RouteTable::build(
            &[work("A", &r), work("B", &r), work("C", &r)],
            Strategy::Random,
        );
        let pick = |rand: u64| table.pick_stateless(1, rand).unwrap().id.to_string();
        assert_eq!(pick(0), "A");
        assert_eq!(pick(1), "B");
        assert_eq!(pick(2), "C");
        assert_eq!(pick(3), "A");
        assert_eq!(pick(u64::MAX), "A"); // u64::MAX % 3 == 0
        assert_eq!(pick(u64::MAX - 1), "C");
    }

    #[test]
    fn busy_only_without_work() {
        let r = [plain(1)];
        let mixed = [
            node("X", InstanceState::Busy, 5, &r),
            node("A", InstanceState::Work, 1, &r),
            node("Y", InstanceState::Busy, 5, &r),
            node("B", InstanceState::Work, 1, &r),
        ];
        for strategy in ALL {
            let table = RouteTable::build(&mixed, strategy);
            for (i, e) in (0..20).map(|i| (i, table.pick_stateless(1, i).unwrap())) {
                assert!(
                    &*e.id == "A" || &*e.id == "B",
                    "{strategy:?} pick {i}: {e:?}"
                );
            }
        }

        let busy_only = [
            node("X", InstanceState::Busy, 1, &r),
            node("H", InstanceState::Hang, 1, &r),
            node("Y", InstanceState::Busy, 1, &r),
        ];
        let table = RouteTable::build(&busy_only, Strategy::RoundRobin);
        assert_eq!(picks(&table, 1, 4), "Y X Y X");
        let table = RouteTable::build(&busy_only, Strategy::WeightedRoundRobin);
        assert_eq!(picks(&table, 1, 4), "X Y X Y");
        let table = RouteTable::build(&busy_only, Strategy::Random);
        assert_eq!(picks(&table, 1, 4), "X Y X Y");
    }

    #[test]
    fn hang_and_shut_are_never_picked() {
        let r = [plain(1)];
        let nodes = [
            node("H", InstanceState::Hang, 9, &r),
            node("S", InstanceState::Shut, 9, &r),
        ];
        for strategy in ALL {
            let table = RouteTable::build(&nodes, strategy);
            assert!(table.route(1).is_some());
            assert_eq!(table.pick_stateless(1, 0), None, "{strategy:?}");
            assert_eq!(table.pick_stateless(1, 1), None, "{strategy:?}");
        }
        let mut with_work = nodes.to_vec();
        with_work.push(work("A", &r));
        for strategy in ALL {
            let table = RouteTable::build(&with_work, strategy);
            for rand in 0..10 {
                assert_eq!(&*table.pick_stateless(1, rand).unwrap().id, "A");
            }
        }
    }

    #[test]
    fn unknown_route() {
        let table = RouteTable::build(&[work("A", &[plain(1)])], Strategy::RoundRobin);
        assert!(table.route(2).is_none());
        assert_eq!(table.pick_stateless(2, 0), None);
        assert_eq!(table.find_in_route(2, "A"), None);
    }

    #[test]
    fn find_in_route_any_state() {
        let stateful = [RouteInfo {
            id: 7,
            stateful: true,
            ..RouteInfo::default()
        }];
        let nodes = [
            node("W", InstanceState::Work, 1, &stateful),
            node("B", InstanceState::Busy, 1, &stateful),
            node("H", InstanceState::Hang, 1, &stateful),
            node("S", InstanceState::Shut, 1, &stateful),
            work("other", &[plain(8)]),
        ];
        let table = RouteTable::build(&nodes, Strategy::Random);
        for id in ["W", "B", "H", "S"] {
            let found = table.find_in_route(7, id).unwrap();
            assert_eq!(&*found.id, id);
            assert_eq!(&*found.address, format!("{id}:1"));
        }
        // Serves another route only; unknown node.
        assert_eq!(table.find_in_route(7, "other"), None);
        assert_eq!(table.find_in_route(7, "nobody"), None);
        assert_eq!(table.route(7).unwrap().endpoint_count(), 4);
    }

    #[test]
    fn events_go_to_any_state_in_list_order() {
        let mut nodes = vec![
            node("W", InstanceState::Work, 1, &[]),
            node("B", InstanceState::Busy, 1, &[]),
            node("H", InstanceState::Hang, 1, &[]),
            node("S", InstanceState::Shut, 1, &[]),
            node("N", InstanceState::Work, 1, &[]),
        ];
        nodes[0].events = vec![1, 2, 3];
        nodes[1].events = vec![3];
        nodes[2].events = vec![3, 1];
        nodes[3].events = vec![3, 3]; // listed twice: still one target
        let table = RouteTable::build(&nodes, Strategy::Random);
        assert_eq!(ids(table.event_targets(1)), ["W", "H"]);
        assert_eq!(ids(table.event_targets(2)), ["W"]);
        assert_eq!(ids(table.event_targets(3)), ["W", "B", "H", "S"]);
        assert!(table.event_targets(0).is_empty());
        assert!(table.event_targets(4).is_empty());
        assert_eq!(&*table.event_targets(3)[1].address, "B:1");
    }

    #[test]
    fn first_alias_wins_group_and_flags() {
        let mut first = work(
            "A",
            &[RouteInfo {
                id: 5,
                stateful: true,
                authorized: true,
                internal: false,
            }],
        );
        first.alias = "mahjong".into();
        let mut second = work(
            "B",
            &[RouteInfo {
                id: 5,
                internal: true,
                ..RouteInfo::default()
            }],
        );
        second.alias = "poker".into();
        let table = RouteTable::build(&[first.clone(), second.clone()], Strategy::Random);
        let entry = table.route(5).unwrap();
        assert_eq!(entry.id(), 5);
        assert_eq!(entry.group(), "mahjong");
        assert!(entry.stateful() && entry.authorized() && !entry.internal());
        assert_eq!(entry.endpoint_count(), 2);

        let table = RouteTable::build(&[second, first], Strategy::Random);
        let entry = table.route(5).unwrap();
        assert_eq!(entry.group(), "poker");
        assert!(entry.internal() && !entry.stateful() && !entry.authorized());
    }

    #[test]
    fn first_sighting_of_a_route_may_come_from_a_hanging_node() {
        let mut hang = node("H", InstanceState::Hang, 1, &[plain(1)]);
        hang.alias = "old".into();
        let mut live = work("A", &[plain(1)]);
        live.alias = "new".into();
        let table = RouteTable::build(&[hang, live], Strategy::Random);
        assert_eq!(table.route(1).unwrap().group(), "old");
        assert_eq!(&*table.pick_stateless(1, 0).unwrap().id, "A");
    }

    #[test]
    fn unparsable_endpoint_is_skipped_everywhere() {
        let mut bad = work("X", &[plain(1), plain(2)]);
        bad.endpoint = "not a url".into();
        bad.events = vec![1];
        let mut good = work("A", &[plain(1)]);
        good.events = vec![1];
        let table = RouteTable::build(&[bad, good], Strategy::RoundRobin);
        assert!(table.endpoint("X").is_none());
        assert!(table.route(2).is_none(), "only X served route 2");
        assert_eq!(table.route_count(), 1);
        assert_eq!(picks(&table, 1, 3), "A A A");
        assert_eq!(table.find_in_route(1, "X"), None);
        assert_eq!(ids(table.event_targets(1)), ["A"]);
        assert_eq!(table.endpoints().count(), 1);
    }

    #[test]
    fn unparsable_first_instance_does_not_set_the_group() {
        let mut bad = work("X", &[plain(1)]);
        bad.endpoint = String::new();
        bad.alias = "ghost".into();
        let mut good = work("A", &[plain(1)]);
        good.alias = "real".into();
        let table = RouteTable::build(&[bad, good], Strategy::Random);
        assert_eq!(table.route(1).unwrap().group(), "real");
    }

    #[test]
    fn endpoints_map_every_parsed_instance() {
        let mut v6 = work("six", &[]);
        v6.endpoint = "drpc://[fd00::5]:40123?is_secure=false".into();
        let table = RouteTable::build(&[v6, work("A", &[])], Strategy::Random);
        assert_eq!(&*table.endpoint("six").unwrap().address, "[fd00::5]:40123");
        assert_eq!(&*table.endpoint("A").unwrap().address, "A:1");
        assert_eq!(table.endpoints().count(), 2);
        assert_eq!(table.route_count(), 0);
    }

    #[test]
    fn duplicate_instance_id_later_endpoint_wins_lookups() {
        let first = work("A", &[plain(1)]);
        let mut again = work("A", &[plain(1)]);
        again.endpoint = endpoint_url("10.0.0.9:2");
        again.events = vec![2];
        let mut first_ev = first.clone();
        first_ev.events = vec![2];
        let table = RouteTable::build(&[first_ev, again], Strategy::Random);
        assert_eq!(&*table.endpoint("A").unwrap().address, "10.0.0.9:2");
        assert_eq!(&*table.find_in_route(1, "A").unwrap().address, "10.0.0.9:2");
        assert_eq!(table.event_targets(2).len(), 1);
        assert_eq!(&*table.event_targets(2)[0].address, "10.0.0.9:2");
    }

    #[test]
    fn empty_view() {
        let table = RouteTable::build(&[], Strategy::WeightedRoundRobin);
        assert_eq!(table.strategy(), Strategy::WeightedRoundRobin);
        assert_eq!(table.route_count(), 0);
        assert!(table.route(0).is_none());
        assert_eq!(table.pick_stateless(0, 0), None);
        assert!(table.event_targets(1).is_empty());
        assert_eq!(table.endpoints().count(), 0);
    }

    #[test]
    fn endpoint_refs_share_their_strings() {
        let mut a = work("A", &[plain(1), plain(2)]);
        a.events = vec![1];
        let table = RouteTable::build(&[a], Strategy::Random);
        let from_map = table.endpoint("A").unwrap();
        let from_route = table.pick_stateless(2, 0).unwrap();
        let from_event = &table.event_targets(1)[0];
        assert!(Arc::ptr_eq(&from_map.address, &from_route.address));
        assert!(Arc::ptr_eq(&from_map.id, &from_event.id));
    }
}

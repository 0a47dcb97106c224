//! The hand-off stage of one shard's tasks during `--upgrade`: serving, skimming (quiet tasks
//! park early), frozen (each task parked with its state exported) or committed (the next process
//! owns their sockets now).
//!
//! A shard keeps one [`Stage`] for its client connections and one for its inbound node links.
//! Client connections are skimmed first: those quiet for a while park and go to the next process
//! while the busy ones still serve, so only the busy ones wait through the freeze itself.
//! The shard moves the stage (`set`); every task of that kind is a [`Member`] while it lives,
//! and reports once it has parked, so the shard can await [`Stage::all_parked`]. A task that
//! parks watches the stage with [`Stage::poll_leave`]: back to `Serving` (the upgrade failed, it
//! carries on as if nothing happened) or `Committed` (it ends without touching its socket).
//! A parcel is collected only while the stage is frozen ([`Collector`]); one offered later is
//! given back, and its task keeps its socket and is drained the old way.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A socket lent by a parked task to the hand-off: it stays open as long as the task stays
/// parked, that is until the stage leaves `Frozen`, which happens only after the parcels were
/// sent (or given up). Lending instead of duplicating keeps a gate at the descriptor limit able
/// to hand over all its connections.
pub type Lent = std::os::fd::RawFd;

/// Where a shard's tasks stand in a hand-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    #[default]
    Serving,
    /// Quiet tasks park with their state exported; the others serve on (each decides once).
    Skimming,
    /// Parked: read nothing, write nothing, the exported state stays true.
    Frozen,
    /// The next process took the exported sockets: parked tasks end without a byte.
    Committed,
}

/// One kind of task of a shard, as a hand-off moves it.
#[derive(Default)]
pub struct Stage {
    phase: Cell<Phase>,
    /// Parked tasks waiting for the phase to change.
    waiters: RefCell<Vec<Waker>>,
    /// Which freeze this is (members count themselves parked once per freeze).
    epoch: Cell<u64>,
    /// Bumped by every `set`: a parked member registers its waker once per phase.
    generation: Cell<u64>,
    /// Members alive, those parked in the current hand-off, and those that chose to serve on
    /// while skimming.
    live: Cell<usize>,
    parked: Cell<usize>,
    declined: Cell<usize>,
    /// The shard awaiting `all_parked`.
    counting: RefCell<Option<Waker>>,
}

impl Stage {
    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    /// Moves every member to `phase` and wakes those parked. Skimming → frozen is one hand-off:
    /// the skimmed members stay parked (and counted) and are not woken.
    pub fn set(&self, phase: Phase) {
        let from = self.phase.get();
        let hand_off = matches!(phase, Phase::Skimming | Phase::Frozen);
        if hand_off && from == Phase::Serving {
            self.epoch.set(self.epoch.get() + 1);
            self.parked.set(0);
            self.declined.set(0);
        }
        self.phase.set(phase);
        self.generation.set(self.generation.get() + 1);
        if from == Phase::Skimming && phase == Phase::Frozen {
            return;
        }
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// A task of this kind starts; it stays a member until the guard drops.
    pub fn enter(self: &Rc<Self>) -> Member {
        self.live.set(self.live.get() + 1);
        Member {
            stage: self.clone(),
            parked_in: Cell::new(0),
            declined_in: Cell::new(0),
            waiting_in: Cell::new(u64::MAX),
        }
    }

    /// `Pending` while the phase is `from` (the task is woken when it changes), then the new one.
    /// For the few tasks that watch a stage without being parked members (it looks for the
    /// waker among those registered); a parked member uses [`Member::poll_leave`].
    pub fn poll_leave(&self, from: Phase, cx: &mut Context<'_>) -> Poll<Phase> {
        let now = self.phase.get();
        if now != from {
            return Poll::Ready(now);
        }
        let mut w = self.waiters.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Resolves when a freeze begins, if the stage is serving now; never otherwise (a task left
    /// out of a committed hand-off serves on).
    pub async fn freeze_begins(&self) {
        if self.phase.get() == Phase::Serving {
            std::future::poll_fn(|cx| self.poll_leave(Phase::Serving, cx)).await;
        } else {
            std::future::pending::<()>().await
        }
    }

    /// Resolves once every member has parked (or ended).
    pub async fn all_parked(&self) {
        self.all_counted(false).await
    }

    /// Resolves once every member has parked or declined to (skimming), or ended.
    pub async fn all_decided(&self) {
        self.all_counted(true).await
    }

    async fn all_counted(&self, declined: bool) {
        std::future::poll_fn(|cx| {
            let declined = if declined { self.declined.get() } else { 0 };
            if self.parked.get() + declined >= self.live.get() {
                Poll::Ready(())
            } else {
                *self.counting.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Members alive now.
    pub fn live(&self) -> usize {
        self.live.get()
    }

    /// Members parked in the current hand-off.
    pub fn parked(&self) -> usize {
        self.parked.get()
    }

    /// Members that chose to serve on while skimming.
    pub fn declined(&self) -> usize {
        self.declined.get()
    }

    /// Waits (at most `limit`) until every member parked; logs the stragglers of `what` if not.
    pub async fn await_parked(&self, limit: std::time::Duration, what: &str) {
        let started = std::time::Instant::now();
        let done = glommio::timer::timeout(limit, async {
            self.all_parked().await;
            Ok(())
        })
        .await;
        if done.is_err() {
            tracing::warn!(
                parked = self.parked(),
                live = self.live(),
                "upgrade: not every {what} parked within {limit:?}; the rest stay here"
            );
        } else {
            tracing::debug!(parked = self.parked(), took = ?started.elapsed(), "upgrade: every {what} parked");
        }
    }

    fn count_changed(&self) {
        if let Some(w) = self.counting.borrow_mut().take() {
            w.wake();
        }
    }
}

/// A live task of a [`Stage`].
pub struct Member {
    stage: Rc<Stage>,
    /// The hand-off (epoch) this task last parked in; 0 = never.
    parked_in: Cell<u64>,
    /// The hand-off this task chose to serve on in while skimming; 0 = never.
    declined_in: Cell<u64>,
    /// The stage generation this task registered its waker in.
    waiting_in: Cell<u64>,
}

impl Member {
    pub fn stage(&self) -> &Stage {
        &self.stage
    }

    /// `Pending` while the stage is in `from`, then the new phase. The waker is registered once
    /// per phase: thousands of parked tasks woken again by their sockets cost no search.
    pub fn poll_leave(&self, from: Phase, cx: &mut Context<'_>) -> Poll<Phase> {
        let s = &self.stage;
        let now = s.phase.get();
        if now != from {
            return Poll::Ready(now);
        }
        let generation = s.generation.get();
        if self.waiting_in.replace(generation) != generation {
            s.waiters.borrow_mut().push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// This task has parked for the current hand-off (counted once per hand-off).
    pub fn park(&self) {
        let s = &self.stage;
        let epoch = s.epoch.get();
        if self.parked_in.replace(epoch) != epoch {
            s.parked.set(s.parked.get() + 1);
            if self.declined_in.get() == epoch {
                // Declined while skimming, parked in the freeze: counted once.
                s.declined.set(s.declined.get() - 1);
            }
            s.count_changed();
        }
    }

    /// Whether this task parked in the current hand-off (not in an earlier, thawed one).
    pub fn parked_now(&self) -> bool {
        self.parked_in.get() == self.stage.epoch.get()
    }

    /// Whether this task already decided in the current skim (parked or declined).
    pub fn decided(&self) -> bool {
        let epoch = self.stage.epoch.get();
        self.parked_in.get() == epoch || self.declined_in.get() == epoch
    }

    /// This task serves on through the current skim (counted once).
    pub fn decline(&self) {
        let s = &self.stage;
        let epoch = s.epoch.get();
        if self.parked_in.get() != epoch && self.declined_in.replace(epoch) != epoch {
            s.declined.set(s.declined.get() + 1);
            s.count_changed();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let s = &self.stage;
        s.live.set(s.live.get() - 1);
        let in_hand_off = matches!(s.phase.get(), Phase::Skimming | Phase::Frozen);
        if in_hand_off && self.parked_in.get() == s.epoch.get() {
            s.parked.set(s.parked.get() - 1);
        } else if in_hand_off && self.declined_in.get() == s.epoch.get() {
            s.declined.set(s.declined.get() - 1);
        }
        s.count_changed();
    }
}

/// Where a shard gathers its tasks' parcels during one freeze.
pub struct Collector<P>(RefCell<Option<Vec<P>>>);

impl<P> Default for Collector<P> {
    fn default() -> Self {
        Collector(RefCell::new(None))
    }
}

impl<P> Collector<P> {
    /// Starts collecting (a freeze begins), with room for `expected` parcels.
    pub fn open(&self, expected: usize) {
        *self.0.borrow_mut() = Some(Vec::with_capacity(expected));
    }

    /// Takes a parcel if collecting; otherwise gives it back.
    pub fn offer(&self, parcel: P) -> Result<(), P> {
        match &mut *self.0.borrow_mut() {
            Some(v) => {
                v.push(parcel);
                Ok(())
            }
            None => Err(parcel),
        }
    }

    /// Stops collecting and returns what was collected.
    pub fn close(&self) -> Vec<P> {
        self.0.borrow_mut().take().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn parked_members_see_the_phase_change_and_are_counted_once() {
        let stage = Rc::new(Stage::default());
        let a = stage.enter();
        let b = stage.enter();
        let woke = Arc::new(Count(Default::default()));
        let waker = Waker::from(woke.clone());
        let mut cx = Context::from_waker(&waker);
        stage.set(Phase::Frozen);
        assert!(stage.poll_leave(Phase::Frozen, &mut cx).is_pending());
        // A parked member polled again (by its socket) registers no second waker.
        assert!(a.poll_leave(Phase::Frozen, &mut cx).is_pending());
        assert!(a.poll_leave(Phase::Frozen, &mut cx).is_pending());
        assert_eq!(stage.waiters.borrow().len(), 2);
        let mut all = std::pin::pin!(stage.all_parked());
        assert!(all.as_mut().poll(&mut cx).is_pending());
        a.park();
        a.park();
        assert!(all.as_mut().poll(&mut cx).is_pending(), "one of two parked");
        drop(b);
        assert!(all.as_mut().poll(&mut cx).is_ready(), "the other ended");
        stage.set(Phase::Committed);
        assert!(woke.0.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        assert_eq!(
            stage.poll_leave(Phase::Frozen, &mut cx),
            Poll::Ready(Phase::Committed)
        );
        drop(a);
        assert_eq!(stage.live(), 0);
    }

    #[test]
    fn skimmed_members_stay_parked_and_counted_through_the_freeze() {
        let stage = Rc::new(Stage::default());
        let quiet = stage.enter();
        let busy = stage.enter();
        let woke = Arc::new(Count(Default::default()));
        let waker = Waker::from(woke.clone());
        let mut cx = Context::from_waker(&waker);
        stage.set(Phase::Skimming);
        quiet.park();
        assert!(quiet.poll_leave(Phase::Skimming, &mut cx).is_pending());
        busy.decline();
        busy.decline();
        assert!(quiet.decided() && busy.decided());
        assert_eq!((stage.parked(), stage.declined()), (1, 1));
        let mut decided = std::pin::pin!(stage.all_decided());
        assert!(decided.as_mut().poll(&mut cx).is_ready());
        // The freeze does not wake the skimmed member, and it stays counted.
        let before = woke.0.load(std::sync::atomic::Ordering::SeqCst);
        stage.set(Phase::Frozen);
        assert_eq!(woke.0.load(std::sync::atomic::Ordering::SeqCst), before);
        assert_eq!(stage.parked(), 1);
        let mut all = std::pin::pin!(stage.all_parked());
        assert!(
            all.as_mut().poll(&mut cx).is_pending(),
            "the busy one serves"
        );
        busy.park();
        quiet.park();
        assert_eq!((stage.parked(), stage.declined()), (2, 0));
        assert!(all.as_mut().poll(&mut cx).is_ready());
        // A thaw wakes the skimmed member; a new hand-off counts from zero.
        stage.set(Phase::Serving);
        assert!(woke.0.load(std::sync::atomic::Ordering::SeqCst) > before);
        assert_eq!(
            quiet.poll_leave(Phase::Skimming, &mut cx),
            Poll::Ready(Phase::Serving)
        );
        stage.set(Phase::Skimming);
        assert!(!quiet.decided() && !busy.decided());
        busy.decline();
        drop(busy);
        assert_eq!((stage.parked(), stage.declined(), stage.live()), (0, 0, 1));
    }

    #[test]
    fn a_collector_takes_parcels_only_while_open() {
        let c = Collector::default();
        assert_eq!(c.offer(1), Err(1));
        c.open(1);
        assert_eq!(c.offer(2), Ok(()));
        assert_eq!(c.close(), vec![2]);
        assert_eq!(c.offer(3), Err(3));
    }

    use std::future::Future;
}

//! A deterministic crash-point explorer: runs small histories through two
//! relays, crashes or stalls a relay at each step of its protocol in turn,
//! and checks what reached the destination against the promises.
//!
//! - [`Explorer`] runs every schedule of a [`Size`] against a store
//!   ([`InMemoryStore`] unless [`Explorer::store`] names yours) and
//!   returns a [`Summary`], or the first [`Violation`];
//!   [`explore`] is the one-line form.
//! - A [`Schedule`] is a [`History`] and the one [`Fault`] injected into a
//!   run of it, printed in a compact form that
//!   [`Explorer::run_schedule`] replays.
//!
//! ```
//! use outbox_engine::testkit::explore::{Explorer, Schedule, Size};
//!
//! // One schedule: a1 and b1 commit before the first claim, a2 after the
//! // first batch and b2 rolls back; the destination fails a2 the first
//! // time; the relay that takes step 7 crashes right after it.
//! let schedule: Schedule = "a1 b1 | a2!1 ~b2; batch=2; crash@7".parse()?;
//! let summary = Explorer::new(Size::Small).run_schedule(&schedule)?;
//! assert_eq!((summary.schedules, summary.crashes), (1, 1));
//!
//! // Every schedule of a size (7,810 for `Size::Small`, in seconds).
//! let summary = Explorer::new(Size::Small)
//!     .run()
//!     .unwrap_or_else(|violation| panic!("{violation}"));
//! println!("{summary}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # A run
//!
//! Writers attempt the history's events in order, one transaction each:
//! committed events are enqueued, rolled-back ones never are. Events
//! commit in waves, wave `w` just before the relays' turn `w` (wave 0
//! before the first claim, later waves between batches). Two relays,
//! `r1` and `r2`, take turns, one [`Relay::run_once`](crate::Relay::run_once)
//! each; when neither finds work and every wave has committed, the store's
//! clock moves past every lease and backoff
//! ([`TestStore::advance_clock`]), until nothing is pending.
//!
//! The protocol steps of a relay, numbered over the whole run, are:
//!
//! - **claimed**: a claim returned records (the store leased them);
//! - **handed off**: a record reached the destination, its outcome not yet
//!   reported;
//! - **reported**: the sink reported a record's outcome to the relay;
//! - **settling**: the relay is about to send a settle (mark) to the store;
//! - **settled**: the store applied the settle, before the relay sees its
//!   answer.
//!
//! Claims and settles are the *store steps*. The sink is the explorer's
//! own: it logs each delivered record, fails records retriably on the
//! offers the history names, and keeps the [`Sink`](crate::Sink) per-key
//! rule (after a failed record of a key, the later records of that key in
//! the batch are reported failed and not delivered).
//!
//! # The schedules
//!
//! For each history, the explorer runs it once without a fault, which
//! numbers its steps, then once per step `k` with [`Fault::Crash`] at `k`
//! (the relay's future is dropped right after step `k`: nothing it would
//! do next happens, its leases stay until they run out, and a fresh relay
//! with a new id takes its place), and twice per store step `k` with
//! [`Fault::Stall`] at `k`: once with a takeover (its lease runs out, the
//! other relay takes its records over and runs until nothing is pending,
//! then the stalled relay resumes and settles, which must change nothing),
//! once interleaved (the other relay runs one batch while the stalled one
//! holds its lease). Everything runs on one current-thread runtime, and
//! leases and backoff follow only the store's clock, which only the
//! explorer moves: a schedule repeats step for step, which the explorer
//! checks against the fault-free run before each fault. Stalls are only
//! enumerated at store steps: a relay stalled inside the sink would settle
//! on its wall-clock timer, and the run would no longer repeat.
//!
//! # The checks
//!
//! After each run, on the destination's log (what arrived, in arrival
//! order):
//!
//! - every committed event arrived at least once ([`Problem::Lost`]);
//! - no rolled-back event, and no record that no writer attempted, ever
//!   arrived ([`Problem::RolledBack`], [`Problem::Unknown`]);
//! - the first copies of each key's events arrived in commit order
//!   ([`Problem::OutOfOrder`]);
//! - duplicates come only from records in flight at a fault. A copy of a
//!   record is *in flight* when the claim that handed it off never had it
//!   settled as published: the relay crashed after the hand-off and before
//!   the store applied its settle, or it stalled before its settle and its
//!   lease was taken over. Each in-flight copy may cause one more copy, so
//!   an event may arrive at most once plus its in-flight copies; a crash
//!   after the store applied the settle allows none ([`Problem::Duplicate`]);
//! - a stale claim's late settle changed nothing
//!   ([`Problem::StaleSettle`]), and nothing stayed pending
//!   ([`Problem::Stuck`]).
//!
//! The first problem, in arrival order, comes back as a [`Violation`]
//! whose `Display` prints the schedule to replay, the problem (event,
//! key, event id, what was expected), the destination's log and every
//! step of the run.
//!
//! A checker that cannot fail proves nothing: [`Explorer::with_defect`]
//! builds a [`Defect`] into the explorer's own sink or store wrapper (a
//! sink that delivers past a failed record of its key, a store that loses
//! a record, keeps a rolled-back one, ignores leases, or miscounts a
//! settle), and each one must make the exploration fail with the problem
//! its doc names.
//!
//! # Your own store
//!
//! [`Explorer::store`] takes a factory of fresh, empty stores, one per
//! schedule, so the same exploration runs against any [`TestStore`]:
//!
//! ```
//! # use outbox_engine::InMemoryStore;
//! # use outbox_engine::testkit::explore::{Explorer, Size};
//! let explorer = Explorer::new(Size::Small).store(|| async {
//!     InMemoryStore::new() // yours: connect, migrate, return it empty
//! });
//! # let _ = explorer;
//! ```
//!
//! [`Explorer::run`] builds its own current-thread runtime: call it from a
//! plain `#[test]`, not from inside a runtime (`#[tokio::test]`).

mod check;
mod harness;
mod problem;
mod run;
mod schedule;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

pub use harness::Defect;
pub use problem::{Problem, Violation};
pub use schedule::{Fault, History, ParseScheduleError, Schedule};

use crate::InMemoryStore;
use crate::testkit::TestStore;

/// How many histories to explore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Size {
    /// 4 events over 2 or 3 keys, every way to give them keys; none or
    /// one of them rolled back; all committed before the first claim, or
    /// half of them after the first batch; no failure, or the first
    /// committed event failing on its first offer; batches of 2. 260
    /// histories: seconds in a debug build.
    #[default]
    Small,
    /// 5 or 6 events over 2 or 3 keys, every way to give them keys; none
    /// or one of them rolled back; committed all at once, in halves or in
    /// thirds; no failure, the first committed event failing on its first
    /// offer, or on its first two and the last one on its first; batches
    /// of 2 and of 3. 19,566 histories: minutes, by hand.
    Large,
}

impl Size {
    /// The size named by the environment variable `OUTBOX_EXPLORE_SIZE`
    /// (`small` or `large`, any case); [`Size::Small`] when it is unset.
    ///
    /// # Panics
    ///
    /// When it names no size: a test helper should fail loudly.
    pub fn from_env() -> Self {
        match std::env::var("OUTBOX_EXPLORE_SIZE") {
            Err(_) => Size::Small,
            Ok(value) => match value.to_ascii_lowercase().as_str() {
                "small" | "" => Size::Small,
                "large" => Size::Large,
                _ => panic!("OUTBOX_EXPLORE_SIZE is `{value}`; expected `small` or `large`"),
            },
        }
    }
}

/// What an exploration did; every one of its runs kept the promises.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Histories explored.
    pub histories: usize,
    /// Distinct schedules run: per history, one without a fault, one per
    /// step with a crash, and two per store step with a stall.
    pub schedules: usize,
    /// Relay runs: `run_once` batches started, crashed and stalled ones
    /// included.
    pub runs: usize,
    /// Relays crashed.
    pub crashes: usize,
    /// Store steps (claims and settlements) that failed.
    pub failures: usize,
    /// Relays stalled past their lease while the other relay took over.
    pub takeovers: usize,
    /// Relays stalled holding their lease while the other relay ran.
    pub interleavings: usize,
    /// Records that reached the destination, copies included.
    pub deliveries: usize,
    /// Copies beyond the first: each of a record in flight at a crash or
    /// takeover.
    pub duplicates: usize,
}

impl Summary {
    fn add(&mut self, schedule: &Schedule, execution: &run::Execution) {
        self.schedules += 1;
        self.runs += execution.batches;
        match schedule.fault {
            Fault::None => {}
            Fault::Crash { .. } => self.crashes += 1,
            Fault::Fail { .. } => self.failures += 1,
            Fault::Stall { takeover: true, .. } => self.takeovers += 1,
            Fault::Stall {
                takeover: false, ..
            } => self.interleavings += 1,
        }
        let ledger = &execution.state.ledger;
        let mut distinct: Vec<_> = ledger.iter().map(|arrival| arrival.event_id).collect();
        distinct.sort_unstable();
        distinct.dedup();
        self.deliveries += ledger.len();
        self.duplicates += ledger.len() - distinct.len();
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} schedules over {} histories kept every promise: {} relay runs, {} crashes, \
             {} failed store steps, {} lease takeovers, {} interleavings, {} deliveries, {} \
             duplicates (each of a record in flight at a crash or takeover)",
            self.schedules,
            self.histories,
            self.runs,
            self.crashes,
            self.failures,
            self.takeovers,
            self.interleavings,
            self.deliveries,
            self.duplicates
        )
    }
}

type Factory<S> = Box<dyn Fn() -> Pin<Box<dyn Future<Output = S>>>>;

/// Runs the schedules of a [`Size`] against a store and checks each run;
/// see the [module docs](self).
pub struct Explorer<S = InMemoryStore> {
    size: Size,
    factory: Factory<S>,
    defect: Option<Defect>,
}

impl Explorer<InMemoryStore> {
    /// An explorer of `size` over fresh [`InMemoryStore`]s.
    pub fn new(size: Size) -> Self {
        Self {
            size,
            factory: Box::new(|| Box::pin(async { InMemoryStore::new() })),
            defect: None,
        }
    }
}

impl<S: TestStore> Explorer<S> {
    /// Explores another store: `factory` makes a fresh, empty store for
    /// each schedule (the runs count on ids, leases and a clock of their
    /// own).
    #[must_use]
    pub fn store<T, F, Fut>(self, factory: F) -> Explorer<T>
    where
        T: TestStore,
        F: Fn() -> Fut + 'static,
        Fut: Future<Output = T> + 'static,
    {
        Explorer {
            size: self.size,
            factory: Box::new(move || Box::pin(factory())),
            defect: self.defect,
        }
    }

    /// Builds `defect` into the explorer's own instruments (its sink, or
    /// its wrapper around the store), to see the checks catch it; see
    /// [`Defect`].
    #[must_use]
    pub fn with_defect(mut self, defect: Defect) -> Self {
        self.defect = Some(defect);
        self
    }

    /// Runs every schedule of the size, history by history; stops at the
    /// first run that breaks a promise.
    ///
    /// # Panics
    ///
    /// When called inside a tokio runtime: it builds a current-thread
    /// runtime of its own, so that runs repeat.
    pub fn run(&self) -> Result<Summary, Violation> {
        block_on(async {
            let mut summary = Summary::default();
            for history in schedule::histories(self.size) {
                summary.histories += 1;
                self.run_history(history, &mut summary).await?;
            }
            Ok(summary)
        })
    }

    /// Runs one schedule, such as one a [`Violation`] printed, and checks
    /// it (but not that it repeats the fault-free run).
    ///
    /// # Panics
    ///
    /// When called inside a tokio runtime, as [`run`](Self::run).
    pub fn run_schedule(&self, schedule: &Schedule) -> Result<Summary, Violation> {
        block_on(async {
            let mut summary = Summary {
                histories: 1,
                ..Summary::default()
            };
            self.run_one(schedule, None, &mut summary).await?;
            Ok(summary)
        })
    }

    async fn run_history(&self, history: History, summary: &mut Summary) -> Result<(), Violation> {
        let clean = Schedule::new(history.clone(), Fault::None);
        let (steps, store_steps) = self.run_one(&clean, None, summary).await?;
        let crashes = (0..steps.len()).map(|step| Fault::Crash { step });
        let failures = store_steps.iter().map(|&step| Fault::Fail { step });
        let stalls = store_steps
            .iter()
            .flat_map(|&step| [true, false].map(|takeover| Fault::Stall { step, takeover }));
        for fault in crashes.chain(failures).chain(stalls) {
            let schedule = Schedule::new(history.clone(), fault);
            self.run_one(&schedule, Some(&steps), summary).await?;
        }
        Ok(())
    }

    /// Runs and checks one schedule; with the steps of the fault-free run,
    /// also checks that this run repeated them up to its fault. Returns
    /// the run's steps and the numbers of its store steps.
    async fn run_one(
        &self,
        schedule: &Schedule,
        clean: Option<&[String]>,
        summary: &mut Summary,
    ) -> Result<(Vec<String>, Vec<usize>), Violation> {
        let store = (self.factory)().await;
        let execution = run::execute(store, schedule, self.defect)
            .await
            .map_err(|problem| Violation::new(schedule.clone(), problem, None))?;
        let state = &execution.state;
        let repeated = match (clean, schedule.fault.step()) {
            (Some(clean), Some(fault)) => {
                let end = (fault + 1).min(clean.len()).min(state.steps.len());
                (0..end)
                    .find(|&step| clean[step] != state.steps[step])
                    .map_or(Ok(()), |step| {
                        Err(Problem::Nondeterministic {
                            step,
                            expected: clean[step].clone(),
                            found: state.steps[step].clone(),
                        })
                    })
            }
            _ => Ok(()),
        };
        repeated
            .and_then(|()| check::check(schedule, &execution))
            .map_err(|problem| Violation::new(schedule.clone(), problem, Some(&execution.state)))?;
        summary.add(schedule, &execution);
        let state = execution.state;
        Ok((state.steps, state.store_steps))
    }
}

impl<S> fmt::Debug for Explorer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Explorer")
            .field("size", &self.size)
            .field("defect", &self.defect)
            .finish_non_exhaustive()
    }
}

/// Runs every schedule of `size` against fresh [`InMemoryStore`]s:
/// `Explorer::new(size).run()`.
///
/// # Panics
///
/// When called inside a tokio runtime, as [`Explorer::run`].
pub fn explore(size: Size) -> Result<Summary, Violation> {
    Explorer::new(size).run()
}

fn block_on<T>(future: impl Future<Output = T>) -> T {
    assert!(
        tokio::runtime::Handle::try_current().is_err(),
        "the explorer builds a current-thread runtime of its own, so that its runs repeat: \
         call it from a plain #[test] or fn main, not inside a tokio runtime"
    );
    // The clock is paused: the relay's pauses (after a failed settlement)
    // pass at once, and a batch that waits forever is seen to.
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("cannot build a current-thread tokio runtime")
        .block_on(future)
}

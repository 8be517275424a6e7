//! The crash-point explorer over the in-memory store: every schedule keeps
//! the promises, and every defect built into its instruments is caught.
//!
//! `OUTBOX_EXPLORE_SIZE=large` explores the large size instead (minutes).

use outbox_engine::InMemoryStore;
use outbox_engine::testkit::explore::{Defect, Explorer, Fault, Problem, Schedule, Size, explore};

#[test]
fn every_schedule_keeps_the_promises() {
    let size = Size::from_env();
    let summary = explore(size).unwrap_or_else(|violation| panic!("{violation}"));
    println!("{size:?}: {summary}");

    // One fault-free run per history, then one run per step with a crash,
    // and three per store step: a failure, and two with a stall (a
    // takeover, an interleaving).
    assert_eq!(
        summary.schedules,
        summary.histories
            + summary.crashes
            + summary.failures
            + summary.takeovers
            + summary.interleavings,
        "{summary:?}"
    );
    assert_eq!(summary.takeovers, summary.interleavings);
    assert_eq!(summary.failures, summary.takeovers);
    // Each history has at least 3 committed events: each is claimed,
    // handed off and reported, and settled, in at least one batch.
    assert!(summary.crashes >= summary.histories * (3 * 2 + 3));
    assert!(summary.deliveries >= summary.schedules * 3);
    assert!(summary.duplicates > 0, "no crash left a record in flight");
    match size {
        Size::Small => {
            // 13 ways to key 4 events over 2 or 3 keys, times no rollback
            // or each of 4 events rolled back, times 2 commit splits, times
            // 2 failure plans, times no writer or one holding its key.
            assert_eq!(summary.histories, 13 * 5 * 2 * 2 * 2);
            // The steps the relay takes over those histories: 1 per claim
            // that returns records, 2 per record delivered (hand-off,
            // report), 1 per record failed or held back, 2 per settle.
            assert_eq!(
                (summary.schedules, summary.crashes, summary.takeovers),
                (20040, 7613, 3969),
                "{summary:?}"
            );
        }
        _ => assert_eq!(summary.histories, (40 * 6 + 121 * 7) * 3 * 3 * 2 * 2),
    }
}

#[test]
fn every_defect_is_caught_with_the_schedule_that_shows_it() {
    for defect in Defect::ALL {
        let explorer = Explorer::new(Size::Small).with_defect(defect);
        let violation = explorer
            .run()
            .expect_err("the explorer missed a defect of its own instruments");
        let problem = violation.problem();
        let expected = match defect {
            Defect::SinkIgnoresFailedKeys => matches!(problem, Problem::OutOfOrder { .. }),
            Defect::StoreLosesARecord => matches!(problem, Problem::Lost { .. }),
            Defect::StoreKeepsRolledBackRecords => matches!(problem, Problem::RolledBack { .. }),
            Defect::StoreIgnoresLeases => matches!(problem, Problem::Duplicate { .. }),
            Defect::StoreCountsRequestedSettles => {
                matches!(problem, Problem::StaleSettle { .. })
            }
            Defect::StoreWaitsForWriters => matches!(problem, Problem::Hung { .. }),
            _ => unreachable!("a new defect needs its expected problem here"),
        };
        assert!(
            expected,
            "{defect:?} was caught as another problem:\n{violation}"
        );

        // The report names the schedule, and replaying it shows the same
        // problem again, while the same schedule without the defect passes.
        let printed = violation.to_string();
        println!("{defect:?}:\n{printed}\n");
        let schedule = violation.schedule().to_string();
        assert!(printed.contains(&format!("`{schedule}`")), "{printed}");
        assert!(printed.contains("expected"), "{printed}");
        let schedule: Schedule = schedule.parse().expect("a printed schedule parses");
        let replayed = explorer
            .run_schedule(&schedule)
            .expect_err("the replay shows the defect again");
        assert_eq!(without_ids(replayed.problem()), without_ids(problem));
        Explorer::new(Size::Small)
            .run_schedule(&schedule)
            .unwrap_or_else(|violation| panic!("{violation}"));
    }
}

/// A problem as printed, without its event ids (fresh in every run).
fn without_ids(problem: &Problem) -> String {
    let text = problem.to_string();
    let mut parts = text.split("event id ");
    let first = parts.next().unwrap_or_default().to_owned();
    parts.fold(first, |text, part| {
        text + "event id …" + part.get(36..).unwrap_or_default()
    })
}

#[test]
fn a_crash_after_a_hand_off_duplicates_only_the_records_in_flight() {
    // r1 claims a1 b1, hands off a1 and crashes: a1 arrives twice, b1 once.
    let schedule: Schedule = "a1 b1 | a2; batch=2; crash@1".parse().unwrap();
    assert_eq!(schedule.fault(), Fault::Crash { step: 1 });
    let summary = Explorer::new(Size::Small)
        .run_schedule(&schedule)
        .unwrap_or_else(|violation| panic!("{violation}"));
    assert_eq!(
        (summary.crashes, summary.deliveries, summary.duplicates),
        (1, 4, 1)
    );

    // Crashing after the store applied the settle leaves nothing in
    // flight: no duplicate.
    let schedule: Schedule = "a1 b1 | a2; batch=2; crash@6".parse().unwrap();
    let summary = Explorer::new(Size::Small)
        .run_schedule(&schedule)
        .unwrap_or_else(|violation| panic!("{violation}"));
    assert_eq!((summary.deliveries, summary.duplicates), (3, 0));
}

#[test]
fn a_store_factory_gives_each_schedule_a_fresh_store() {
    let schedule: Schedule = "a1 b1 ~a2 b2; batch=2; stall@0+takeover".parse().unwrap();
    let summary = Explorer::new(Size::Small)
        .store(|| async { InMemoryStore::new() })
        .run_schedule(&schedule)
        .unwrap_or_else(|violation| panic!("{violation}"));
    assert_eq!(
        (summary.takeovers, summary.deliveries, summary.duplicates),
        (1, 5, 2)
    );
}

#[test]
fn a_writer_holding_a_key_delays_only_that_key_and_never_the_relay() {
    // a2's writer opens after the first claim (a1 b1) and holds key a over
    // that batch's settlement and the whole second turn: the second claim
    // passes key a over and takes b2; a2 comes once its writer commits.
    let schedule: Schedule = "a1 b1 a2^ | b2; batch=2; clean".parse().unwrap();
    assert_eq!(schedule.history().held(), 1);
    let summary = Explorer::new(Size::Small)
        .run_schedule(&schedule)
        .unwrap_or_else(|violation| panic!("{violation}"));
    assert_eq!((summary.deliveries, summary.duplicates), (4, 0));

    // A store whose settlement waited for the writer would never finish
    // the first batch: the writer commits only after it.
    let violation = Explorer::new(Size::Small)
        .with_defect(Defect::StoreWaitsForWriters)
        .run_schedule(&schedule)
        .expect_err("a settlement that waits for the writer hangs");
    assert!(
        matches!(violation.problem(), Problem::Hung { .. }),
        "{violation}"
    );

    // Rolled back, the writer leaves its key as it found it.
    let schedule: Schedule = "a1 b1 ~a2^ | b2 a3; batch=2; clean".parse().unwrap();
    let summary = Explorer::new(Size::Small)
        .run_schedule(&schedule)
        .unwrap_or_else(|violation| panic!("{violation}"));
    assert_eq!((summary.deliveries, summary.duplicates), (4, 0));
}

#[test]
fn a_failed_claim_or_settlement_loses_nothing_and_duplicates_nothing() {
    // Steps: 0 claimed a1 b1, 1-4 handed off and reported each, 5
    // settling, 6 settled. The claim's answer lost (0), the settlement
    // refused (5), or applied with its answer lost (6): the relay tries
    // the settlement again, and everything arrives once.
    for step in [0, 5, 6] {
        let schedule: Schedule = format!("a1 b1; batch=2; fail@{step}").parse().unwrap();
        assert_eq!(schedule.fault(), Fault::Fail { step });
        let summary = Explorer::new(Size::Small)
            .run_schedule(&schedule)
            .unwrap_or_else(|violation| panic!("{violation}"));
        assert_eq!(
            (summary.failures, summary.deliveries, summary.duplicates),
            (1, 2, 0),
            "fail@{step}"
        );
    }
}

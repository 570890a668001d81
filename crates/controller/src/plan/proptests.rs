//! The planner under random event sequences (proptest): whatever arrives,
//! in whatever order, `step` never panics, every accepted transition keeps
//! the invariants ([`check`]: the in-place floor, nothing stopped before it
//! was drained, green weighted only after its checks, blue kept until
//! cut-over), a finished deployment stays finished, and from any state it
//! reached, resuming and completing every step finishes it.

use proptest::prelude::{
    prop, prop_assert, prop_assert_eq, prop_oneof, proptest, Just, ProptestConfig, TestCaseError,
};
use proptest::strategy::Strategy as Gen;

use super::*;
use handoff_core::config::Amount;

fn amount() -> impl Gen<Value = Amount> {
    prop_oneof![
        (1u32..6).prop_map(Amount::Count),
        (1u32..=100).prop_map(Amount::Percent),
    ]
}

fn request() -> impl Gen<Value = Request> {
    (
        prop_oneof![
            Just(Strategy::InPlace),
            Just(Strategy::BlueGreen),
            Just(Strategy::AllAtOnce),
        ],
        1usize..7,
        amount(),
        amount(),
        prop::collection::vec(1u32..100, 0..3),
        prop::bool::ANY,
    )
        .prop_map(|(strategy, n, batch, floor, steps, hooks)| Request {
            id: "web@1".into(),
            service: "web".into(),
            from: "v1".into(),
            to: "v2".into(),
            strategy,
            fleet: (1..=n).map(|i| format!("web-{i}")).collect(),
            green: (n + 1..=2 * n).map(|i| format!("web-{i}")).collect(),
            live_group: "blue".into(),
            batch,
            min_healthy: floor,
            traffic_steps: steps,
            hooks: if hooks {
                vec!["validate_service".into(), "migrate_expand".into()]
            } else {
                Vec::new()
            },
        })
}

fn event() -> impl Gen<Value = Event> {
    prop_oneof![
        6 => Just(Event::Done),
        1 => Just(Event::Failed { reason: "boom".into() }),
        1 => Just(Event::Pause),
        1 => Just(Event::Resume),
        1 => Just(Event::Abort),
        1 => Just(Event::Promote),
        1 => Just(Event::Rollback),
        1 => Just(Event::Start),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_event_sequences_keep_the_invariants(
        r in request(),
        events in prop::collection::vec(event(), 0..60),
    ) {
        // Requests the planner refuses (a floor it cannot keep) are fine;
        // they never start.
        let Ok(mut d) = new(r) else { return Ok(()) };
        let (n, a) = step(&d, Event::Start).expect("a new deployment starts");
        prop_assert_eq!(check(&d, &n, &a), Ok(()));
        d = n;
        for ev in events {
            let before = d.clone();
            // A rejected event changes nothing: the caller keeps `d`.
            if let Ok((n, a)) = step(&d, ev.clone()) {
                prop_assert_eq!(check(&before, &n, &a), Ok(()), "{:?} from {:?}", ev, before.phase);
                if before.phase == Phase::Finished {
                    prop_assert_eq!(n.status, before.status, "a finished deployment changed: {:?}", ev);
                    prop_assert!(a.is_empty(), "a finished deployment acted on {:?}", ev);
                }
                d = n;
            }
        }
        // From wherever it is: resume, then every step completes.
        if d.paused {
            if let Ok((n, _)) = step(&d, Event::Resume) {
                d = n;
            }
        }
        for _ in 0..500 {
            if d.phase == Phase::Finished {
                break;
            }
            let (n, a) = step(&d, Event::Done)
                .map_err(|e| TestCaseError::fail(format!("Done rejected in {:?}: {e}", d.phase)))?;
            prop_assert_eq!(check(&d, &n, &a), Ok(()));
            d = n;
        }
        prop_assert_eq!(&d.phase, &Phase::Finished);
        prop_assert!(!d.status.is_active(), "finished yet {:?}", d.status);
        if d.status == Status::Succeeded && d.strategy == Strategy::InPlace {
            let mut changed = d.changed.clone();
            changed.sort();
            let mut fleet = d.fleet.clone();
            fleet.sort();
            prop_assert_eq!(changed, fleet, "an in-place success changed every instance");
        }
    }
}

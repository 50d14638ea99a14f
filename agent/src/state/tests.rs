use proptest::prelude::*;

use super::*;
use Command as C;
use DeviceState as S;

fn any_command() -> impl Strategy<Value = Command> {
    let kind = prop_oneof![Just(PackageKind::Patch), Just(PackageKind::Update)];
    prop_oneof![
        Just(C::InitiateProvisioning),
        Just(C::Provisioned),
        Just(C::SetBusy),
        Just(C::SetReady),
        Just(C::StartAction),
        kind.clone().prop_map(C::StartTransit),
        Just(C::TransitDone),
        Just(C::AwaitConfirm),
        Just(C::Confirm),
        kind.prop_map(C::StartApply),
        Just(C::StartUpload),
        Just(C::Finish),
    ]
}

#[test]
fn every_state_is_reachable_from_ready() {
    use std::collections::BTreeSet;
    let mut seen = BTreeSet::new();
    let mut frontier = vec![Machine::default()];
    let commands: Vec<Command> = {
        let mut v = vec![
            C::InitiateProvisioning,
            C::Provisioned,
            C::SetBusy,
            C::SetReady,
            C::StartAction,
            C::TransitDone,
            C::AwaitConfirm,
            C::Confirm,
            C::StartUpload,
            C::Finish,
        ];
        for k in [PackageKind::Patch, PackageKind::Update] {
            v.push(C::StartTransit(k));
            v.push(C::StartApply(k));
        }
        v
    };
    while let Some(m) = frontier.pop() {
        if !seen.insert(m.state.as_str()) {
            continue;
        }
        for c in &commands {
            let mut next = m.clone();
            if next.apply(*c).is_ok() {
                frontier.push(next);
            }
        }
    }
    assert_eq!(seen.len(), 13, "{seen:?}");
}

#[test]
fn provisioning_rejects_everything_but_its_completion() {
    let mut m = Machine::new(S::Provisioning);
    for c in [
        C::SetBusy,
        C::SetReady,
        C::StartAction,
        C::Finish,
        C::InitiateProvisioning,
    ] {
        assert!(m.apply(c).is_err(), "{c:?}");
        assert_eq!(m.state, S::Provisioning);
    }
    assert_eq!(m.apply(C::Provisioned), Ok(S::Ready));
}

#[test]
fn busy_returns_to_the_interrupted_state() {
    let mut m = Machine::default();
    m.apply(C::StartTransit(PackageKind::Patch))
        .expect("transit");
    assert_eq!(m.apply(C::SetBusy), Ok(S::Busy));
    assert!(
        m.apply(C::TransitDone).is_err(),
        "paused engine makes no progress"
    );
    assert!(
        m.apply(C::InitiateProvisioning).is_err(),
        "no provisioning while busy"
    );
    assert_eq!(m.apply(C::SetBusy), Ok(S::Busy), "idempotent");
    assert_eq!(m.apply(C::SetReady), Ok(S::PatchInTransit));
}

#[test]
fn store_persists_every_change_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = StateStore::open(dir.path()).expect("open");
    assert_eq!(store.state(), S::Ready);
    assert_eq!(
        store.apply(C::StartAction).expect("legal"),
        Some(S::ActionInProgress)
    );
    assert_eq!(store.apply(C::SetBusy).expect("legal"), Some(S::Busy));
    let mut reopened = StateStore::open(dir.path()).expect("reopen");
    assert_eq!(reopened.state(), S::Busy);
    assert_eq!(
        reopened.apply(C::SetReady).expect("legal"),
        Some(S::ActionInProgress)
    );
    assert!(matches!(
        reopened.apply(C::Provisioned),
        Err(StateError::Illegal(_))
    ));
}

proptest! {
    #[test]
    fn random_command_sequences_only_take_legal_transitions(
        commands in proptest::collection::vec(any_command(), 1..60)
    ) {
        let mut m = Machine::default();
        for c in commands {
            let before = m.clone();
            match m.apply(c) {
                Err(_) => prop_assert_eq!(&m, &before, "refused command changed the machine"),
                Ok(next) => {
                    prop_assert_eq!(m.state, next);
                    if before.state == S::Provisioning {
                        prop_assert_eq!((c, next), (C::Provisioned, S::Ready));
                    }
                    if before.state == S::Busy && next != S::Busy {
                        prop_assert_eq!(c, C::SetReady);
                        let expected = before.resume_to.unwrap_or(S::Ready);
                        prop_assert_eq!(next, expected);
                    }
                    if next == S::Busy && before.state != S::Busy {
                        prop_assert_eq!(m.resume_to, Some(before.state));
                    }
                    if next == S::Provisioning && before.state != S::Provisioning {
                        prop_assert_eq!(c, C::InitiateProvisioning);
                        prop_assert_ne!(before.state, S::Busy);
                    }
                    if m.state != S::Busy {
                        prop_assert_eq!(m.resume_to, None);
                    }
                }
            }
        }
    }
}

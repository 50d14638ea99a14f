//! Which Device holds each hub identity, fed by the Device watch.
//!
//! A hub identity is a device id in one hub of one namespace. Several Devices may name the
//! same one; only its holder registers it, writes its twin, receives its twin events and
//! deletes it. The others are refused with reason `DuplicateDeviceId` and touch nothing.
//!
//! The holder is decided from what every replica reads alike, so that a restart or a new
//! leader picks the same Device:
//! 1. a Device whose `Registered` condition is True for its current generation (it holds
//!    the identity now) before one that is not;
//! 2. then the oldest `creationTimestamp`;
//! 3. then the name.
//!
//! Once chosen, a holder keeps the identity until it leaves it (deleted, or its hub changed),
//! even while its own spec change has not been reconciled yet. Then the next Device in line
//! is woken so that it takes over.

use std::collections::HashMap;
use std::sync::RwLock;

use cloudpillar_crds::Device;
use cloudpillar_crds::conditions::{DEVICE_REGISTERED, TRUE, find};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

/// Namespace, hub name and device id.
type Identity = (String, String, String);

/// Where a Device stands in line for its identity; the smallest holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    not_registered: bool,
    created: Timestamp,
    name: String,
}

#[derive(Debug, Clone)]
struct Claim {
    identity: Identity,
    rank: Rank,
}

/// Every Device's claim, and the Devices claiming each identity.
#[derive(Debug, Default)]
struct Claims {
    by_device: HashMap<ObjectRef<Device>, Claim>,
    by_identity: HashMap<Identity, Vec<ObjectRef<Device>>>,
    holders: HashMap<Identity, ObjectRef<Device>>,
}

impl Claims {
    /// Records `device`'s claim; returns the Device that now holds an identity it left.
    fn put(&mut self, device: &Device) -> Option<ObjectRef<Device>> {
        let (object, claim) = claim_of(device)?;
        let left = match self.by_device.get(&object) {
            Some(old) if old.identity == claim.identity => None,
            Some(old) => {
                let old = old.identity.clone();
                self.leave(&object, &old)
            }
            None => None,
        };
        let claimants = self.by_identity.entry(claim.identity.clone()).or_default();
        if !claimants.contains(&object) {
            claimants.push(object.clone());
        }
        self.by_device.insert(object, claim);
        left
    }

    /// Forgets `device`; returns the Device that now holds the identity it left.
    fn remove(&mut self, device: &Device) -> Option<ObjectRef<Device>> {
        let (object, _) = claim_of(device)?;
        let claim = self.by_device.remove(&object)?;
        self.leave(&object, &claim.identity)
    }

    fn leave(
        &mut self,
        object: &ObjectRef<Device>,
        identity: &Identity,
    ) -> Option<ObjectRef<Device>> {
        let claimants = self.by_identity.get_mut(identity)?;
        claimants.retain(|c| c != object);
        if claimants.is_empty() {
            self.by_identity.remove(identity);
        }
        let was_holder = self.holders.get(identity) == Some(object);
        if !was_holder {
            return None;
        }
        self.holders.remove(identity);
        self.holder(identity)
    }

    /// The holder of `identity`: the one chosen before while it still claims it, or else the
    /// first in line, which is then remembered.
    fn holder(&mut self, identity: &Identity) -> Option<ObjectRef<Device>> {
        let claimants = self.by_identity.get(identity)?;
        if let Some(holder) = self.holders.get(identity)
            && claimants.contains(holder)
        {
            return Some(holder.clone());
        }
        let first = claimants
            .iter()
            .filter_map(|c| self.by_device.get(c).map(|claim| (&claim.rank, c)))
            .min_by(|a, b| a.0.cmp(b.0))
            .map(|(_, c)| c.clone())?;
        self.holders.insert(identity.clone(), first.clone());
        Some(first)
    }
}

/// A reference to `device`, the identity it names and its place in line for it.
fn claim_of(device: &Device) -> Option<(ObjectRef<Device>, Claim)> {
    let namespace = device.namespace()?;
    let name = device.name_any();
    let object = ObjectRef::new(&name).within(&namespace);
    let conditions = device.status.as_ref().map(|s| s.conditions.as_slice());
    let registered = find(conditions.unwrap_or_default(), DEVICE_REGISTERED)
        .is_some_and(|c| c.status == TRUE && c.observed_generation == device.metadata.generation);
    let created = device
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(Timestamp::MAX, |t| t.0);
    let claim = Claim {
        identity: (
            namespace,
            device.spec.hub_ref.name.clone(),
            device.device_id(),
        ),
        rank: Rank {
            not_registered: !registered,
            created,
            name,
        },
    };
    Some((object, claim))
}

/// Device ids (per hub) to the Devices that name them, and which of them holds each.
#[derive(Debug, Default)]
pub struct DeviceIndex {
    state: RwLock<State>,
}

#[derive(Debug, Default)]
struct State {
    live: Claims,
    /// Claims gathered during a list, replacing `live` once the list is complete.
    listing: Option<Claims>,
}

impl DeviceIndex {
    /// Follows one event of the Device watch. Returns the Devices that took over an identity
    /// its holder left, to be reconciled.
    pub fn observe(&self, event: &watcher::Event<Device>) -> Vec<ObjectRef<Device>> {
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let woken = match event {
            watcher::Event::Apply(device) => state.live.put(device),
            watcher::Event::Delete(device) => state.live.remove(device),
            watcher::Event::Init => {
                state.listing = Some(Claims::default());
                None
            }
            watcher::Event::InitApply(device) => match state.listing.as_mut() {
                Some(listing) => listing.put(device),
                None => state.live.put(device),
            },
            watcher::Event::InitDone => {
                // Every listed Device is reconciled after a list; none needs waking here.
                if let Some(mut listing) = state.listing.take() {
                    let mut holders = std::mem::take(&mut state.live.holders);
                    holders.retain(|identity, holder| {
                        listing
                            .by_identity
                            .get(identity)
                            .is_some_and(|claimants| claimants.contains(holder))
                    });
                    listing.holders = holders;
                    state.live = listing;
                }
                None
            }
        };
        woken.into_iter().collect()
    }

    /// The Device that holds `device_id` in hub `namespace/hub`.
    pub fn holder(&self, namespace: &str, hub: &str, device_id: &str) -> Option<ObjectRef<Device>> {
        let identity = (namespace.to_owned(), hub.to_owned(), device_id.to_owned());
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .live
            .holder(&identity)
    }

    /// The Device other than `device` that holds the identity `device` names, if any.
    pub fn held_by_other(&self, device: &Device) -> Option<ObjectRef<Device>> {
        let namespace = device.namespace()?;
        let holder = self.holder(&namespace, &device.spec.hub_ref.name, &device.device_id())?;
        (holder != ObjectRef::from_obj(device)).then_some(holder)
    }
}

#[cfg(test)]
mod tests {
    use cloudpillar_crds::DeviceSpec;
    use cloudpillar_crds::conditions::Condition;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn device(name: &str, device_id: &str, created: i64) -> Device {
        let mut device = Device::new(
            name,
            DeviceSpec {
                device_id: Some(device_id.into()),
                ..DeviceSpec::default()
            },
        );
        device.metadata.namespace = Some("lab".into());
        device.metadata.generation = Some(1);
        device.metadata.creation_timestamp =
            Some(Time(Timestamp::from_second(created).expect("valid time")));
        device
    }

    fn registered(mut device: Device) -> Device {
        let status = device.status.get_or_insert_with(Default::default);
        status.conditions.push(Condition {
            type_: DEVICE_REGISTERED.into(),
            status: TRUE.into(),
            reason: "Registered".into(),
            message: String::new(),
            observed_generation: device.metadata.generation,
            last_transition_time: Time(Timestamp::from_second(0).expect("valid time")),
        });
        device
    }

    fn holder(index: &DeviceIndex, device_id: &str) -> Option<String> {
        index.holder("lab", "default", device_id).map(|r| r.name)
    }

    /// Devices `pc-02` and the newer `spare` both name device id pc-02; `spare` is seen first.
    fn pc02_and_spare() -> DeviceIndex {
        let index = DeviceIndex::default();
        index.observe(&watcher::Event::Apply(device("spare", "pc-02", 20)));
        index.observe(&watcher::Event::Apply(device("pc-02", "pc-02", 10)));
        index
    }

    #[test]
    fn the_oldest_device_holds_an_identity_named_twice() {
        let index = pc02_and_spare();
        assert_eq!(holder(&index, "pc-02").as_deref(), Some("pc-02"));
        let spare = device("spare", "pc-02", 20);
        assert_eq!(
            index.held_by_other(&spare).map(|r| r.name).as_deref(),
            Some("pc-02")
        );
        assert!(index.held_by_other(&device("pc-02", "pc-02", 10)).is_none());
    }

    #[test]
    fn a_registered_device_keeps_its_identity_against_an_older_one() {
        // An older Device that moved into this hub does not take the identity over.
        let index = DeviceIndex::default();
        index.observe(&watcher::Event::InitApply(registered(device(
            "b", "pc-02", 20,
        ))));
        index.observe(&watcher::Event::InitApply(device("a", "pc-02", 10)));
        assert_eq!(holder(&index, "pc-02").as_deref(), Some("b"));

        // Its next spec change does not hand the identity to the older Device.
        let mut edited = registered(device("b", "pc-02", 20));
        edited.metadata.generation = Some(2);
        index.observe(&watcher::Event::Apply(edited));
        assert_eq!(holder(&index, "pc-02").as_deref(), Some("b"));
    }

    #[test]
    fn the_next_device_in_line_is_woken_when_the_holder_goes() {
        let index = pc02_and_spare();
        assert_eq!(holder(&index, "pc-02").as_deref(), Some("pc-02"));

        let woken = index.observe(&watcher::Event::Delete(device("pc-02", "pc-02", 10)));
        assert_eq!(woken, vec![ObjectRef::new("spare").within("lab")]);
        assert_eq!(holder(&index, "pc-02").as_deref(), Some("spare"));
        let woken = index.observe(&watcher::Event::Delete(device("spare", "pc-02", 20)));
        assert!(woken.is_empty());
        assert_eq!(holder(&index, "pc-02"), None);
    }

    #[test]
    fn a_device_that_moves_to_another_hub_leaves_its_identity() {
        let index = pc02_and_spare();
        assert_eq!(holder(&index, "pc-02").as_deref(), Some("pc-02"));

        let mut moved = device("pc-02", "pc-02", 10);
        moved.spec.hub_ref.name = "other".into();
        let woken = index.observe(&watcher::Event::Apply(moved));
        assert_eq!(woken, vec![ObjectRef::new("spare").within("lab")]);
        assert_eq!(
            index
                .holder("lab", "other", "pc-02")
                .map(|r| r.name)
                .as_deref(),
            Some("pc-02")
        );
    }

    #[test]
    fn a_relist_drops_devices_deleted_meanwhile_and_keeps_holders() {
        let index = DeviceIndex::default();
        index.observe(&watcher::Event::Apply(device("pc-02", "pc-02", 10)));
        index.observe(&watcher::Event::Apply(device("gone", "pc-09", 10)));
        assert_eq!(holder(&index, "pc-02").as_deref(), Some("pc-02"));
        assert_eq!(holder(&index, "pc-09").as_deref(), Some("gone"));

        index.observe(&watcher::Event::Init);
        index.observe(&watcher::Event::InitApply(device("pc-02", "pc-02", 10)));
        index.observe(&watcher::Event::InitApply(device("older", "pc-02", 5)));
        index.observe(&watcher::Event::InitDone);
        let remembered = index.state.read().map(|s| s.live.holders.len());
        assert_eq!(
            remembered.ok(),
            Some(1),
            "a holder that is gone is forgotten"
        );
        assert_eq!(holder(&index, "pc-09"), None);
        assert_eq!(
            holder(&index, "pc-02").as_deref(),
            Some("pc-02"),
            "the holder stays while it claims the identity"
        );
    }
}

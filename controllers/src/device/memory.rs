//! Status the Device controller wrote that its cache may not show yet.
//!
//! A reconcile starts from the cached Device. Right after a status write the cache can still
//! hold the version before it; comparing against that version would write the same status
//! again and, before the `Registered` condition shows, register the device again. So each
//! write is remembered until the cache shows it, for a short while at most: only this
//! controller writes these fields, so the memory is never staler than the cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cloudpillar_crds::{Device, DeviceStatus};
use kube::ResourceExt;

/// A remembered write is dropped after this long, whether or not the cache showed it.
const FORGET_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Entries {
    by_uid: HashMap<String, (DeviceStatus, Instant)>,
    swept: Option<Instant>,
}

/// Recent status writes of the Device controller, by object UID.
#[derive(Debug, Default)]
pub struct WrittenStatus {
    entries: Mutex<Entries>,
}

impl WrittenStatus {
    /// Remembers that `device` now carries `status` (the fields this controller owns).
    pub fn remember(&self, device: &Device, status: &DeviceStatus) {
        let Some(uid) = device.uid() else {
            return;
        };
        let now = Instant::now();
        let mut entries = self.lock();
        if entries
            .swept
            .is_none_or(|at| now.duration_since(at) >= FORGET_AFTER)
        {
            entries
                .by_uid
                .retain(|_, (_, written)| now.duration_since(*written) < FORGET_AFTER);
            entries.swept = Some(now);
        }
        entries.by_uid.insert(uid, (owned(status), now));
    }

    /// Forgets `device` (it is going away).
    pub fn forget(&self, device: &Device) {
        if let Some(uid) = device.uid() {
            self.lock().by_uid.remove(&uid);
        }
    }

    /// The freshest status known for `device`: the cached one, or the last write while the
    /// cache has not shown it yet (with the cached assignment records, which another
    /// controller owns).
    pub fn current(&self, device: &Device) -> DeviceStatus {
        let cached = device.status.clone().unwrap_or_default();
        let Some(uid) = device.uid() else {
            return cached;
        };
        let mut entries = self.lock();
        let Some((written, at)) = entries.by_uid.get(&uid) else {
            return cached;
        };
        if at.elapsed() >= FORGET_AFTER || *written == owned(&cached) {
            entries.by_uid.remove(&uid);
            return cached;
        }
        DeviceStatus {
            assignment: cached.assignment,
            previous_assignments: cached.previous_assignments,
            ..written.clone()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The status without the fields other controllers own: the assignment records belong to
/// the Rollout controller's field manager.
pub(super) fn owned(status: &DeviceStatus) -> DeviceStatus {
    DeviceStatus {
        assignment: None,
        previous_assignments: Vec::new(),
        ..status.clone()
    }
}

#[cfg(test)]
mod tests {
    use cloudpillar_crds::{DeviceAssignment, DeviceRolloutPhase, DeviceSpec};

    use super::*;

    fn device(status: Option<DeviceStatus>) -> Device {
        let mut device = Device::new("dev-1", DeviceSpec::default());
        device.metadata.uid = Some("uid-1".into());
        device.status = status;
        device
    }

    #[test]
    fn a_lagging_cache_is_answered_with_the_last_write_until_it_catches_up() {
        let memory = WrittenStatus::default();
        let written = DeviceStatus {
            observed_generation: Some(1),
            device_state: Some("READY".into()),
            ..DeviceStatus::default()
        };
        memory.remember(&device(None), &written);

        let lagging = device(None);
        assert_eq!(memory.current(&lagging), written);

        let assignment = DeviceAssignment {
            rollout: "ro".into(),
            rollout_uid: "ro-uid".into(),
            recipe: "fw".into(),
            recipe_id: "fw-1".into(),
            wave: 1,
            phase: DeviceRolloutPhase::Assigned,
            reason: None,
            assigned_time: None,
            phase_time: None,
        };
        let caught_up = device(Some(DeviceStatus {
            assignment: Some(assignment.clone()),
            ..written.clone()
        }));
        let current = memory.current(&caught_up);
        assert_eq!(current.assignment, Some(assignment));
        assert!(memory.lock().by_uid.is_empty(), "a seen write is forgotten");

        memory.remember(&caught_up, &written);
        memory.forget(&caught_up);
        assert_eq!(memory.current(&lagging), DeviceStatus::default());
    }
}

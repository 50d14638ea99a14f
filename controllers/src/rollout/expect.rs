//! Writes the Rollout controller made that the Device cache has not shown yet.
//!
//! Planning from a cache that lags behind the controller's own writes could start a device
//! twice or start more than `maxConcurrent`. So every assignment write is remembered here
//! until the cache shows it, and a Rollout is not planned while any of its writes is unseen.
//! This is only a freshness check on the cache: what a Rollout does is always derived from
//! the durable records. After a restart the cache is filled by a fresh, consistent list, so
//! nothing is lost by this memory starting empty.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cloudpillar_crds::{Device, DeviceAssignment};
use kube::runtime::reflector::{ObjectRef, Store};

/// An unseen write is forgotten after this long (the write may have been superseded).
const FORGET_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Expected {
    device: ObjectRef<Device>,
    assignment: Option<DeviceAssignment>,
    written: Instant,
}

/// Unseen assignment writes, per Rollout UID.
#[derive(Debug, Default)]
pub struct Expectations {
    pending: Mutex<HashMap<String, Vec<Expected>>>,
}

impl Expectations {
    /// Remembers that `device` now carries `assignment` (`None`: no assignment).
    pub fn expect(
        &self,
        rollout_uid: &str,
        device: ObjectRef<Device>,
        assignment: Option<DeviceAssignment>,
    ) {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = pending.entry(rollout_uid.to_owned()).or_default();
        list.retain(|e| e.device != device);
        list.push(Expected {
            device,
            assignment,
            written: Instant::now(),
        });
    }

    /// Whether some write of this Rollout is not yet in `devices`; drops seen and old ones.
    pub fn unseen(&self, rollout_uid: &str, devices: &Store<Device>) -> bool {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(list) = pending.get_mut(rollout_uid) else {
            return false;
        };
        list.retain(|e| {
            if e.written.elapsed() > FORGET_AFTER {
                return false;
            }
            let Some(device) = devices.get(&e.device) else {
                return false;
            };
            let status = device.status.as_ref();
            let cached = status.and_then(|s| s.assignment.as_ref());
            // Another Rollout took the device and keeps this one's record among the
            // previous assignments: whatever this Rollout wrote last has been superseded.
            let handed_over = cached.is_some_and(|c| c.rollout_uid != rollout_uid)
                && status.is_some_and(|s| {
                    s.previous_assignments
                        .iter()
                        .any(|p| p.rollout_uid == rollout_uid)
                });
            !handed_over && cached != e.assignment.as_ref()
        });
        let unseen = !list.is_empty();
        if !unseen {
            pending.remove(rollout_uid);
        }
        unseen
    }

    /// Forgets a Rollout entirely (it was deleted).
    pub fn forget(&self, rollout_uid: &str) {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(rollout_uid);
    }
}

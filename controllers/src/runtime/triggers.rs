//! Which Device changes call for a Device reconcile.
//!
//! The Device controller acts on the spec and on deletion. Its own writes (the finalizer, the
//! status) and the Rollout controller's assignment records change neither, yet each of them
//! comes back from the watch as a new version of the object. Passing those on would cost a
//! twin read per write, and a reconcile started from a cache that has not yet seen the status
//! just written would register the device a second time. Twin events and the periodic resync
//! still reach every Device; they do not pass through here. After every (re)list the filter
//! starts afresh, so that each listed Device is reconciled once more (field case F20).

use std::collections::HashMap;
use std::future::ready;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cloudpillar_crds::Device;
use futures::{Stream, StreamExt};
use kube::ResourceExt;
use kube::runtime::watcher;

/// An object not seen for this long is forgotten; its next version passes again.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// What a version must change, compared with the last one passed, to be passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Relevant {
    generation: Option<i64>,
    deleting: bool,
}

/// Counts the lists a watch made; shared by the watch and the filter.
#[derive(Debug, Clone, Default)]
pub struct Lists(Arc<AtomicU64>);

impl Lists {
    /// Notes a watch event; the start of a (re)list counts.
    pub fn note<K>(&self, event: &Result<watcher::Event<K>, watcher::Error>) {
        if matches!(event, Ok(watcher::Event::Init)) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Remembers the relevant state of every Device passed on since the last list.
#[derive(Debug, Default)]
pub struct SpecFilter {
    seen: HashMap<String, (Relevant, Instant)>,
    swept: Option<Instant>,
    lists: Lists,
    listed: u64,
}

impl SpecFilter {
    /// A filter that starts afresh whenever `lists` counts a new list.
    pub fn new(lists: Lists) -> Self {
        Self {
            lists,
            ..Self::default()
        }
    }

    /// Whether `device` differs from the last version passed in spec or deletion.
    pub fn passes(&mut self, device: &Device, now: Instant) -> bool {
        let listed = self.lists.count();
        if listed != self.listed {
            self.seen.clear();
            self.listed = listed;
        }
        if self
            .swept
            .is_none_or(|at| now.duration_since(at) >= FORGET_AFTER)
        {
            self.seen
                .retain(|_, (_, seen)| now.duration_since(*seen) < FORGET_AFTER);
            self.swept = Some(now);
        }
        let key = device.uid().unwrap_or_else(|| {
            format!(
                "{}/{}",
                device.namespace().unwrap_or_default(),
                device.name_any()
            )
        });
        let relevant = Relevant {
            generation: device.metadata.generation,
            deleting: device.metadata.deletion_timestamp.is_some(),
        };
        let before = self.seen.insert(key, (relevant, now)).map(|(r, _)| r);
        before != Some(relevant)
    }
}

/// The versions of `devices` that change a spec or start a deletion (the first version of an
/// object after each list passes).
pub fn spec_or_deletion<S>(
    devices: S,
    lists: Lists,
) -> impl Stream<Item = Arc<Device>> + Send + 'static
where
    S: Stream<Item = Arc<Device>> + Send + 'static,
{
    let mut filter = SpecFilter::new(lists);
    devices.filter(move |device| ready(filter.passes(device, Instant::now())))
}

#[cfg(test)]
mod tests {
    use cloudpillar_crds::DeviceSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn device(generation: i64) -> Device {
        let mut device = Device::new("dev-1", DeviceSpec::default());
        device.metadata.uid = Some("uid-1".into());
        device.metadata.generation = Some(generation);
        device
    }

    #[test]
    fn status_and_finalizer_writes_do_not_pass_spec_changes_and_deletion_do() {
        let mut filter = SpecFilter::default();
        let now = Instant::now();
        assert!(filter.passes(&device(1), now), "first sight passes");

        let mut written = device(1);
        written.metadata.finalizers = Some(vec!["cloudpillar.io/device".into()]);
        written.status = Some(Default::default());
        assert!(!filter.passes(&written, now), "own writes do not pass");

        assert!(filter.passes(&device(2), now), "a spec change passes");

        let mut deleting = device(2);
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert!(filter.passes(&deleting, now), "a deletion passes");
    }

    #[test]
    fn every_device_passes_once_more_after_a_relist() {
        let lists = Lists::default();
        let mut filter = SpecFilter::new(lists.clone());
        let now = Instant::now();
        lists.note::<Device>(&Ok(watcher::Event::Init));
        assert!(filter.passes(&device(1), now));
        assert!(!filter.passes(&device(1), now));
        lists.note::<Device>(&Ok(watcher::Event::InitDone));
        assert!(!filter.passes(&device(1), now));
        lists.note::<Device>(&Ok(watcher::Event::Init));
        assert!(filter.passes(&device(1), now), "listed again");
    }

    #[test]
    fn an_object_not_seen_for_an_hour_passes_again() {
        let mut filter = SpecFilter::default();
        let start = Instant::now();
        assert!(filter.passes(&device(1), start));
        assert!(!filter.passes(&device(1), start + Duration::from_secs(60)));
        let later = start + Duration::from_secs(60) + FORGET_AFTER + Duration::from_secs(1);
        assert!(
            filter.passes(&device(1), later),
            "a forgotten object passes again"
        );
    }
}

//! Splitting devices between replicas of a service.

use sha2::{Digest, Sha256};

/// The share of devices one replica serves: devices whose id hashes to `index` modulo `count`.
///
/// The hash is the first 8 bytes of SHA-256 of the device id, so every replica and every
/// version of the service agrees on who owns a device. Replicas with different `count` values
/// must not run at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    index: u32,
    count: u32,
}

/// A partition count of 0, or an index outside `0..count`.
#[derive(Debug, thiserror::Error)]
#[error("{}", if *count == 0 {
    "the partition count must be at least 1".to_owned()
} else {
    format!("partition index {index} is not below the partition count {count}")
})]
pub struct InvalidPartition {
    /// The index given.
    pub index: u32,
    /// The count given.
    pub count: u32,
}

impl Partition {
    /// Replica `index` of `count`.
    pub fn new(index: u32, count: u32) -> Result<Self, InvalidPartition> {
        if count == 0 || index >= count {
            return Err(InvalidPartition { index, count });
        }
        Ok(Self { index, count })
    }

    /// The single partition owning every device.
    pub fn all() -> Self {
        Self { index: 0, count: 1 }
    }

    /// This replica's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Number of replicas.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// True when this partition serves `device`.
    pub fn owns(&self, device: &str) -> bool {
        self.count == 1 || Self::of(device, self.count) == self.index
    }

    /// The partition index of `device` among `count` partitions.
    pub fn of(device: &str, count: u32) -> u32 {
        let digest = Sha256::digest(device.as_bytes());
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        (u64::from_be_bytes(head) % u64::from(count.max(1))) as u32
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-of-{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_has_exactly_one_owner() {
        let replicas: Vec<Partition> = (0..3)
            .map(|i| Partition::new(i, 3).expect("partition"))
            .collect();
        let mut per_replica = [0usize; 3];
        for n in 0..300 {
            let device = format!("device-{n}");
            let owners: Vec<u32> = replicas
                .iter()
                .filter(|p| p.owns(&device))
                .map(Partition::index)
                .collect();
            assert_eq!(owners.len(), 1, "{device} owned by {owners:?}");
            per_replica[owners[0] as usize] += 1;
        }
        assert!(
            per_replica.iter().all(|&n| n > 50),
            "uneven split {per_replica:?}"
        );
    }

    #[test]
    fn index_must_be_below_count() {
        let error = Partition::new(2, 2).expect_err("index too high");
        assert_eq!(
            error.to_string(),
            "partition index 2 is not below the partition count 2"
        );
        let error = Partition::new(0, 0).expect_err("no partitions");
        assert_eq!(error.to_string(), "the partition count must be at least 1");
        assert!(Partition::all().owns("anything"));
    }
}

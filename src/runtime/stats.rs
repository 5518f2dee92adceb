//! Per-shard counters, kept as plain integers on the shard and summed on demand.

pub use crate::driver::DriverStats as ShardStats;

/// Counters of a whole server: each shard's and their sum.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// One entry per shard that answered, in shard order.
    pub shards: Vec<ShardStats>,
    /// Shards that did not answer in time (a stopped, failed or stalled shard);
    /// empty when every shard is in `shards`.
    pub missing: Vec<usize>,
    /// The sum over `shards`.
    pub total: ShardStats,
}

impl ServerStats {
    pub(crate) fn from_shards(shards: Vec<ShardStats>, missing: Vec<usize>) -> Self {
        let mut total = ShardStats::default();
        for s in &shards {
            total.add(s);
        }
        Self {
            shards,
            missing,
            total,
        }
    }

    /// Whether every shard answered.
    pub fn complete(&self) -> bool {
        self.missing.is_empty()
    }
}

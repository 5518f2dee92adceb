//! What each shard reports about itself, for supervision and orchestrators.
//!
//! A shard writes its [`Liveness`] once per loop turn (a few relaxed stores to
//! memory only it writes), so reading health costs the shards nothing and works
//! even when a shard cannot answer requests.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

/// Where a shard is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardState {
    /// Starting up.
    Starting,
    /// Running its loop.
    Serving,
    /// Stopped after a shutdown request.
    Stopped,
    /// Ended unexpectedly (a panic, or an error of its socket); the message says why.
    /// Its sessions were closed towards the application and the peers.
    Failed(String),
}

/// One shard's health, from [`super::SoeServer::health`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardHealth {
    /// Shard index.
    pub shard: usize,
    /// Where it is in its life.
    pub state: ShardState,
    /// Loop turns so far.
    pub turns: u64,
    /// Time since its last turn began. Large while the shard sleeps with nothing
    /// to do, which is healthy: see [`ShardHealth::stalled`].
    pub last_turn_age: Duration,
    /// Whether it sleeps now, waiting for work.
    pub sleeping: bool,
    /// How late it is for the wake-up it planned (zero when not late).
    pub overdue: Duration,
    /// Whether it is at capacity and refusing new sessions.
    pub overloaded: bool,
    /// Whether it is draining: serving its sessions, refusing new ones.
    pub draining: bool,
    /// Sessions it held at its last turn.
    pub sessions: u64,
}

impl ShardHealth {
    /// Whether the shard is serving and responsive: not failed or stopped, and not
    /// more than `grace` past a turn it should have run (a busy turn that has
    /// lasted that long, or a wake-up that has not come).
    pub fn alive(&self, grace: Duration) -> bool {
        self.state == ShardState::Serving && !self.stalled(grace)
    }

    /// Whether the shard has been in one turn, or late for a wake-up, for more than
    /// `grace`.
    pub fn stalled(&self, grace: Duration) -> bool {
        if self.sleeping {
            self.overdue > grace
        } else {
            self.last_turn_age > grace
        }
    }
}

const STARTING: u8 = 0;
const SERVING: u8 = 1;
const STOPPED: u8 = 2;
const FAILED: u8 = 3;

/// Times are nanoseconds since the server's epoch; `u64::MAX` is "never".
#[derive(Debug)]
pub(crate) struct Liveness {
    state: AtomicU8,
    turns: AtomicU64,
    last_turn: AtomicU64,
    sleeping: AtomicBool,
    wake_by: AtomicU64,
    overloaded: AtomicBool,
    draining: AtomicBool,
    sessions: AtomicU64,
    failure: Mutex<Option<String>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            state: AtomicU8::new(STARTING),
            turns: AtomicU64::new(0),
            last_turn: AtomicU64::new(0),
            sleeping: AtomicBool::new(false),
            wake_by: AtomicU64::new(u64::MAX),
            overloaded: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            sessions: AtomicU64::new(0),
            failure: Mutex::new(None),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1)
}

impl Liveness {
    pub(crate) fn serving(&self) {
        self.state.store(SERVING, Ordering::Release);
    }

    pub(crate) fn stopped(&self) {
        self.state.store(STOPPED, Ordering::Release);
    }

    pub(crate) fn failed(&self, why: String) {
        if let Ok(mut failure) = self.failure.lock() {
            *failure = Some(why);
        }
        self.state.store(FAILED, Ordering::Release);
    }

    /// The failure message, if the shard failed.
    pub(crate) fn failure(&self) -> Option<String> {
        if self.state.load(Ordering::Acquire) != FAILED {
            return None;
        }
        self.failure.lock().ok()?.clone()
    }

    /// A turn began `at` (since the epoch), with `sessions` live.
    pub(crate) fn turn(&self, at: Duration, overloaded: bool, draining: bool, sessions: usize) {
        self.turns.fetch_add(1, Ordering::Relaxed);
        self.last_turn.store(nanos(at), Ordering::Relaxed);
        self.sleeping.store(false, Ordering::Relaxed);
        self.overloaded.store(overloaded, Ordering::Relaxed);
        self.draining.store(draining, Ordering::Relaxed);
        self.sessions.store(sessions as u64, Ordering::Relaxed);
    }

    /// Sessions live at the latest turn.
    pub(crate) fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

    /// The shard goes to sleep with `sessions` live and means to wake by
    /// `wake_by` (since the epoch).
    pub(crate) fn sleep(&self, wake_by: Option<Duration>, sessions: usize) {
        self.sessions.store(sessions as u64, Ordering::Relaxed);
        self.wake_by
            .store(wake_by.map_or(u64::MAX, nanos), Ordering::Relaxed);
        self.sleeping.store(true, Ordering::Relaxed);
    }

    /// The health as seen at `now` (since the epoch).
    pub(crate) fn health(&self, shard: usize, now: Duration) -> ShardHealth {
        let state = match self.state.load(Ordering::Acquire) {
            STARTING => ShardState::Starting,
            SERVING => ShardState::Serving,
            STOPPED => ShardState::Stopped,
            _ => ShardState::Failed(self.failure().unwrap_or_default()),
        };
        let now = nanos(now);
        let wake_by = self.wake_by.load(Ordering::Relaxed);
        ShardHealth {
            shard,
            state,
            turns: self.turns.load(Ordering::Relaxed),
            last_turn_age: Duration::from_nanos(
                now.saturating_sub(self.last_turn.load(Ordering::Relaxed)),
            ),
            sleeping: self.sleeping.load(Ordering::Relaxed),
            overdue: Duration::from_nanos(now.saturating_sub(wake_by)),
            overloaded: self.overloaded.load(Ordering::Relaxed),
            draining: self.draining.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
        }
    }
}

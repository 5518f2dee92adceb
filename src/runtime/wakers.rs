//! Async waiting on the runtime's lock-free queues, for any executor.
//!
//! The queues between handles and shards are `crossbeam` channels, which have no
//! async side. A task that finds one full (or, for the event stream, empty)
//! registers its waker in a [`WakerSet`] and looks again; a shard, once per turn
//! in which it drained the queue (or filled it), wakes whoever registered. The
//! lock is only taken by tasks that have to wait and by the shard when someone
//! does: the per-message path is one relaxed load per turn, not per message.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::task::Waker;

/// Tasks waiting for a queue to change.
#[derive(Debug, Default)]
pub(crate) struct WakerSet {
    /// Whether any waker is registered (checked by the shard without the lock).
    armed: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl WakerSet {
    /// Registers `waker`; the caller must then look at the queue again before it
    /// returns `Pending` (the shard may have changed it just before).
    pub(crate) fn register(&self, waker: &Waker) {
        if let Ok(mut wakers) = self.wakers.lock() {
            if !wakers.iter().any(|w| w.will_wake(waker)) {
                wakers.push(waker.clone());
            }
            self.armed.store(true, Ordering::Relaxed);
        }
        // Pairs with the fence in `wake_all`: either the shard sees `armed`, or
        // the caller's second look sees what the shard did.
        fence(Ordering::SeqCst);
    }

    /// Wakes every registered task, after the queue changed.
    pub(crate) fn wake_all(&self) {
        fence(Ordering::SeqCst);
        if !self.armed.load(Ordering::Relaxed) {
            return;
        }
        let wakers = match self.wakers.lock() {
            Ok(mut wakers) => {
                self.armed.store(false, Ordering::Relaxed);
                std::mem::take(&mut *wakers)
            }
            Err(_) => return,
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn wakes_each_registered_task_once() {
        let set = WakerSet::default();
        set.wake_all();
        let a = Arc::new(Count(AtomicUsize::new(0)));
        let b = Arc::new(Count(AtomicUsize::new(0)));
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        set.register(&wa);
        set.register(&wa);
        set.register(&wb);
        set.wake_all();
        set.wake_all();
        assert_eq!(a.0.load(Ordering::Relaxed), 1);
        assert_eq!(b.0.load(Ordering::Relaxed), 1);
    }
}

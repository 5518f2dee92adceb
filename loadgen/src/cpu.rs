//! Per-thread CPU clocks, so server CPU is measured from the server's own threads even
//! while the clients share the machine.

use std::os::unix::thread::JoinHandleExt;
use std::thread::JoinHandle;
use std::time::Duration;

fn read_clock(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call; clock_gettime
    // only writes to it and reports an invalid clock id with an error return.
    let rc = unsafe { libc::clock_gettime(clock, &raw mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// CPU time the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    read_clock(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or_default()
}

/// The CPU clock of another thread, readable from any thread while that thread runs.
#[derive(Debug, Clone, Copy)]
pub struct ThreadClock(libc::clockid_t);

impl ThreadClock {
    /// The clock of the thread behind `handle`.
    pub fn of<T>(handle: &JoinHandle<T>) -> Option<Self> {
        let thread = handle.as_pthread_t();
        let mut clock: libc::clockid_t = 0;
        // SAFETY: `thread` comes from a JoinHandle that is alive and not yet joined, so
        // it names a valid pthread; `clock` is a valid, writable clockid_t.
        let rc = unsafe { libc::pthread_getcpuclockid(thread as libc::pthread_t, &raw mut clock) };
        (rc == 0).then_some(Self(clock))
    }

    /// CPU time used so far by that thread (`None` once it has exited).
    pub fn read(&self) -> Option<Duration> {
        read_clock(self.0)
    }
}

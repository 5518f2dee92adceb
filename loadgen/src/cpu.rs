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

/// The calling thread's kernel thread id.
pub fn current_thread_id() -> libc::pid_t {
    // SAFETY: gettid takes no arguments, cannot fail and only returns the id.
    unsafe { libc::gettid() }
}

/// The share of a thread's CPU time the kernel sampled it running in kernel mode
/// (`stime / (utime + stime)` of `/proc/self/task/<tid>/stat`, in scheduler
/// ticks): how the kernel itself splits a thread's exact total, as `getrusage`
/// does for the calling thread: a thread never sampled counts as all user time,
/// as the kernel counts it. `None` if the thread is gone.
pub fn kernel_share(tid: libc::pid_t) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    kernel_share_of_stat(&stat)
}

/// [`kernel_share`] of the text of a `stat` file.
fn kernel_share_of_stat(stat: &str) -> Option<f64> {
    // The command name is in parentheses and may hold spaces or parentheses
    // itself; the fields after it start with the state (field 3), so utime
    // (field 14) and stime (field 15) are the 12th and 13th after it.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(if utime + stime == 0 {
        0.0
    } else {
        stime as f64 / (utime + stime) as f64
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_share_reads_utime_and_stime_after_the_command_name() {
        // Fields 14 and 15 are 300 and 100 ticks; the name holds ") (" and spaces.
        let stat = "4242 (peer) (x) y) S 1 2 3 4 5 6 7 8 9 10 300 100 0 0 20 0 1 0";
        assert_eq!(kernel_share_of_stat(stat), Some(0.25));
        let never_sampled = "7 (t) S 1 2 3 4 5 6 7 8 9 10 0 0 0 0";
        assert_eq!(kernel_share_of_stat(never_sampled), Some(0.0));
        assert_eq!(kernel_share_of_stat("7 (t) S 1 2"), None);
    }

    #[test]
    fn this_threads_share_is_read_from_proc() {
        let zero = std::fs::File::open("/dev/zero").unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let start = thread_cpu_time();
        // A kernel memset until the scheduler tick has sampled the thread a few
        // times (bounded by count).
        for _ in 0..20_000 {
            std::io::Read::read_exact(&mut &zero, &mut buf).unwrap();
            if thread_cpu_time() - start >= Duration::from_millis(100) {
                break;
            }
        }
        let share = kernel_share(current_thread_id()).expect("this thread");
        assert!(share > 0.5 && share <= 1.0, "{share}");
    }
}

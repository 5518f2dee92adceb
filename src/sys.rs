//! The runtime's system calls: the UDP sockets of a shard group, batched
//! `recvmmsg`/`sendmmsg` with reused buffers, the socket error queue (ICMP errors),
//! the shard's wait (`ppoll` on its socket and an `eventfd` that handles signal),
//! CPU affinity, and per-thread CPU time. The Tokio adapter shares the error
//! queue functions.
//!
//! This is the only module of the crate with `unsafe` code: calls the standard
//! library does not wrap. Each documents why its pointers are valid.
#![allow(unsafe_code)]
// The Tokio adapter uses the error queue only.
#![cfg_attr(not(feature = "runtime"), allow(dead_code))]

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

#[cfg(feature = "runtime")]
use crate::runtime::steer::{BpfInsn, steering_program};

/// Binds `count` sockets to `addr` with `SO_REUSEPORT`, in order (socket `i` is
/// index `i` of the reuseport group), non-blocking, with `buffer` bytes of kernel
/// receive and send buffer. Port 0 picks one port for the whole group.
pub(crate) fn bind_group(
    addr: SocketAddr,
    count: usize,
    buffer: usize,
) -> io::Result<Vec<UdpSocket>> {
    let mut sockets = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        if addr.is_ipv6() {
            // Dual-stack where the address allows it; v4-mapped peers steer like IPv4.
            let _ = socket.set_only_v6(false);
        }
        // Best effort: the kernel caps these at net.core.[rw]mem_max.
        let _ = socket.set_recv_buffer_size(buffer);
        let _ = socket.set_send_buffer_size(buffer);
        enable_error_queue(socket.as_raw_fd(), addr.is_ipv6())?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        if addr.port() == 0 {
            let bound = socket
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("bound address is not an IP address"))?;
            addr.set_port(bound.port());
        }
        sockets.push(UdpSocket::from(socket));
    }
    Ok(sockets)
}

/// Attaches the steering program for `shards` sockets to the group of `socket`.
#[cfg(feature = "runtime")]
pub(crate) fn attach_steering(socket: &UdpSocket, shards: usize) -> io::Result<()> {
    let mut program: Vec<BpfInsn> = steering_program(shards);
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `program`, a live Vec of `struct sock_filter`
    // instructions, for `len` entries; the kernel copies the program during the call and keeps no pointer.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast::<libc::c_void>(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Converts a kernel socket address to a `SocketAddr`.
fn from_storage(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a `sockaddr_in`, which is
            // smaller than and alignment-compatible with `sockaddr_storage`.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for `sockaddr_in6`.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `addr` into `storage`; returns the address length.
fn to_storage(addr: &SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    let sock: socket2::SockAddr = (*addr).into();
    let len = sock.len();
    // SAFETY: `SockAddr` wraps a `sockaddr_storage`; copying `len` bytes (at most
    // its size) into another `sockaddr_storage` stays in bounds of both.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sock.as_ptr().cast::<u8>(),
            (storage as *mut libc::sockaddr_storage).cast::<u8>(),
            len as usize,
        );
    }
    len
}

/// Asks the kernel to queue the ICMP errors that datagrams sent from `socket`
/// draw (`IP_RECVERR`; on IPv6 sockets `IPV6_RECVERR` too, and `IP_RECVERR` for
/// their IPv4-mapped peers), so [`read_error_queue`] can tell which peer is
/// unreachable. Without it an unconnected socket never hears of them.
pub(crate) fn enable_error_queue(socket: RawFd, ipv6: bool) -> io::Result<()> {
    let on: libc::c_int = 1;
    let set = |level, name| {
        // SAFETY: `on` is a live `c_int` and the length passed is its size.
        let rc = unsafe {
            libc::setsockopt(
                socket,
                level,
                name,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    if ipv6 {
        set(libc::SOL_IPV6, libc::IPV6_RECVERR)?;
        // Best effort: an IPv6-only socket has no IPv4-mapped peers.
        let _ = set(libc::SOL_IP, libc::IP_RECVERR);
        Ok(())
    } else {
        set(libc::SOL_IP, libc::IP_RECVERR)
    }
}

/// What [`read_error_queue`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ErrorQueueRead {
    /// Port-unreachable reports (each passed to the callback).
    pub(crate) unreachable: usize,
    /// Other entries (host or network unreachable, fragmentation needed, ...):
    /// read and dropped.
    pub(crate) other: usize,
    /// The limit was reached; more may wait.
    pub(crate) more: bool,
}

/// Reads up to `limit` entries of `socket`'s error queue (`MSG_ERRQUEUE`, never
/// blocking), calling `unreachable` with the destination of each datagram that
/// drew an ICMP (or ICMPv6) port unreachable: a peer whose port is closed.
pub(crate) fn read_error_queue(
    socket: RawFd,
    limit: usize,
    mut unreachable: impl FnMut(SocketAddr),
) -> ErrorQueueRead {
    let mut read = ErrorQueueRead::default();
    for _ in 0..limit {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut payload = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        };
        // Room for a few control messages, aligned as `cmsghdr` wants.
        let mut control = [0u64; 64];
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: `msg` points at `name`, `iov` (over `payload`) and `control`,
        // all live for the call and of the sizes given; the call never blocks.
        let rc =
            unsafe { libc::recvmsg(socket, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if rc < 0 {
            // Empty (EAGAIN), or nothing more to learn from this socket.
            return read;
        }
        let mut port_unreachable = false;
        // SAFETY: `msg` was filled by the kernel; the macros walk its control
        // buffer within `msg_controllen`, and the error is read unaligned from
        // inside the control message that holds it.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                let (level, kind) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
                if (level == libc::SOL_IP && kind == libc::IP_RECVERR)
                    || (level == libc::SOL_IPV6 && kind == libc::IPV6_RECVERR)
                {
                    let err = std::ptr::read_unaligned(
                        libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>(),
                    );
                    port_unreachable |= match err.ee_origin {
                        // Destination unreachable, port unreachable.
                        libc::SO_EE_ORIGIN_ICMP => err.ee_type == 3 && err.ee_code == 3,
                        libc::SO_EE_ORIGIN_ICMP6 => err.ee_type == 1 && err.ee_code == 4,
                        _ => false,
                    };
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        match from_storage(&name, msg.msg_namelen).filter(|_| port_unreachable) {
            Some(addr) => {
                read.unreachable += 1;
                unreachable(addr);
            }
            None => read.other += 1,
        }
    }
    read.more = true;
    read
}

/// Why a received datagram was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvDrop {
    /// Larger than the receive slot.
    Truncated,
    /// A source address that is not IPv4/IPv6.
    BadAddress,
}

/// The per-datagram C structures of one `recvmmsg`/`sendmmsg` call: addresses,
/// iovecs and message headers, allocated once and pointed at each other afresh
/// before every call.
struct MsgHeaders {
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl MsgHeaders {
    fn new(batch: usize) -> Self {
        // SAFETY: an all-zero `sockaddr_storage`, `iovec` and `mmsghdr` are valid
        // values (plain integers and null pointers).
        let zeroed_storage =
            unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() };
        let zeroed_header = unsafe { MaybeUninit::<libc::mmsghdr>::zeroed().assume_init() };
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Self {
            addrs: vec![zeroed_storage; batch],
            iovecs: vec![empty; batch],
            headers: vec![zeroed_header; batch],
        }
    }

    fn len(&self) -> usize {
        self.headers.len()
    }

    /// Points header `i` at address slot `i` (of `namelen` bytes) and at `buf`.
    fn set(&mut self, i: usize, buf: *mut libc::c_void, len: usize, namelen: libc::socklen_t) {
        self.iovecs[i] = libc::iovec {
            iov_base: buf,
            iov_len: len,
        };
        let h = &mut self.headers[i];
        h.msg_hdr.msg_name = (&raw mut self.addrs[i]).cast();
        h.msg_hdr.msg_namelen = namelen;
        h.msg_hdr.msg_iov = &raw mut self.iovecs[i];
        h.msg_hdr.msg_iovlen = 1;
        h.msg_hdr.msg_control = std::ptr::null_mut();
        h.msg_hdr.msg_controllen = 0;
        h.msg_hdr.msg_flags = 0;
        h.msg_len = 0;
    }
}

/// Reusable buffers for one `recvmmsg` batch.
pub(crate) struct RecvBatch {
    slot: usize,
    data: Vec<u8>,
    msgs: MsgHeaders,
}

impl RecvBatch {
    /// `batch` datagrams of at most `slot` bytes each.
    pub(crate) fn new(batch: usize, slot: usize) -> Self {
        Self {
            slot,
            data: vec![0; batch * slot],
            msgs: MsgHeaders::new(batch),
        }
    }

    /// Capacity in datagrams.
    pub(crate) fn capacity(&self) -> usize {
        self.msgs.len()
    }

    /// Receives up to a batch without blocking. `Ok(0)` when nothing is waiting.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.msgs.len();
        let namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        for i in 0..n {
            let buf = self.data[i * self.slot..].as_mut_ptr().cast();
            self.msgs.set(i, buf, self.slot, namelen);
        }
        // SAFETY: `msgs.headers` holds `n` initialised `mmsghdr`s whose name and
        // iovec pointers were set just above to `msgs.addrs[i]`, `msgs.iovecs[i]` and
        // `slot` bytes of `data`, all owned by `self` and not moved or aliased during
        // the call.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.headers.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(rc as usize)
    }

    /// The `i`-th datagram of the last batch.
    pub(crate) fn get(&self, i: usize) -> Result<(SocketAddr, &[u8]), RecvDrop> {
        let h = &self.msgs.headers[i];
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return Err(RecvDrop::Truncated);
        }
        let from =
            from_storage(&self.msgs.addrs[i], h.msg_hdr.msg_namelen).ok_or(RecvDrop::BadAddress)?;
        let len = (h.msg_len as usize).min(self.slot);
        Ok((from, &self.data[i * self.slot..i * self.slot + len]))
    }
}

/// Reusable buffers for one `sendmmsg` batch.
pub(crate) struct SendBatch {
    msgs: MsgHeaders,
}

impl SendBatch {
    /// Room for `batch` datagrams per call.
    pub(crate) fn new(batch: usize) -> Self {
        Self {
            msgs: MsgHeaders::new(batch),
        }
    }

    /// Sends the datagrams `items` yields, up to one batch; returns how many the
    /// kernel took (0 when the socket buffer is full).
    pub(crate) fn send<'a>(
        &mut self,
        fd: RawFd,
        items: impl Iterator<Item = (&'a SocketAddr, &'a [u8])>,
    ) -> io::Result<usize> {
        let mut n = 0;
        for (addr, bytes) in items.take(self.msgs.len()) {
            let namelen = to_storage(addr, &mut self.msgs.addrs[n]);
            // The kernel only reads through a send iovec.
            let buf = bytes.as_ptr().cast_mut().cast();
            self.msgs.set(n, buf, bytes.len(), namelen);
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: the first `n` headers point at `msgs.addrs[i]`, `msgs.iovecs[i]`
        // (owned by `self`) and at datagram bytes borrowed for `'a`, which outlives
        // the call; the kernel only reads through the iovecs during `sendmmsg`.
        let rc = unsafe {
            libc::sendmmsg(
                fd,
                self.msgs.headers.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(rc as usize)
    }
}

/// An `eventfd` that wakes a sleeping shard: any thread may [`Doorbell::ring`] it.
#[derive(Debug)]
pub(crate) struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with no pointers; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Wakes the shard if it sleeps, or makes its next sleep return at once.
    pub(crate) fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live `u64`. The only failure is a counter
        // at its maximum, which still leaves the descriptor readable.
        unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&raw const one).cast::<libc::c_void>(),
                8,
            );
        }
    }

    /// Clears the doorbell after a wake-up.
    pub(crate) fn clear(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live `u64`; non-blocking, so an
        // already clear doorbell returns EAGAIN, which is fine.
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&raw mut value).cast::<libc::c_void>(),
                8,
            );
        }
    }
}

/// What ended a [`sleep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Woken {
    /// The doorbell rang.
    pub(crate) doorbell: bool,
    /// The socket became readable or writable as asked.
    pub(crate) socket: bool,
    /// The socket has queued errors ([`read_error_queue`]).
    pub(crate) error: bool,
}

/// Sleeps until the doorbell rings, the socket is readable (`read`) or writable
/// (`write`), or `timeout` passes (`None`: no limit). A signal ends it early, which
/// is harmless. This is the kernel's own `ppoll`, so no user-space timer or ring
/// has to fire for the shard to wake.
pub(crate) fn sleep(
    socket: RawFd,
    read: bool,
    write: bool,
    doorbell: &Doorbell,
    timeout: Option<Duration>,
) -> io::Result<Woken> {
    let mut events: libc::c_short = 0;
    if read {
        events |= libc::POLLIN;
    }
    if write {
        events |= libc::POLLOUT;
    }
    let mut fds = [
        libc::pollfd {
            fd: doorbell.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: socket,
            events,
            revents: 0,
        },
    ];
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    let count = if events == 0 { 1 } else { 2 };
    // SAFETY: `fds` holds `count` initialised `pollfd`s and outlives the call;
    // `ts_ptr` is null or points at a live `timespec`; no signal mask is passed.
    let rc = unsafe { libc::ppoll(fds.as_mut_ptr(), count, ts_ptr, std::ptr::null()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(Woken {
                doorbell: false,
                socket: false,
                error: false,
            });
        }
        return Err(e);
    }
    Ok(Woken {
        doorbell: fds[0].revents != 0,
        socket: count == 2 && fds[1].revents != 0,
        error: count == 2 && fds[1].revents & libc::POLLERR != 0,
    })
}

/// The CPUs this process may run on (`sched_getaffinity`): what `taskset`, cgroup
/// cpusets and `docker --cpuset-cpus` allow, in ascending order.
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: an all-zero `cpu_set_t` is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { MaybeUninit::zeroed().assume_init() };
    // SAFETY: `set` is a live, writable `cpu_set_t` of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `CPU_ISSET` reads the set for indices below its capacity.
    Ok((0..max)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the calling thread to `cpu`.
pub(crate) fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: an all-zero `cpu_set_t` is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { MaybeUninit::zeroed().assume_init() };
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `cpu` is below the set's capacity (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a live `cpu_set_t` of the size passed; 0 is this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Datagrams the kernel dropped on `socket` because its receive buffer was full
/// (`SO_MEMINFO`, `SK_MEMINFO_DROPS`); 0 where the kernel does not say.
pub(crate) fn socket_drops(socket: RawFd) -> u64 {
    const SO_MEMINFO: libc::c_int = 55;
    const SK_MEMINFO_DROPS: usize = 8;
    let mut info = [0u32; 16];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is a live buffer of `len` bytes that the kernel fills.
    let rc = unsafe {
        libc::getsockopt(
            socket,
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc == 0 && len as usize > SK_MEMINFO_DROPS * 4 {
        u64::from(info[SK_MEMINFO_DROPS])
    } else {
        0
    }
}

/// Returns free heap memory to the OS (glibc's `malloc_trim`), after the
/// multiplexer gave back a lot at once: without it the freed pages of a flood stay
/// in the allocator and in the process's RSS. Elsewhere a no-op.
pub(crate) fn return_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: takes no pointers; glibc serialises it with its own arena locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The part of the calling thread's CPU time spent in the kernel (system calls,
/// and the network stack work they do inline). The kernel splits the exact total
/// into user and system time by the scheduler tick's samples, so the split is an
/// estimate with a tick's resolution. Zero if the kernel refuses the call.
pub(crate) fn thread_kernel_time() -> std::time::Duration {
    // SAFETY: an all-zero `rusage` is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage` for the duration of the call;
    // `RUSAGE_THREAD` asks for the calling thread only.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &raw mut usage) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    let t = usage.ru_stime;
    std::time::Duration::new(t.tv_sec as u64, (t.tv_usec as u32).saturating_mul(1000))
}

/// CPU time used by the calling thread.
pub(crate) fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec` for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread that spends its time in system calls sees most of it counted as
    /// kernel time, never more than its total.
    #[test]
    fn kernel_time_is_the_system_call_part_of_the_thread_cpu_time() {
        std::thread::spawn(|| {
            let zero = std::fs::File::open("/dev/zero").unwrap();
            let mut buf = vec![0u8; 1 << 20];
            let (cpu0, kernel0) = (thread_cpu_time(), thread_kernel_time());
            // Reading /dev/zero is a kernel memset: about 100 ms of CPU, almost
            // all of it in the kernel (bounded by count as well).
            for _ in 0..20_000 {
                std::io::Read::read_exact(&mut &zero, &mut buf).unwrap();
                if thread_cpu_time() - cpu0 >= std::time::Duration::from_millis(100) {
                    break;
                }
            }
            let (cpu, kernel) = (thread_cpu_time() - cpu0, thread_kernel_time() - kernel0);
            assert!(cpu >= std::time::Duration::from_millis(100), "{cpu:?}");
            // The split is by tick samples: most, not all, and the two reads are
            // a moment apart.
            assert!(kernel >= cpu / 2, "kernel {kernel:?} of {cpu:?}");
            assert!(
                kernel <= cpu + std::time::Duration::from_millis(20),
                "kernel {kernel:?} of {cpu:?}"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn batches_round_trip_over_loopback() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 1, 1 << 20).unwrap();
        let server = &group[0];
        let to = server.local_addr().unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let from = client.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..40u8)
            .map(|i| vec![i; usize::from(i) * 10 + 1])
            .collect();
        let mut send = SendBatch::new(16);
        let mut sent = 0;
        while sent < payloads.len() {
            sent += send
                .send(
                    client.as_raw_fd(),
                    payloads[sent..].iter().map(|p| (&to, p.as_slice())),
                )
                .unwrap();
        }
        let mut recv = RecvBatch::new(8, 2048);
        let mut got = Vec::new();
        for _ in 0..1000 {
            let n = recv.recv(server.as_raw_fd()).unwrap();
            for i in 0..n {
                let (src, data) = recv.get(i).unwrap();
                assert_eq!(src, from);
                got.push(data.to_vec());
            }
            if got.len() == payloads.len() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(got, payloads);
        // Truncation is reported.
        let big = vec![1u8; 4000];
        client.send_to(&big, to).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(recv.recv(server.as_raw_fd()).unwrap(), 1);
        assert_eq!(recv.get(0), Err(RecvDrop::Truncated));
    }

    /// The shard's sleep ends for each of its three reasons, with no user-space
    /// timer involved: a datagram (even with no timeout at all), the doorbell rung
    /// from another thread, and the kernel's own timeout.
    #[test]
    #[allow(clippy::disallowed_methods)] // measures how long the sleep took
    fn sleep_wakes_for_a_datagram_the_doorbell_or_the_timeout() {
        use std::sync::Arc;
        use std::time::Instant;
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 1, 1 << 16).unwrap();
        let server = &group[0];
        let to = server.local_addr().unwrap();
        let doorbell = Arc::new(Doorbell::new().unwrap());

        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .send_to(b"x", to)
                .unwrap();
        });
        let woken = sleep(server.as_raw_fd(), true, false, &doorbell, None).unwrap();
        assert!(woken.socket && !woken.doorbell, "{woken:?}");
        sender.join().unwrap();
        // Not watching the socket: the doorbell still wakes it.
        let ringer = {
            let doorbell = doorbell.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                doorbell.ring();
            })
        };
        let woken = sleep(server.as_raw_fd(), false, false, &doorbell, None).unwrap();
        assert!(woken.doorbell && !woken.socket, "{woken:?}");
        ringer.join().unwrap();
        doorbell.clear();
        // A rung doorbell makes the next sleep return at once.
        doorbell.ring();
        let start = Instant::now();
        assert!(
            sleep(server.as_raw_fd(), false, false, &doorbell, None)
                .unwrap()
                .doorbell
        );
        assert!(start.elapsed() < Duration::from_secs(1));
        doorbell.clear();
        // Nothing to wake it: the timeout does.
        let start = Instant::now();
        let woken = sleep(
            server.as_raw_fd(),
            false,
            false,
            &doorbell,
            Some(Duration::from_millis(20)),
        )
        .unwrap();
        assert!(!woken.doorbell && !woken.socket);
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn the_allowed_cpu_set_is_known() {
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        pin_current_thread(allowed[0]).unwrap();
        assert_eq!(allowed_cpus().unwrap(), vec![allowed[0]]);
    }

    #[test]
    fn group_shares_one_port() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 3, 1 << 16).unwrap();
        let port = group[0].local_addr().unwrap().port();
        assert!(group.iter().all(|s| s.local_addr().unwrap().port() == port));
        attach_steering(&group[0], 3).unwrap();
    }
}

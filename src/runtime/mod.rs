//! The thread-per-core server (Linux, glommio/io_uring).
//!
//! [`SoeServer`] runs one shard per core. A shard is a pinned glommio executor that
//! owns one `SO_REUSEPORT` UDP socket and one [`crate::SoeMultiplexer`] holding only its own
//! sessions; nothing on the per-datagram path is shared between shards. The kernel
//! steers each remote's datagrams to the shard that owns it ([`shard_of`], mirrored
//! by a classic-BPF program), and a shard forwards what it receives for another.
//!
//! Two ways to handle events:
//! * **Shard-local handler** ([`SoeServerBuilder::handler`]): your code runs on the
//!   shard that owns the session and replies through a [`ShardContext`], with no
//!   channel hop. The fast path for game logic.
//! * **Merged stream** (the default): events of all shards in one bounded channel,
//!   read with [`SoeServer::recv_event`], replies sent through a [`SoeHandle`] —
//!   the actor style of `soe-protocol`'s `TokioSoeServer`. When the stream is full
//!   the shards stop reading their sockets until there is room: events are never
//!   dropped.
//!
//! # When to pick which server
//! * `SoeServer` for dedicated Linux game servers that need many sessions per core
//!   and the lowest CPU per message.
//! * [`crate::tokio_rt::TokioSoeServer`] (feature `tokio`) when the game already
//!   lives in a Tokio runtime, on non-Linux systems, or where io_uring is not
//!   available (containers with the default seccomp profile, `kernel.io_uring_disabled`).
//!
//! # Requirements
//! Linux ≥ 5.8 with io_uring permitted; each shard locks a little memory for its
//! ring (64 KiB of I/O memory), well inside the usual 8 MiB `RLIMIT_MEMLOCK`.
//! Start-up failures are reported as [`ServerError`]s that name the fix.
//!
//! ```no_run
//! use soe_uring::{SocketConfig, SocketEvent, SoeServer};
//!
//! let mut config = SocketConfig::default();
//! config.default_session_params.application_protocol = "MyGame".into();
//! let server = SoeServer::builder("0.0.0.0:20260".parse().unwrap(), config)
//!     .handler(|_shard| {
//!         |event, ctx: &mut soe_uring::ShardContext<'_>| {
//!             if let SocketEvent::DataReceived { remote, data, channel } = event {
//!                 let _ = ctx.enqueue_data_on(&remote, &data, channel); // echo
//!             }
//!         }
//!     })
//!     .start()
//!     .expect("server starts");
//! let handle = server.handle(); // Clone + Send + Sync
//! # drop(handle);
//! server.shutdown().unwrap();
//! ```

mod handle;
mod handler;
mod shard;
mod stats;
mod steer;
mod udp;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crossbeam_channel::Receiver;
use glommio::{GlommioError, LocalExecutorBuilder, Placement, ReactorErrorKind};

use self::handle::{Inbox, Shared};
use self::shard::{EventTarget, HandlerFactory, ShardSetup};
use crate::mux::{SocketConfig, SocketEvent};

pub use self::handle::SoeHandle;
pub use self::handler::{ShardContext, ShardHandler, ShardInfo};
pub use self::stats::{ServerStats, ShardStats};
pub use self::steer::shard_of;

/// Why the server could not start. Each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding the sockets failed.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The memlock limit is too low for the io_uring rings.
    #[error(
        "io_uring needs locked memory but RLIMIT_MEMLOCK is too low ({detail}); raise it \
         (`ulimit -l 65536`, systemd `LimitMEMLOCK=`, docker `--ulimit memlock=-1`) or use \
         fewer shards"
    )]
    MemLock {
        /// What the OS reported.
        detail: String,
    },
    /// io_uring is not available.
    #[error(
        "io_uring is not available ({detail}): Linux ≥ 5.8 is required, \
         `sysctl kernel.io_uring_disabled` must be 0, and containers need a seccomp \
         profile that allows io_uring (docker: `--security-opt seccomp=unconfined` or a \
         custom profile); otherwise use the Tokio backend (feature `tokio`, TokioSoeServer)"
    )]
    IoUringUnavailable {
        /// What the OS reported.
        detail: String,
    },
    /// A CPU in the CPU list does not exist or is not allowed for this process.
    #[error(
        "CPU {cpu} is not available (this machine has {available} usable CPUs); fix the CPU list or disable pinning"
    )]
    BadCpu {
        /// The CPU asked for.
        cpu: usize,
        /// How many CPUs are usable.
        available: usize,
    },
    /// Zero shards were requested.
    #[error("a server needs at least one shard")]
    NoShards,
    /// A shard failed to start for another reason.
    #[error("shard {shard} failed to start: {detail}")]
    Shard {
        /// Which shard.
        shard: usize,
        /// What failed.
        detail: String,
    },
    /// A shard thread panicked or failed while stopping.
    #[error("shard {shard} did not stop cleanly: {detail}")]
    Stop {
        /// Which shard.
        shard: usize,
        /// What happened.
        detail: String,
    },
}

fn classify<T>(shard: usize, error: GlommioError<T>) -> ServerError {
    let detail = error.to_string();
    match &error {
        GlommioError::ReactorError(ReactorErrorKind::MemLockLimit(..)) => {
            ServerError::MemLock { detail }
        }
        GlommioError::IoError(e) => match e.raw_os_error() {
            Some(libc::ENOMEM) => ServerError::MemLock { detail },
            Some(libc::EPERM | libc::ENOSYS | libc::EACCES) => {
                ServerError::IoUringUnavailable { detail }
            }
            _ => ServerError::Shard { shard, detail },
        },
        _ => ServerError::Shard { shard, detail },
    }
}

/// Configures and starts a [`SoeServer`]. Created by [`SoeServer::builder`].
#[must_use = "a builder does nothing until `start` is called"]
pub struct SoeServerBuilder {
    bind: SocketAddr,
    config: SocketConfig,
    shards: usize,
    pin: bool,
    cpus: Option<Vec<usize>>,
    tick: Duration,
    command_queue: usize,
    event_queue: usize,
    batch: usize,
    socket_buffer: usize,
    kernel_steering: bool,
    factory: Option<Arc<HandlerFactory>>,
}

impl fmt::Debug for SoeServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoeServerBuilder")
            .field("bind", &self.bind)
            .field("shards", &self.shards)
            .field("pin", &self.pin)
            .field("tick", &self.tick)
            .finish_non_exhaustive()
    }
}

fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

impl SoeServerBuilder {
    /// Number of shards (default: the available cores). More shards than cores
    /// works, with several shards per core.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// Pin shard `i` to a CPU (default on): the `i`-th of [`Self::cpus`], or CPU
    /// `i % cores`.
    pub fn pin_cpus(mut self, pin: bool) -> Self {
        self.pin = pin;
        self
    }

    /// The CPUs to pin shards to, in shard order (cycled if shorter).
    pub fn cpus(mut self, cpus: Vec<usize>) -> Self {
        self.cpus = Some(cpus);
        self
    }

    /// How long a shard with traffic waits between loop turns (default 500 µs): the
    /// trade between latency and wake-ups per second. Measured on a 2-core VM,
    /// 1 ms cost 6.4 µs of CPU per message at 20 000 messages/s (p50 RTT 1.2 ms),
    /// 500 µs 8.2 µs (0.6 ms), 250 µs 11.4 µs (0.3 ms). Idle shards sleep until the
    /// next datagram or deadline regardless.
    pub fn tick_period(mut self, tick: Duration) -> Self {
        self.tick = tick.max(Duration::from_micros(50));
        self
    }

    /// Capacity of each shard's command queue (default 65 536).
    pub fn command_queue(mut self, capacity: usize) -> Self {
        self.command_queue = capacity.max(1);
        self
    }

    /// Capacity of the merged event stream (default 65 536).
    pub fn event_queue(mut self, capacity: usize) -> Self {
        self.event_queue = capacity.max(1);
        self
    }

    /// Datagrams per `recvmmsg`/`sendmmsg` call (default 64).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.clamp(1, 1024);
        self
    }

    /// Kernel receive/send buffer per socket (default 4 MiB, capped by
    /// `net.core.rmem_max`/`wmem_max`).
    pub fn socket_buffer(mut self, bytes: usize) -> Self {
        self.socket_buffer = bytes;
        self
    }

    /// Attach the BPF steering program (default on). Off, the kernel spreads
    /// datagrams by its own hash and shards forward to the owner: slower, same
    /// behaviour. For testing the fallback.
    pub fn kernel_steering(mut self, on: bool) -> Self {
        self.kernel_steering = on;
        self
    }

    /// Handle events on the shards with handlers built by `factory`, one per shard,
    /// on the shard's thread. Without a handler, events go to the merged stream.
    pub fn handler<F, H>(mut self, factory: F) -> Self
    where
        F: Fn(ShardInfo) -> H + Send + Sync + 'static,
        H: ShardHandler,
    {
        self.factory = Some(Arc::new(move |info| {
            Box::new(factory(info)) as Box<dyn ShardHandler>
        }));
        self
    }

    /// Binds the sockets, starts the shards and waits until each is serving.
    pub fn start(self) -> Result<SoeServer, ServerError> {
        if self.shards == 0 {
            return Err(ServerError::NoShards);
        }
        let sockets =
            udp::bind_group(self.bind, self.shards, self.socket_buffer).map_err(|source| {
                ServerError::Bind {
                    addr: self.bind,
                    source,
                }
            })?;
        let local_addr = sockets[0]
            .local_addr()
            .map_err(|source| ServerError::Bind {
                addr: self.bind,
                source,
            })?;
        let steering = if self.kernel_steering && self.shards > 1 {
            match udp::attach_steering(&sockets[0], self.shards) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot attach the reuseport steering program; shards will forward");
                    false
                }
            }
        } else {
            false
        };

        let mut inboxes = Vec::with_capacity(self.shards);
        let mut receivers = Vec::with_capacity(self.shards);
        for _ in 0..self.shards {
            let (inbox, rx) = Inbox::new(self.command_queue);
            inboxes.push(inbox);
            receivers.push(rx);
        }
        let handle = SoeHandle {
            shared: Arc::new(Shared {
                inboxes,
                local_addr,
                stopping: AtomicBool::new(false),
            }),
        };
        let (events_tx, events_rx) = crossbeam_channel::bounded(self.event_queue);
        let events = self.factory.is_none().then_some(events_rx);
        let cores = available_cpus();
        let slot = (self.config.default_session_params.udp_length as usize).clamp(2048, 65_536);

        let mut threads = Vec::with_capacity(self.shards);
        let mut readiness = Vec::with_capacity(self.shards);
        for (index, (socket, inbox)) in sockets.into_iter().zip(receivers).enumerate() {
            let cpu = match &self.cpus {
                Some(list) if !list.is_empty() => list[index % list.len()],
                _ => index % cores,
            };
            let placement = if self.pin {
                Placement::Fixed(cpu)
            } else {
                Placement::Unbound
            };
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let setup = ShardSetup {
                index,
                socket,
                config: self.config.clone(),
                inbox,
                handle: handle.clone(),
                events: match &self.factory {
                    Some(f) => EventTarget::Factory(f.clone()),
                    None => EventTarget::Stream(events_tx.clone()),
                },
                tick: self.tick,
                batch: self.batch,
                slot,
                ready: ready_tx,
            };
            let spawned = LocalExecutorBuilder::new(placement)
                .name(&format!("soe-shard-{index}"))
                .io_memory(64 << 10)
                .ring_depth(128)
                .preempt_timer(Duration::from_millis(2))
                .spawn(move || shard::run(setup));
            let thread = match spawned {
                Ok(t) => t,
                Err(e) => {
                    let error = match e {
                        GlommioError::BuilderError(_) => ServerError::BadCpu {
                            cpu,
                            available: cores,
                        },
                        other => classify(index, other),
                    };
                    stop_all(&handle, threads);
                    return Err(error);
                }
            };
            threads.push(thread);
            readiness.push(ready_rx);
        }
        drop(events_tx);
        for (index, ready) in readiness.into_iter().enumerate() {
            if ready.recv_timeout(Duration::from_secs(10)).is_err() {
                // The shard ended early: its join result says why.
                handle.shutdown();
                let mut error = ServerError::Shard {
                    shard: index,
                    detail: "did not start within 10 s".into(),
                };
                for (i, thread) in threads.into_iter().enumerate() {
                    let joined = thread.join();
                    if i == index {
                        error = match joined {
                            Err(e) => classify(index, e),
                            Ok(Err(e)) => ServerError::Shard {
                                shard: index,
                                detail: e.to_string(),
                            },
                            Ok(Ok(())) => error,
                        };
                    }
                }
                return Err(error);
            }
        }
        tracing::info!(%local_addr, shards = self.shards, steering, "soe server started");
        Ok(SoeServer {
            handle,
            events,
            threads,
            local_addr,
            steering,
        })
    }
}

fn stop_all(handle: &SoeHandle, threads: Vec<glommio::ExecutorJoinHandle<std::io::Result<()>>>) {
    handle.shutdown();
    for t in threads {
        let _ = t.join();
    }
}

/// A running thread-per-core SOE server. See the [module docs](self).
///
/// Dropping it shuts it down (Disconnect to every peer, bounded in time).
pub struct SoeServer {
    handle: SoeHandle,
    events: Option<Receiver<SocketEvent<SocketAddr>>>,
    threads: Vec<glommio::ExecutorJoinHandle<std::io::Result<()>>>,
    local_addr: SocketAddr,
    steering: bool,
}

impl fmt::Debug for SoeServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoeServer")
            .field("local_addr", &self.local_addr)
            .field("shards", &self.threads.len())
            .field("steering", &self.steering)
            .finish_non_exhaustive()
    }
}

impl SoeServer {
    /// A builder for a server bound to `bind` (port 0 picks a free port).
    pub fn builder(bind: SocketAddr, config: SocketConfig) -> SoeServerBuilder {
        SoeServerBuilder {
            bind,
            config,
            shards: available_cpus(),
            pin: true,
            cpus: None,
            tick: Duration::from_micros(500),
            command_queue: 1 << 16,
            event_queue: 1 << 16,
            batch: 64,
            socket_buffer: 4 << 20,
            kernel_steering: true,
            factory: None,
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.handle.shards()
    }

    /// Whether the kernel steering program is attached (otherwise shards forward).
    pub fn kernel_steering(&self) -> bool {
        self.steering
    }

    /// A handle for commands from any thread.
    pub fn handle(&self) -> SoeHandle {
        self.handle.clone()
    }

    /// Counters of every shard.
    pub fn stats(&self) -> ServerStats {
        self.handle.stats()
    }

    /// The merged event stream (`None` when a shard-local handler is configured).
    pub fn events(&self) -> Option<&Receiver<SocketEvent<SocketAddr>>> {
        self.events.as_ref()
    }

    /// Blocks for the next event; `None` once every shard has stopped (or with a
    /// shard-local handler).
    pub fn recv_event(&self) -> Option<SocketEvent<SocketAddr>> {
        self.events.as_ref()?.recv().ok()
    }

    /// The next event within `timeout`.
    pub fn recv_event_timeout(&self, timeout: Duration) -> Option<SocketEvent<SocketAddr>> {
        self.events.as_ref()?.recv_timeout(timeout).ok()
    }

    /// The next event if one is waiting.
    pub fn try_recv_event(&self) -> Option<SocketEvent<SocketAddr>> {
        self.events.as_ref()?.try_recv().ok()
    }

    /// Stops every shard: each terminates its sessions (Disconnect with
    /// `ManagerDeleted` to every peer), flushes, and exits; then joins the threads.
    pub fn shutdown(mut self) -> Result<(), ServerError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), ServerError> {
        self.handle.shutdown();
        // Keep draining the stream so no shard blocks on a full event queue.
        let events = self.events.take();
        let mut result = Ok(());
        for (shard, thread) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            if let Some(rx) = &events {
                while rx.try_recv().is_ok() {}
            }
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    result = Err(ServerError::Stop {
                        shard,
                        detail: e.to_string(),
                    })
                }
                Err(e) => {
                    result = Err(ServerError::Stop {
                        shard,
                        detail: e.to_string(),
                    })
                }
            }
        }
        result
    }
}

impl Drop for SoeServer {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            let _ = self.stop();
        }
    }
}

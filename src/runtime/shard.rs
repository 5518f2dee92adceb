//! One shard: a pinned glommio executor owning a socket and a multiplexer.
//!
//! The loop, once per turn:
//! 1. drain the socket with `recvmmsg` until it would block (bounded), feeding the
//!    multiplexer in place; datagrams for another shard's sessions are forwarded;
//! 2. apply queued commands from [`SoeHandle`]s and forwarded datagrams;
//! 3. hand the turn's events to the shard-local handler or the merged stream;
//! 4. `run_tick`: due timers, then one flush of every touched session, which is
//!    where replies, acks and retransmissions are coalesced;
//! 5. one `sendmmsg` flush of everything produced.
//!
//! Then it waits: not at all when the last receive batch was full (after
//! `yield_if_needed`); for one tick when the turn saw traffic (so a busy shard
//! wakes per tick, not per datagram); otherwise until a datagram, a command or the
//! next session deadline arrives, which costs nothing while idle.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tracing::{debug, info_span, trace, warn};

use super::handle::{Command, SoeHandle};
use super::handler::{ShardContext, ShardHandler, ShardInfo};
use super::stats::ShardStats;
use super::steer::shard_of;
use super::udp::{RecvBatch, RecvDrop, SendBatch};
use crate::mux::{SocketConfig, SocketEvent, SoeMultiplexer};
use crate::protocol::DisconnectReason;
use crate::session::EnqueueError;

/// Builds a shard's handler on the shard's thread.
pub(crate) type HandlerFactory = dyn Fn(ShardInfo) -> Box<dyn ShardHandler> + Send + Sync;

/// Receive batches per turn before the loop moves on to commands and timers.
const MAX_BATCHES_PER_TURN: usize = 16;
/// Commands applied per turn (the rest wait for the next turn).
const MAX_COMMANDS_PER_TURN: usize = 4096;
/// Outgoing datagrams kept when the socket stays full; older ones are dropped
/// (and retransmitted by the reliability layer).
const MAX_PENDING_OUT: usize = 1 << 16;

/// Where a shard's events go.
pub(crate) enum EventTarget {
    Factory(Arc<HandlerFactory>),
    Stream(Sender<SocketEvent<SocketAddr>>),
}

enum Sink {
    Handler(Box<dyn ShardHandler>),
    Stream(Sender<SocketEvent<SocketAddr>>),
}

/// Everything a shard needs, moved onto its thread.
pub(crate) struct ShardSetup {
    pub(crate) index: usize,
    pub(crate) socket: std::net::UdpSocket,
    pub(crate) config: SocketConfig,
    pub(crate) inbox: Receiver<Command>,
    pub(crate) handle: SoeHandle,
    pub(crate) events: EventTarget,
    pub(crate) tick: Duration,
    pub(crate) batch: usize,
    pub(crate) slot: usize,
    pub(crate) ready: std::sync::mpsc::Sender<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Socket,
    Inbox,
    Timer,
}

struct Shard {
    index: usize,
    shards: usize,
    fd: std::os::fd::RawFd,
    mux: SoeMultiplexer<SocketAddr>,
    handle: SoeHandle,
    rx: Receiver<Command>,
    sink: Sink,
    pending_event: Option<SocketEvent<SocketAddr>>,
    recv: RecvBatch,
    send: SendBatch,
    stats: ShardStats,
    stop: bool,
}

#[allow(clippy::disallowed_methods)] // the runtime is where the clock is read
fn clock() -> Instant {
    Instant::now()
}

/// Runs one shard until shutdown.
pub(crate) async fn run(setup: ShardSetup) -> io::Result<()> {
    let span = info_span!("shard", index = setup.index);
    let _entered = span.enter();
    let socket = super::udp::into_glommio(setup.socket);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    let shards = setup.handle.shards();
    let sink = match setup.events {
        EventTarget::Factory(factory) => Sink::Handler(factory(ShardInfo {
            index: setup.index,
            shards,
            local_addr: setup.handle.local_addr(),
            handle: setup.handle.clone(),
        })),
        EventTarget::Stream(tx) => Sink::Stream(tx),
    };
    let mut shard = Shard {
        index: setup.index,
        shards,
        fd,
        mux: SoeMultiplexer::new(setup.config),
        handle: setup.handle,
        rx: setup.inbox,
        sink,
        pending_event: None,
        recv: RecvBatch::new(setup.batch, setup.slot),
        send: SendBatch::new(setup.batch),
        stats: ShardStats {
            shard: setup.index,
            ..ShardStats::default()
        },
        stop: false,
    };
    // glommio's first park can stall for tens of milliseconds: take it now.
    glommio::timer::sleep(Duration::from_millis(1)).await;
    let _ = setup.ready.send(());
    debug!("shard ready");

    while !shard.stop {
        let now = clock();
        shard.stats.turns += 1;
        let (received, busy) = shard.receive(now);
        shard.apply_commands(now);
        shard.deliver_events(now);
        shard.mux.run_tick(now);
        shard.transmit();
        if shard.stop {
            break;
        }
        if busy {
            glommio::yield_if_needed().await;
            continue;
        }
        // Traffic (or a full event stream) means more soon: wait one tick without
        // watching the socket, so a busy shard wakes per tick, not per datagram.
        let traffic = received > 0 || shard.mux.outgoing_len() > 0;
        let (timeout, watch_socket) = if traffic || shard.pending_event.is_some() {
            (Some(setup.tick), false)
        } else {
            let deadline = shard
                .mux
                .next_deadline()
                .map(|d| d.saturating_duration_since(clock()));
            (deadline, true)
        };
        let wake = wait(&socket, &shard, timeout, watch_socket).await;
        trace!(?wake, "woke");
    }
    shard.shutdown();
    debug!("shard stopped");
    Ok(())
}

/// Waits for a datagram (if `watch_socket`), a command, or `timeout`.
async fn wait(
    socket: &glommio::net::UdpSocket,
    shard: &Shard,
    timeout: Option<Duration>,
    watch_socket: bool,
) -> Wake {
    let inbox = &shard.handle.shared.inboxes[shard.index];
    let mut peek_buf = [0u8; 1];
    let mut peek = pin!(socket.peek_from(&mut peek_buf));
    let mut timer = pin!(timeout.map(glommio::timer::Timer::new));
    let wake = std::future::poll_fn(|cx| {
        if inbox.poll_ready(&shard.rx, cx).is_ready() {
            return Poll::Ready(Wake::Inbox);
        }
        if watch_socket && peek.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Wake::Socket);
        }
        if let Some(t) = timer.as_mut().as_pin_mut()
            && t.poll(cx).is_ready()
        {
            return Poll::Ready(Wake::Timer);
        }
        Poll::Pending
    })
    .await;
    inbox.unpark();
    wake
}

impl Shard {
    /// Drains the socket (bounded). Returns datagrams received and whether the last
    /// batch was full (more may be waiting).
    fn receive(&mut self, now: Instant) -> (usize, bool) {
        if self.pending_event.is_some() {
            // The event stream is full: leave datagrams in the socket (backpressure).
            return (0, false);
        }
        let mut received = 0;
        let mut full = false;
        for _ in 0..MAX_BATCHES_PER_TURN {
            let n = match self.recv.recv(self.fd) {
                Ok(n) => n,
                Err(e) => {
                    // ICMP errors surface here (e.g. port unreachable); keep going.
                    trace!(error = %e, "recv error");
                    self.stats.socket_errors += 1;
                    break;
                }
            };
            if n == 0 {
                full = false;
                break;
            }
            self.stats.recv_batches += 1;
            for i in 0..n {
                match self.recv.get(i) {
                    Ok((from, data)) => {
                        self.stats.datagrams_in += 1;
                        self.stats.bytes_in += data.len() as u64;
                        let owner = shard_of(&from, self.shards);
                        if owner == self.index {
                            self.mux.process_incoming(from, data, now);
                        } else {
                            let command = Command::Forwarded {
                                from,
                                datagram: data.to_vec(),
                            };
                            match self.handle.shared.inboxes[owner].push(command) {
                                Ok(()) => self.stats.forwarded_out += 1,
                                Err(_) => self.stats.forward_drops += 1,
                            }
                        }
                    }
                    Err(RecvDrop::Truncated) => self.stats.truncated += 1,
                    Err(RecvDrop::BadAddress) => self.stats.socket_errors += 1,
                }
            }
            received += n;
            full = n == self.recv.capacity();
            if !full {
                break;
            }
        }
        (received, full)
    }

    fn apply_commands(&mut self, now: Instant) {
        for _ in 0..MAX_COMMANDS_PER_TURN {
            let Ok(command) = self.rx.try_recv() else {
                break;
            };
            self.stats.commands += 1;
            let ok = match command {
                Command::Connect(remote) => self.mux.connect(remote, now).is_ok(),
                Command::Send {
                    remote,
                    data,
                    channel,
                } => match self.mux.enqueue_data_on(&remote, &data, channel) {
                    Ok(()) => true,
                    Err(EnqueueError::NoSession | EnqueueError::NotRunning) => false,
                    Err(_) => false,
                },
                Command::Terminate { remote, reason } => {
                    let known = self.mux.session(&remote).is_some();
                    self.mux.terminate(&remote, reason, now);
                    known
                }
                Command::Forwarded { from, datagram } => {
                    self.stats.forwarded_in += 1;
                    self.mux.process_incoming(from, &datagram, now);
                    true
                }
                Command::Stats(reply) => {
                    let _ = reply.send(self.snapshot());
                    true
                }
                Command::Shutdown => {
                    self.stop = true;
                    true
                }
            };
            if !ok {
                self.stats.command_failures += 1;
            }
        }
    }

    fn snapshot(&self) -> ShardStats {
        let mut stats = self.stats.clone();
        stats.mux = self.mux.stats();
        stats.cpu_time = super::udp::thread_cpu_time();
        stats
    }

    fn deliver_events(&mut self, now: Instant) {
        match &mut self.sink {
            Sink::Handler(handler) => {
                let mut ctx = ShardContext {
                    shard: self.index,
                    now,
                    mux: &mut self.mux,
                    handle: &self.handle,
                    stats: &self.stats,
                };
                let mut delivered = 0;
                while let Some(event) = ctx.mux.poll_event() {
                    delivered += 1;
                    handler.on_event(event, &mut ctx);
                }
                handler.on_tick(&mut ctx);
                self.stats.events += delivered;
            }
            Sink::Stream(tx) => {
                let mut next = self.pending_event.take().or_else(|| self.mux.poll_event());
                while let Some(event) = next {
                    match tx.try_send(event) {
                        Ok(()) => self.stats.events += 1,
                        Err(TrySendError::Full(event)) => {
                            self.pending_event = Some(event);
                            return;
                        }
                        // Nobody listens any more: events have nowhere to go.
                        Err(TrySendError::Disconnected(_)) => {}
                    }
                    next = self.mux.poll_event();
                }
            }
        }
    }

    /// Sends what the multiplexer produced, in `sendmmsg` batches.
    fn transmit(&mut self) {
        while self.mux.outgoing_len() > 0 {
            match self.send.send(self.fd, self.mux.outgoing_iter()) {
                Ok(0) => break,
                Ok(n) => {
                    self.stats.send_batches += 1;
                    self.stats.datagrams_out += n as u64;
                    self.stats.bytes_out += self
                        .mux
                        .outgoing_iter()
                        .take(n)
                        .map(|(_, d)| d.len() as u64)
                        .sum::<u64>();
                    self.mux.consume_outgoing(n);
                }
                Err(e) => {
                    // A datagram the kernel refuses (e.g. an unroutable address):
                    // drop it so the queue cannot jam.
                    trace!(error = %e, "send error");
                    self.stats.socket_errors += 1;
                    self.stats.send_drops += 1;
                    self.mux.consume_outgoing(1);
                }
            }
        }
        let excess = self.mux.outgoing_len().saturating_sub(MAX_PENDING_OUT);
        if excess > 0 {
            warn!(excess, "socket send buffer full: dropping oldest datagrams");
            self.stats.send_drops += excess as u64;
            self.mux.consume_outgoing(excess);
        }
    }

    fn shutdown(&mut self) {
        let now = clock();
        let out = self
            .mux
            .terminate_all(DisconnectReason::ManagerDeleted, now);
        self.deliver_events(now);
        let mut sent = 0;
        for _ in 0..100 {
            if sent >= out.len() {
                break;
            }
            match self
                .send
                .send(self.fd, out[sent..].iter().map(|(a, d)| (a, d.as_ref())))
            {
                Ok(0) => std::thread::sleep(Duration::from_micros(200)),
                Ok(n) => sent += n,
                Err(_) => sent += 1,
            }
        }
        self.stats.datagrams_out += sent as u64;
    }
}

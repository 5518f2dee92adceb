//! Command-line interface. The flag names are a contract (architecture.md, "loadgen
//! contract"): other tools call them.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use soe_uring::Channel;

/// Load generator for SOE reliable-UDP servers.
///
/// With no subcommand it runs `bench` with the default scenario: the thread-per-core
/// soe-uring echo server, this crate's Tokio adapter and the reference soe-protocol
/// 2.3.0 server, one after another, under the same client load (64 sessions × 32
/// messages in flight × 64-byte messages on reliable channel 0, 5 s each), and prints
/// one table with messages per server CPU-second side by side.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Without a subcommand: the `bench` flags.
    #[command(flatten)]
    pub bench: BenchArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Embedded echo server(s) and clients in one process; one result row per server.
    Bench(BenchArgs),
    /// Clients only, against any SOE echo server (`loadgen serve` or another).
    Run(RunArgs),
    /// An echo server: every message is sent back to its sender on the same channel.
    /// Runs until SIGINT or SIGTERM, then shuts down gracefully.
    Serve(ServeArgs),
    /// A long run against a `loadgen serve` child process: samples its RSS, CPU,
    /// sessions and per-shard health through the run, prints a time series (and
    /// JSON with --json), stops it with SIGTERM, and ends with a pass/fail summary
    /// (no shard lost, no session closed, no message lost, RSS plateau, prompt stop).
    Soak(SoakArgs),
    /// SessionRequests, each from a new source address, at a steady rate: a flood
    /// of forged or abandoned clients, to see what a server keeps after one.
    Flood(FloodArgs),
    /// A chaos relay between clients and a server: seeded loss, duplication,
    /// reordering, delay, jitter, a rate-limited link, blackouts and NAT rebinding.
    /// Runs until SIGINT or SIGTERM.
    Relay(RelayArgs),
}

/// The embedded server implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServerKind {
    /// soe_uring::SoeServer: thread-per-core shards, shard-local echo handler.
    #[value(name = "soe-uring")]
    SoeUring,
    /// soe_uring::tokio_rt::TokioSoeServer on its own current-thread runtime.
    Tokio,
    /// soe_protocol 2.3.0's TokioSoeServer (the reference) on its own current-thread runtime.
    Peer,
}

impl ServerKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::SoeUring => "soe-uring",
            Self::Tokio => "tokio",
            Self::Peer => "peer",
        }
    }
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the clients and the server do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Scenario {
    /// Every message is echoed back (`--size`, `--window` or `--rate`, `--channel`).
    #[default]
    Echo,
    /// A game: clients send small inputs at `--input-rate`; the server's tick loop
    /// sends every session a state update at `--tick-rate`, plus occasional large
    /// reliable zone-ins.
    Game,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Server kinds to run, one after another, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "soe-uring,tokio,peer")]
    pub server: Vec<ServerKind>,
    /// echo, or game (see the game flags below and loadgen/README.md, "Game scenario").
    #[arg(long, value_enum, default_value_t = Scenario::Echo)]
    pub scenario: Scenario,
    #[command(flatten)]
    pub server_opts: ServerOpts,
    #[command(flatten)]
    pub proto: ProtoOpts,
    #[command(flatten)]
    pub workload: Workload,
    #[command(flatten)]
    pub game_client: GameClientOpts,
    #[command(flatten)]
    pub game_server: GameServerOpts,
    #[command(flatten)]
    pub capture: CaptureOpts,
    /// Runs every server this many times, alternating the order (as asked, then
    /// reversed, ...), and reports each round and the median of every ratio. On a
    /// shared machine one pair of runs can be off by a quarter either way.
    #[arg(
        long,
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=99),
        conflicts_with = "capture"
    )]
    pub rounds: u32,
}

/// Where the clients' datagrams are written.
#[derive(Debug, Clone, Args)]
pub struct CaptureOpts {
    /// Write every datagram the clients send and receive to FILE (pcap, raw IP,
    /// readable by tcpdump, Wireshark and soe-dump). `bench` writes one file per
    /// server, named FILE with `-<server>` before its extension.
    #[arg(long, value_name = "FILE")]
    pub capture: Option<PathBuf>,
    /// Stop writing the capture after this many datagrams (the rest are counted).
    #[arg(
        long,
        value_name = "PACKETS",
        default_value_t = crate::capture::DEFAULT_LIMIT,
        requires = "capture"
    )]
    pub capture_limit: u64,
}

impl CaptureOpts {
    /// The capture file for `server` in a `bench` of several servers.
    pub fn path_for(&self, server: &str) -> Option<PathBuf> {
        let path = self.capture.as_ref()?;
        let stem = path
            .file_stem()
            .map_or_else(Default::default, |s| s.to_string_lossy());
        let name = match path.extension() {
            Some(ext) => format!("{stem}-{server}.{}", ext.to_string_lossy()),
            None => format!("{stem}-{server}"),
        };
        Some(path.with_file_name(name))
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The server to load (HOST:PORT).
    #[arg(long, value_parser = parse_target)]
    pub target: SocketAddr,
    #[command(flatten)]
    pub capture: CaptureOpts,
    /// echo, or game (against `loadgen serve --scenario game`).
    #[arg(long, value_enum, default_value_t = Scenario::Echo)]
    pub scenario: Scenario,
    #[command(flatten)]
    pub proto: ProtoOpts,
    #[command(flatten)]
    pub workload: Workload,
    #[command(flatten)]
    pub game_client: GameClientOpts,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to bind (port 0 picks a free port; the bound address is printed).
    #[arg(long, value_parser = parse_target)]
    pub bind: SocketAddr,
    /// Which implementation serves.
    #[arg(long, default_value = "soe-uring")]
    pub server: ServerKind,
    /// echo (every message back to its sender), or game (a tick loop sends state
    /// updates and zone-ins; for `loadgen run --scenario game`).
    #[arg(long, value_enum, default_value_t = Scenario::Echo)]
    pub scenario: Scenario,
    #[command(flatten)]
    pub server_opts: ServerOpts,
    #[command(flatten)]
    pub game_server: GameServerOpts,
    #[command(flatten)]
    pub proto: ProtoOpts,
    /// Print the server's counters to stderr every SECS seconds (0: never).
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub stats_every: f64,
    /// Print those counters as one JSON object per line (soe-uring only: with the
    /// shards that answered and each shard's health).
    #[arg(long)]
    pub stats_json: bool,
    /// Serve Prometheus metrics (text exposition) at http://ADDR/metrics: every
    /// shard's counters, gauges and histograms (soe-uring and tokio servers).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// On SIGINT/SIGTERM, drain first (soe-uring): refuse new sessions, serve the
    /// live ones until they end or SECS pass, then shut down. A second signal
    /// shuts down at once. 0: shut down at once.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub drain_timeout: f64,
}

#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Address clients send to.
    #[arg(long, value_parser = parse_target)]
    pub listen: SocketAddr,
    /// The server.
    #[arg(long, value_parser = parse_target)]
    pub target: SocketAddr,
    /// Impairments, e.g. `loss=0.1,dup=0.05,reorder=0.05,delay=20ms,jitter=5ms,
    /// rate=2000000,queue=64,blackhole=10s+2s,rebind=5s,rebind-packets=1000,
    /// rebind-address,seed=7`.
    #[arg(long, default_value = "", value_name = "SPEC")]
    pub chaos: String,
    /// Print the relay's counters every SECS seconds (0: never).
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub stats_every: f64,
}

#[derive(Debug, Clone, Args)]
pub struct FloodArgs {
    /// The server to flood (HOST:PORT).
    #[arg(long, value_parser = parse_target)]
    pub target: SocketAddr,
    /// SessionRequests per second.
    #[arg(long, default_value_t = 10_000.0, value_name = "PER_SEC")]
    pub rate: f64,
    /// Seconds to flood.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub duration: f64,
    /// Varies the session ids and source addresses between runs.
    #[arg(long, default_value_t = 1)]
    pub seed: u32,
    #[command(flatten)]
    pub proto: ProtoOpts,
}

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub server_opts: ServerOpts,
    #[command(flatten)]
    pub proto: ProtoOpts,
    #[command(flatten)]
    pub workload: Workload,
    /// Seconds between samples of the server.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub sample_every: f64,
}

/// Server-side settings.
#[derive(Debug, Clone, Args)]
pub struct ServerOpts {
    /// Shards of the soe-uring server (default: 1 for `bench`, so it is compared
    /// core for core with the single-threaded Tokio servers; the core count for `serve`).
    #[arg(long)]
    pub shards: Option<usize>,
    /// CRC bytes per datagram the server asks for (0–4).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=4))]
    pub crc_length: Option<u8>,
    /// Most sessions the server admits.
    #[arg(long)]
    pub max_sessions: Option<usize>,
    /// Server tick period in microseconds (default: each server's own: soe-uring's
    /// builder default, 1000 for tokio and peer).
    #[arg(long, value_name = "US")]
    pub tick_us: Option<u64>,
    /// Tick-aligned flushing of the soe-uring servers: sessions send once per
    /// this many microseconds (`SoeServerBuilder::flush_interval`, the Tokio
    /// adapter's `DriverConfig::flush_interval`). Default: every turn.
    #[arg(long, value_name = "US")]
    pub flush_us: Option<u64>,
    /// Do not pin soe-uring shards to CPUs.
    #[arg(long)]
    pub no_pin: bool,
}

/// Protocol settings both sides must agree on.
#[derive(Debug, Clone, Args)]
pub struct ProtoOpts {
    /// Application protocol name (both sides must match). Profiles whose handshake
    /// carries no name (udp-library, eq) ignore it on soe-uring sides.
    #[arg(long, default_value = "loadgen", value_name = "NAME")]
    pub app_protocol: String,
    /// Compression: the server offers it and clients adopt the server's choice.
    /// (The eq profile always compresses, with EQ's own pass; udp-library has
    /// none without an application pass.)
    #[arg(long)]
    pub compression: bool,
    /// RC4 key for reliable data, in hex (both sides).
    #[arg(long, value_parser = parse_hex, value_name = "HEX")]
    pub rc4_key: Option<HexKey>,
    /// Session parameters for a family of peers (soe-uring sides only): default,
    /// soe-uring, soe-protocol, h1emu, udp-library, eq. Both sides need the same.
    #[arg(long, default_value = "default", value_parser = parse_profile, value_name = "NAME")]
    pub profile: String,
    /// Turn congestion control and pacing off (soe-uring sides), to compare.
    #[arg(long)]
    pub no_congestion_control: bool,
    /// Encryption passes a soe-uring server runs and names in its SessionResponse,
    /// pass 0 first, comma-separated: none, xor, xor-buffer (UdpLibrary's methods 4
    /// and 3, keyed by the CRC seed). Clients run what the server names. Pass 0 can
    /// be named only under the udp-library and eq profiles; eq has no xor-buffer.
    #[arg(long, default_value = "none", value_parser = parse_passes, value_name = "P0[,P1]")]
    pub passes: [soe_uring::EncryptMethod; 2],
    /// `SessionParameters::lone_ack_delay` in milliseconds (soe-uring sides;
    /// default the library's, 40).
    #[arg(long, value_name = "MS")]
    pub lone_ack_delay_ms: Option<f64>,
    /// `SessionParameters::peer_max_ack_delay` in milliseconds (soe-uring sides;
    /// default the library's, 50).
    #[arg(long, value_name = "MS")]
    pub peer_max_ack_delay_ms: Option<f64>,
}

impl ProtoOpts {
    /// Checks what clap cannot: that the profile's SessionResponse can name the
    /// passes asked for.
    pub fn validate(&self) -> Result<(), String> {
        let codes = soe_uring::SessionParameters::profile(&self.profile)
            .unwrap_or_default()
            .pass_codes;
        let [pass_0, pass_1] = self.passes;
        if codes == soe_uring::PassCodes::V3 && pass_0 != soe_uring::EncryptMethod::None {
            return Err(format!(
                "--passes: profile {:?} has no way to name pass 0 (its response carries \
                 the compression flag there); use the udp-library or eq profile, or \
                 'none,{}' for pass 1 only",
                self.profile,
                pass_name(pass_0)
            ));
        }
        for pass in [pass_0, pass_1] {
            if codes.code(pass).is_none() {
                return Err(format!(
                    "--passes: profile {:?} has no code for {}",
                    self.profile,
                    pass_name(pass)
                ));
            }
        }
        Ok(())
    }

    /// Applies the pass and ack options to soe-uring session parameters.
    pub fn apply(&self, p: &mut soe_uring::SessionParameters) {
        if self.passes != [soe_uring::EncryptMethod::None; 2] {
            p.encryption_passes = self.passes;
        }
        let ms = |v: f64| std::time::Duration::from_secs_f64(v.max(0.0) / 1e3);
        if let Some(v) = self.lone_ack_delay_ms {
            p.lone_ack_delay = ms(v);
        }
        if let Some(v) = self.peer_max_ack_delay_ms {
            p.peer_max_ack_delay = ms(v);
        }
    }
}

fn parse_passes(list: &str) -> Result<[soe_uring::EncryptMethod; 2], String> {
    use soe_uring::EncryptMethod;
    let one = |name: &str| match name.trim() {
        "none" => Ok(EncryptMethod::None),
        "xor" => Ok(EncryptMethod::Xor),
        "xor-buffer" => Ok(EncryptMethod::XorBuffer),
        other => Err(format!(
            "unknown pass {other:?}; known: none, xor, xor-buffer"
        )),
    };
    let names: Vec<&str> = list.split(',').collect();
    match names[..] {
        [a] => Ok([one(a)?, EncryptMethod::None]),
        [a, b] => Ok([one(a)?, one(b)?]),
        _ => Err("at most two passes (pass 0, pass 1)".into()),
    }
}

fn pass_name(method: soe_uring::EncryptMethod) -> &'static str {
    use soe_uring::EncryptMethod;
    match method {
        EncryptMethod::Xor => "xor",
        EncryptMethod::XorBuffer => "xor-buffer",
        EncryptMethod::None => "none",
        _ => "an application pass",
    }
}

fn parse_profile(name: &str) -> Result<String, String> {
    soe_uring::SessionParameters::profile(name)
        .map(|_| name.to_string())
        .ok_or_else(|| {
            format!(
                "unknown profile {name:?}; known: {}",
                soe_uring::SessionParameters::PROFILES.join(", ")
            )
        })
}

/// The client workload.
#[derive(Debug, Clone, Args)]
pub struct Workload {
    /// Sessions, each on its own UDP socket.
    #[arg(long, default_value_t = 64)]
    pub sessions: usize,
    /// Length of the measured window in seconds (per server for `bench`).
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub duration: f64,
    /// Message size in bytes, or a range MIN-MAX for uniformly mixed sizes (≥ 16:
    /// every message carries a 16-byte header).
    #[arg(long, default_value = "64", value_parser = parse_size, value_name = "BYTES|MIN-MAX")]
    pub size: SizeRange,
    /// Closed loop: messages in flight per session (default 32 unless --rate).
    #[arg(long, conflicts_with = "rate")]
    pub window: Option<usize>,
    /// Open loop: messages per second per session.
    #[arg(long, value_name = "PER_SEC")]
    pub rate: Option<f64>,
    /// reliable (= reliable:0), reliable:K (K in 0..=3) or unreliable.
    #[arg(long, default_value = "reliable", value_parser = parse_channel)]
    pub channel: ChannelArg,
    /// Client threads (default: the number of cores).
    #[arg(long)]
    pub client_threads: Option<usize>,
    /// Also open and close this many extra sessions per second (session churn);
    /// reported as session_setup_per_sec.
    #[arg(long, default_value_t = 0.0, value_name = "PER_SEC")]
    pub churn: f64,
    /// Write the result as JSON to FILE (`-`: to stdout, and the table to stderr).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Seconds of load before the measured window.
    #[arg(long, default_value_t = 0.25, value_name = "SECS")]
    pub warmup: f64,
    /// Most seconds to wait after the window for the echoes still in flight (the
    /// wait ends as soon as every echo is back).
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub drain: f64,
    /// Give up when the sessions are not all open after this many seconds.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub connect_timeout: f64,
    /// Unreliable channel: an echo not back after this many seconds counts as lost.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub loss_timeout: f64,
    /// Upper bound of the client sessions' retransmission timeout, in milliseconds.
    /// The library default (8000) lets a datagram an overloaded server dropped stall
    /// its session for seconds after repeated backoff; 1000 keeps the drain short.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub client_max_rto_ms: u64,
    /// No live progress line.
    #[arg(long, short)]
    pub quiet: bool,
    /// Put a chaos relay between the clients and the server, with these
    /// impairments (see `loadgen relay --help`), e.g. `loss=0.1,delay=20ms`.
    #[arg(long, value_name = "SPEC")]
    pub relay: Option<String>,
}

/// The clients' side of `--scenario game`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Game scenario (clients)")]
pub struct GameClientOpts {
    /// Inputs per second per session.
    #[arg(long, default_value_t = 30.0, value_parser = parse_rate, value_name = "HZ")]
    pub input_rate: f64,
    /// Input size in bytes (16-byte header included).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(16..=400), value_name = "BYTES")]
    pub input_size: u16,
    /// Channel of the inputs: unreliable (latest wins, the usual choice for a
    /// stream of inputs) or `reliable[:K]`.
    #[arg(long, default_value = "unreliable", value_parser = parse_channel)]
    pub input_channel: ChannelArg,
}

/// The server's side of `--scenario game`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Game scenario (server)")]
pub struct GameServerOpts {
    /// Server ticks per second: each tick sends one state update to every session.
    #[arg(long, default_value_t = 20.0, value_parser = parse_tick_rate, value_name = "HZ")]
    pub tick_rate: f64,
    /// State update size in bytes (28-byte header included; at most 400 so that an
    /// unreliable one fits a datagram).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(28..=400), value_name = "BYTES")]
    pub state_size: u16,
    /// Channel of the state updates: unreliable (the next one supersedes a lost one)
    /// or `reliable[:K]`.
    #[arg(long, default_value = "unreliable", value_parser = parse_channel)]
    pub state_channel: ChannelArg,
    /// Mean seconds between zone-ins of a session (each interval uniform in 0.5–1.5×
    /// this, the first one uniform in 0–1× after the session opens, from --seed);
    /// 0: none.
    #[arg(long, default_value_t = 30.0, value_parser = parse_every, value_name = "SECS")]
    pub zone_in_every: f64,
    /// Zone-in size in bytes, or MIN-MAX for sizes uniform in that range.
    #[arg(long, default_value = "20000-100000", value_parser = parse_zone_size, value_name = "BYTES|MIN-MAX")]
    pub zone_in_size: SizeRange,
    /// Channel of the zone-ins (reliable:K only: they must all arrive).
    #[arg(long, default_value = "reliable:0", value_parser = parse_reliable_channel, value_name = "reliable[:K]")]
    pub zone_in_channel: ChannelArg,
    /// Seed of the zone-in schedule and sizes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 10_000.0 => Ok(v),
        _ => Err("expected a rate in (0, 10000] per second".into()),
    }
}

fn parse_tick_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1_000.0 => Ok(v),
        _ => Err("expected a tick rate in (0, 1000] per second".into()),
    }
}

fn parse_every(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (v == 0.0 || (0.01..=86_400.0).contains(&v)) => Ok(v),
        _ => Err("expected 0 (never) or a number of seconds in 0.01..=86400".into()),
    }
}

/// Largest zone-in: well under the sessions' 1 MiB of pending bytes.
pub const MAX_ZONE_IN: usize = 512 * 1024;

fn parse_zone_size(s: &str) -> Result<SizeRange, String> {
    let r = parse_size(s)?;
    if r.max > MAX_ZONE_IN {
        return Err(format!("zone-ins may be at most {MAX_ZONE_IN} bytes"));
    }
    Ok(r)
}

fn parse_reliable_channel(s: &str) -> Result<ChannelArg, String> {
    match parse_channel(s)? {
        c if c.is_reliable() => Ok(c),
        _ => Err("zone-ins must go on a reliable channel: reliable or reliable:K".into()),
    }
}

/// Message sizes: fixed (`min == max`) or uniform in `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeRange {
    pub min: usize,
    pub max: usize,
}

impl fmt::Display for SizeRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

/// Smallest message: the header (magic, session, sequence, timestamp).
pub const MIN_SIZE: usize = 16;
/// Largest message accepted on the command line.
pub const MAX_SIZE: usize = 1 << 20;

fn parse_size(s: &str) -> Result<SizeRange, String> {
    let num = |t: &str| {
        t.trim()
            .parse::<usize>()
            .map_err(|_| format!("'{t}' is not a byte count"))
    };
    let (min, max) = match s.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let n = num(s)?;
            (n, n)
        }
    };
    if min > max {
        return Err(format!("MIN {min} is larger than MAX {max}"));
    }
    if min < MIN_SIZE {
        return Err(format!(
            "messages must be at least {MIN_SIZE} bytes (each carries a {MIN_SIZE}-byte header)"
        ));
    }
    if max > MAX_SIZE {
        return Err(format!("messages may be at most {MAX_SIZE} bytes"));
    }
    Ok(SizeRange { min, max })
}

/// A `--channel` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelArg(pub Channel);

impl ChannelArg {
    pub fn is_reliable(&self) -> bool {
        matches!(self.0, Channel::Reliable(_))
    }
}

impl fmt::Display for ChannelArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Channel::Reliable(k) => write!(f, "reliable:{k}"),
            Channel::Unreliable => f.write_str("unreliable"),
            Channel::Ordered => f.write_str("ordered"),
        }
    }
}

fn parse_channel(s: &str) -> Result<ChannelArg, String> {
    const EXPECTED: &str = "expected reliable, unreliable or reliable:K with K in 0..=3";
    match s {
        "reliable" => Ok(ChannelArg(Channel::Reliable(0))),
        "unreliable" => Ok(ChannelArg(Channel::Unreliable)),
        _ => match s.strip_prefix("reliable:").map(str::parse::<usize>) {
            Some(Ok(k)) if k <= 3 => Ok(ChannelArg(Channel::Reliable(k))),
            _ => Err(EXPECTED.into()),
        },
    }
}

/// An RC4 key given in hex.
#[derive(Clone, PartialEq, Eq)]
pub struct HexKey(pub Vec<u8>);

impl fmt::Debug for HexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HexKey({} bytes)", self.0.len())
    }
}

fn parse_hex(s: &str) -> Result<HexKey, String> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if s.is_empty() || !s.len().is_multiple_of(2) || s.len() > 512 {
        return Err("expected an even number of hex digits (1 to 256 bytes)".into());
    }
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| "expected hex digits 0-9, a-f".to_string())?;
    Ok(HexKey(bytes))
}

fn parse_target(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{s}': {e}"))?
        .next()
        .ok_or_else(|| format!("'{s}' resolves to no address"))
}

/// Closed or open loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Keep this many messages in flight per session.
    Closed { window: usize },
    /// Send this many messages per second per session.
    Open { rate: f64 },
}

impl Workload {
    pub fn mode(&self) -> Mode {
        match (self.window, self.rate) {
            (_, Some(rate)) => Mode::Open { rate },
            (window, None) => Mode::Closed {
                window: window.unwrap_or(32),
            },
        }
    }

    pub fn client_threads(&self) -> usize {
        self.client_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
            .max(1)
    }

    /// `--scenario game` sets its own load: the echo-only flags are refused.
    pub fn validate_game(&self) -> Result<(), String> {
        self.validate()?;
        if self.window.is_some() || self.rate.is_some() {
            return Err(
                "--window and --rate do not apply to --scenario game (use --input-rate)".into(),
            );
        }
        if self.churn > 0.0 {
            return Err("--churn does not apply to --scenario game".into());
        }
        if self.sessions == 0 {
            return Err("--sessions must be at least 1".into());
        }
        Ok(())
    }

    /// Checks what clap cannot; the message is shown as is.
    pub fn validate(&self) -> Result<(), String> {
        let secs = |name: &str, v: f64, min: f64| {
            if v.is_finite() && v >= min && v <= 86_400.0 {
                Ok(())
            } else {
                Err(format!("--{name} must be a number of seconds ≥ {min}"))
            }
        };
        secs("duration", self.duration, 0.1)?;
        secs("warmup", self.warmup, 0.0)?;
        secs("drain", self.drain, 0.0)?;
        secs("connect-timeout", self.connect_timeout, 0.1)?;
        secs("loss-timeout", self.loss_timeout, 0.01)?;
        if self.sessions == 0 && self.churn <= 0.0 {
            return Err("--sessions must be at least 1 (or give --churn)".into());
        }
        if self.sessions > 1_000_000 {
            return Err("--sessions may be at most 1000000".into());
        }
        match self.mode() {
            Mode::Closed { window } if window == 0 || window > 100_000 => {
                return Err("--window must be in 1..=100000".into());
            }
            Mode::Open { rate } if !(rate.is_finite() && rate > 0.0 && rate <= 1e7) => {
                return Err("--rate must be a positive number of messages per second".into());
            }
            _ => {}
        }
        if !(self.churn.is_finite() && (0.0..=1e6).contains(&self.churn)) {
            return Err("--churn must be in 0..=1000000 sessions per second".into());
        }
        if let Some(0) = self.client_threads {
            return Err("--client-threads must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels() {
        assert_eq!(parse_channel("reliable").unwrap().0, Channel::Reliable(0));
        assert_eq!(parse_channel("reliable:3").unwrap().0, Channel::Reliable(3));
        assert_eq!(parse_channel("unreliable").unwrap().0, Channel::Unreliable);
        assert!(parse_channel("reliable:4").is_err());
        assert!(parse_channel("fast").is_err());
    }

    #[test]
    fn sizes_and_keys() {
        assert_eq!(parse_size("64").unwrap(), SizeRange { min: 64, max: 64 });
        assert_eq!(
            parse_size("16-900").unwrap(),
            SizeRange { min: 16, max: 900 }
        );
        assert!(parse_size("8").is_err());
        assert!(parse_size("90-20").is_err());
        assert_eq!(parse_hex("0aFF").unwrap().0, vec![10, 255]);
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
    }

    #[test]
    fn game_flags() {
        let cli = Cli::try_parse_from(["loadgen", "bench", "--scenario", "game"]).unwrap();
        let Some(Command::Bench(b)) = cli.command else {
            panic!("bench expected")
        };
        assert_eq!(b.scenario, Scenario::Game);
        assert_eq!(b.game_client.input_channel.0, Channel::Unreliable);
        assert_eq!(b.game_server.zone_in_channel.0, Channel::Reliable(0));
        assert!(b.workload.validate_game().is_ok());
        for bad in [
            &["--zone-in-channel", "unreliable"][..],
            &["--input-size", "8"],
            &["--state-size", "1000"],
            &["--tick-rate", "0"],
            &["--zone-in-size", "2000000"],
            &["--zone-in-every", "-1"],
        ] {
            let mut args = vec!["loadgen", "bench", "--scenario", "game"];
            args.extend_from_slice(bad);
            assert!(Cli::try_parse_from(&args).is_err(), "{bad:?}");
        }
        let cli =
            Cli::try_parse_from(["loadgen", "bench", "--scenario", "game", "--rate", "5"]).unwrap();
        let Some(Command::Bench(b)) = cli.command else {
            panic!("bench expected")
        };
        assert!(b.workload.validate_game().is_err());
    }

    #[test]
    fn cli_shape() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

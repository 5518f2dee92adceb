//! The command line and the run that ties reading, flow tracking, decoding and
//! output together.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use soe_uring::{MultiLength, Rc4KeyState, SessionParameters, ZeroEscape};

use crate::capture::read_frames;
use crate::event::{Event, LengthForm};
use crate::flow::FlowTracker;
use crate::net::{Skip, parse_frame};
use crate::output::{Printer, Style};
use crate::session::{DecodeOptions, LengthPolicy};

/// Decodes SOE (Sony Online Entertainment / Daybreak UdpLibrary) reliable-UDP
/// sessions from a pcap or pcapng capture: a per-session timeline of packets,
/// acks and application messages, or JSON lines.
///
/// Every UDP flow that carries a SessionRequest or SessionResponse is decoded from
/// its handshake on; flows that start mid-session are decoded with the dialect
/// defaults (`--profile`, `--crc-seed`, `--crc-length`, `--compression`) when their
/// first datagram looks like SOE or `--port` selects them.
#[derive(Debug, Parser)]
#[command(name = "soe-dump", version)]
pub struct Args {
    /// The capture file (pcap or pcapng); `-` reads standard input.
    pub file: PathBuf,
    /// One JSON object per line per event instead of the text timeline.
    #[arg(long)]
    pub json: bool,
    /// Only per-session totals (and the file's).
    #[arg(long)]
    pub summary: bool,
    /// Only follow flows with this UDP port at one end (that end is the server of
    /// a flow seen without its handshake).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Dialect defaults: default, soe-uring, soe-protocol, h1emu, udp-library, eq
    /// (the names of `SessionParameters::profile`). Sets the CRC length and
    /// compression used without a handshake, the multi-packet length form, the
    /// zero-escape rule of reliable data, and how a SessionResponse names
    /// encryption passes (udp-library, eq: Xor, XorBuffer and EQ's compression
    /// pass are undone).
    #[arg(long, value_name = "NAME", value_parser = parse_profile)]
    pub profile: Option<String>,
    /// CRC seed for sessions whose SessionResponse is not in the capture (decimal or
    /// 0x-prefixed hex).
    #[arg(long, value_name = "SEED", value_parser = parse_u32)]
    pub crc_seed: Option<u32>,
    /// CRC length (0-4) for sessions whose SessionResponse is not in the capture.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=4))]
    pub crc_length: Option<u8>,
    /// Contextual packets carry a compression flag, for sessions whose
    /// SessionResponse is not in the capture.
    #[arg(long)]
    pub compression: bool,
    /// How multi-packet sub-packet lengths are read (default: the profile's form
    /// with --profile, else auto: varint, falling back to one byte per length).
    #[arg(long, value_enum, value_name = "FORM")]
    pub multi_length: Option<LengthArg>,
    /// RC4 key (hex) to decrypt reliable application data with.
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    pub rc4_key: Option<HexKey>,
    /// Bytes of each application message shown in hex.
    #[arg(long, value_name = "BYTES", default_value_t = 16)]
    pub preview: usize,
}

/// A `--multi-length` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LengthArg {
    /// Varint first, one byte per length when that does not split cleanly.
    Auto,
    /// One byte per length (UdpLibrary, EQEmu, h1emu).
    OneByte,
    /// The v3 varint (soe-protocol, PlanetSide 2).
    Varint,
}

/// An RC4 key given in hex.
#[derive(Clone, PartialEq, Eq)]
pub struct HexKey(pub Vec<u8>);

impl std::fmt::Debug for HexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "HexKey({} bytes)", self.0.len())
    }
}

fn parse_hex(s: &str) -> Result<HexKey, String> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if s.is_empty() || !s.len().is_multiple_of(2) || s.len() > 512 {
        return Err("expected an even number of hex digits (1 to 256 bytes)".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map(HexKey)
        .map_err(|_| "expected hex digits 0-9, a-f".to_string())
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("'{s}' is not a 32-bit number"))
}

fn parse_profile(name: &str) -> Result<String, String> {
    SessionParameters::profile(name)
        .map(|_| name.to_string())
        .ok_or_else(|| {
            format!(
                "unknown profile {name:?}; known: {}",
                SessionParameters::PROFILES.join(", ")
            )
        })
}

impl Args {
    /// The decoder settings these arguments ask for.
    pub fn decode_options(&self) -> DecodeOptions {
        let params = self
            .profile
            .as_deref()
            .and_then(SessionParameters::profile)
            .unwrap_or_default();
        let profile_form = match params.multi_length {
            MultiLength::OneByte => LengthForm::OneByte,
            MultiLength::Varint => LengthForm::Varint,
        };
        let multi_length = match (self.multi_length, &self.profile) {
            (Some(LengthArg::Auto), _) | (None, None) => LengthPolicy::Auto,
            (Some(LengthArg::OneByte), _) => LengthPolicy::Fixed(LengthForm::OneByte),
            (Some(LengthArg::Varint), _) => LengthPolicy::Fixed(LengthForm::Varint),
            (None, Some(_)) => LengthPolicy::Fixed(profile_form),
        };
        DecodeOptions {
            crc_seed: self.crc_seed.unwrap_or(params.crc_seed),
            crc_length: self.crc_length.unwrap_or(params.crc_length),
            compression: self.compression || params.is_compression_enabled,
            multi_length,
            unescape_always: params.zero_escape == ZeroEscape::Always,
            rc4: self
                .rc4_key
                .as_ref()
                .and_then(|k| Rc4KeyState::try_new(&k.0)),
            pass_codes: params.pass_codes,
            preview_len: self.preview,
            ..DecodeOptions::default()
        }
    }
}

/// Parses `args` (the program name first) and decodes the capture, writing to
/// `out`. `--help` and `--version` write their text to `out` too.
///
/// Errors: bad arguments (the message is clap's, usage included) or a file that
/// cannot be opened or is not a capture. A truncated or partly corrupt capture is
/// not an error: what could be read is decoded and the reason is reported.
pub fn run<I, T>(args: I, out: &mut dyn Write) -> Result<(), String>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            let _ = write!(out, "{}", e.render());
            return Ok(());
        }
        Err(e) => return Err(e.render().to_string()),
    };
    let input: Box<dyn Read + Send> = if args.file.as_os_str() == "-" {
        Box::new(io::stdin())
    } else {
        let file = File::open(&args.file)
            .map_err(|e| format!("cannot open {}: {e}", args.file.display()))?;
        Box::new(file)
    };
    decode(input, &args, out)
}

/// Decodes the capture read from `input` as `args` says, writing to `out`.
pub fn decode(input: impl Read + Send, args: &Args, out: &mut dyn Write) -> Result<(), String> {
    let style = if args.json { Style::Json } else { Style::Text };
    let mut printer = Printer::new(BufWriter::with_capacity(1 << 16, out), style, args.summary);
    let mut tracker = FlowTracker::new(args.decode_options(), args.port);
    let mut events: Vec<Event> = Vec::new();
    // A closed pipe (`soe-dump … | head`) ends the output, not the program with an
    // error.
    let mut write_error: Option<io::Error> = None;
    let mut print = |printer: &mut Printer<_>, events: &mut Vec<Event>| {
        if write_error.is_none() {
            for e in events.iter() {
                if let Err(err) = printer.event(e) {
                    write_error = Some(err);
                    break;
                }
            }
        }
        events.clear();
    };
    let outcome = read_frames(input, |frame| {
        let summary = tracker.summary_mut();
        summary.frames += 1;
        match parse_frame(frame.linktype, frame.data) {
            Ok(d) => {
                summary.udp_datagrams += 1;
                summary.bad_ip_checksums += u64::from(d.bad_ip_checksum);
                summary.bad_udp_checksums += u64::from(d.bad_udp_checksum);
                tracker.datagram(frame.time, d.src, d.dst, d.payload, &mut events);
            }
            Err(Skip::NotIp | Skip::NotUdp) => summary.not_udp += 1,
            Err(Skip::IpFragment) => summary.ip_fragments += 1,
            Err(Skip::UnknownLinkType(_)) => summary.unsupported_link += 1,
            Err(Skip::Malformed(_)) => summary.malformed_frames += 1,
        }
        print(&mut printer, &mut events);
    })?;
    tracker.summary_mut().stopped = outcome.stopped;
    tracker.finish(&mut events);
    print(&mut printer, &mut events);
    let flushed = printer.flush();
    match write_error.or(flushed.err()) {
        Some(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(format!("cannot write: {e}")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_shape() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    #[test]
    fn options_follow_the_profile() {
        let args = Args::try_parse_from(["soe-dump", "x.pcap"]).unwrap();
        let o = args.decode_options();
        assert_eq!(o.multi_length, LengthPolicy::Auto);
        assert_eq!((o.crc_seed, o.crc_length, o.compression), (0, 2, false));
        assert!(!o.unescape_always);

        let args = Args::try_parse_from([
            "soe-dump",
            "x.pcap",
            "--profile",
            "udp-library",
            "--crc-seed",
            "0xDEADBEEF",
            "--crc-length",
            "3",
        ])
        .unwrap();
        let o = args.decode_options();
        assert_eq!(o.multi_length, LengthPolicy::Fixed(LengthForm::OneByte));
        assert_eq!((o.crc_seed, o.crc_length), (0xDEAD_BEEF, 3));
        assert!(o.unescape_always);

        let args = Args::try_parse_from(["soe-dump", "x", "--profile", "soe-uring"]).unwrap();
        assert_eq!(
            args.decode_options().multi_length,
            LengthPolicy::Fixed(LengthForm::Varint)
        );
        let args = Args::try_parse_from([
            "soe-dump",
            "x",
            "--profile",
            "soe-uring",
            "--multi-length",
            "auto",
        ])
        .unwrap();
        assert_eq!(args.decode_options().multi_length, LengthPolicy::Auto);

        assert!(Args::try_parse_from(["soe-dump", "x", "--profile", "nope"]).is_err());
        assert!(Args::try_parse_from(["soe-dump", "x", "--crc-length", "5"]).is_err());
        assert!(Args::try_parse_from(["soe-dump", "x", "--rc4-key", "abc"]).is_err());
        let args = Args::try_parse_from(["soe-dump", "x", "--rc4-key", "0A0b"]).unwrap();
        assert_eq!(args.rc4_key, Some(HexKey(vec![10, 11])));
    }

    #[test]
    fn help_goes_to_the_output_and_bad_files_are_errors() {
        let mut out = Vec::new();
        run(["soe-dump", "--help"], &mut out).unwrap();
        assert!(String::from_utf8_lossy(&out).contains("--rc4-key"));
        let mut out = Vec::new();
        assert!(run(["soe-dump", "/nonexistent/capture.pcap"], &mut out).is_err());
        assert!(run(["soe-dump"], &mut out).is_err());
    }
}

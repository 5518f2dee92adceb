//! Reading capture files: classic libpcap (micro- or nanosecond, either byte
//! order) and pcapng (any number of sections and interfaces, each with its own
//! link type and timestamp resolution), through the `pcap-parser` crate.
//!
//! [`read_frames`] streams the file with a bounded buffer and hands each frame to a
//! callback; it never loads the whole file.

use std::io::Read;

use pcap_parser::traits::PcapNGPacketBlock;
use pcap_parser::{Block, PcapBlockOwned, PcapError, create_reader};

/// Largest block the reader accepts (the buffer grows up to this size for one).
const MAX_BLOCK: usize = 64 << 20;

/// A point in time, as the capture recorded it (since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Timestamp {
    /// Whole seconds.
    pub secs: u64,
    /// Nanoseconds, below one second.
    pub nanos: u32,
}

impl Timestamp {
    /// Seconds as a float.
    pub fn as_secs_f64(self) -> f64 {
        self.secs as f64 + f64::from(self.nanos) / 1e9
    }

    /// `self - earlier` in seconds (negative if `earlier` is later).
    pub fn seconds_since(self, earlier: Timestamp) -> f64 {
        (self.secs as f64 - earlier.secs as f64)
            + (f64::from(self.nanos) - f64::from(earlier.nanos)) / 1e9
    }

    /// A timestamp from a count of `units_per_sec` units since the epoch.
    fn from_units(units: u64, units_per_sec: u64) -> Self {
        let units_per_sec = units_per_sec.max(1);
        let secs = units / units_per_sec;
        let frac = units % units_per_sec;
        let nanos = (u128::from(frac) * 1_000_000_000 / u128::from(units_per_sec)) as u32;
        Self { secs, nanos }
    }
}

/// One captured frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// When it was captured.
    pub time: Timestamp,
    /// Its link-layer header type (`LINKTYPE_*`).
    pub linktype: i32,
    /// The captured bytes (possibly fewer than were on the wire).
    pub data: &'a [u8],
    /// The length on the wire.
    pub orig_len: u32,
}

/// The container format of a capture file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Classic libpcap.
    Pcap,
    /// pcapng.
    PcapNg,
}

/// What reading the file came to.
#[derive(Debug, Clone, Default)]
pub struct ReadOutcome {
    /// The container format (`None` if not even the header was readable).
    pub format: Option<Format>,
    /// Frames handed to the callback.
    pub frames: u64,
    /// Packet blocks that referenced an interface the file never described.
    pub orphan_blocks: u64,
    /// Why reading stopped early (a truncated or corrupt file); `None` at a clean end.
    pub stopped: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Interface {
    linktype: i32,
    units_per_sec: u64,
    offset_secs: i64,
}

/// Reads every frame of the capture in `input` and calls `on_frame` for each, in
/// file order. Returns an error only when `input` is not a capture at all;
/// a file that ends early or goes bad part way is reported in
/// [`ReadOutcome::stopped`] after the frames before that point.
pub fn read_frames<R, F>(input: R, mut on_frame: F) -> Result<ReadOutcome, String>
where
    R: Read + Send,
    F: FnMut(&Frame<'_>),
{
    let mut reader = match create_reader(1 << 20, input) {
        Ok(r) => r,
        Err(PcapError::Eof) => return Err("empty file".into()),
        Err(PcapError::HeaderNotRecognized) => {
            return Err("not a pcap or pcapng file".into());
        }
        Err(e) => return Err(format!("cannot read the capture header: {e}")),
    };
    let mut out = ReadOutcome::default();
    // Classic pcap: one link type and resolution for the whole file.
    let mut legacy: Option<Interface> = None;
    // pcapng: the interfaces of the current section.
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut capacity = 1 << 20;
    loop {
        match reader.next() {
            Ok((consumed, block)) => {
                match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        out.format = Some(Format::Pcap);
                        legacy = Some(Interface {
                            linktype: h.network.0,
                            units_per_sec: if h.is_nanosecond_precision() {
                                1_000_000_000
                            } else {
                                1_000_000
                            },
                            offset_secs: 0,
                        });
                    }
                    PcapBlockOwned::Legacy(b) => {
                        let Some(iface) = legacy else {
                            out.orphan_blocks += 1;
                            reader.consume(consumed);
                            continue;
                        };
                        let frac_ns = if iface.units_per_sec == 1_000_000 {
                            u64::from(b.ts_usec) * 1000
                        } else {
                            u64::from(b.ts_usec)
                        };
                        // Some writers put a whole second or more in the fraction.
                        let time = Timestamp {
                            secs: u64::from(b.ts_sec) + frac_ns / 1_000_000_000,
                            nanos: (frac_ns % 1_000_000_000) as u32,
                        };
                        let len = (b.caplen as usize).min(b.data.len());
                        out.frames += 1;
                        on_frame(&Frame {
                            time,
                            linktype: iface.linktype,
                            data: &b.data[..len],
                            orig_len: b.origlen,
                        });
                    }
                    PcapBlockOwned::NG(block) => {
                        out.format = Some(Format::PcapNg);
                        match block {
                            Block::SectionHeader(_) => interfaces.clear(),
                            Block::InterfaceDescription(idb) => interfaces.push(Interface {
                                linktype: idb.linktype.0,
                                // An invalid resolution falls back to the default.
                                units_per_sec: idb.ts_resolution().unwrap_or(1_000_000),
                                offset_secs: idb.ts_offset(),
                            }),
                            Block::EnhancedPacket(epb) => {
                                match interfaces.get(epb.if_id as usize) {
                                    Some(iface) => {
                                        let units =
                                            (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                                        let mut time =
                                            Timestamp::from_units(units, iface.units_per_sec);
                                        time.secs =
                                            time.secs.saturating_add_signed(iface.offset_secs);
                                        out.frames += 1;
                                        on_frame(&Frame {
                                            time,
                                            linktype: iface.linktype,
                                            data: epb.packet_data(),
                                            orig_len: epb.origlen,
                                        });
                                    }
                                    None => out.orphan_blocks += 1,
                                }
                            }
                            Block::SimplePacket(spb) => match interfaces.first() {
                                // No timestamp: the frame gets the epoch.
                                Some(iface) => {
                                    let len = (spb.origlen as usize).min(spb.data.len());
                                    out.frames += 1;
                                    on_frame(&Frame {
                                        time: Timestamp::default(),
                                        linktype: iface.linktype,
                                        data: &spb.data[..len],
                                        orig_len: spb.origlen,
                                    });
                                }
                                None => out.orphan_blocks += 1,
                            },
                            _ => {}
                        }
                    }
                }
                reader.consume(consumed);
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                if let Err(e) = reader.refill() {
                    out.stopped = Some(format!("read error: {e}"));
                    break;
                }
            }
            Err(PcapError::BufferTooSmall) => {
                if capacity >= MAX_BLOCK || !reader.grow(capacity * 2) {
                    out.stopped = Some(format!("a block larger than {MAX_BLOCK} bytes"));
                    break;
                }
                capacity *= 2;
                if let Err(e) = reader.refill() {
                    out.stopped = Some(format!("read error: {e}"));
                    break;
                }
            }
            Err(PcapError::UnexpectedEof) => {
                out.stopped = Some("the file ends in the middle of a block".into());
                break;
            }
            Err(e) => {
                out.stopped = Some(format!(
                    "corrupt block after {} frames: {}",
                    out.frames,
                    e.to_owned_vec()
                ));
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A classic pcap file (microseconds, little-endian) of `frames`.
    pub(crate) fn pcap_file(linktype: u32, frames: &[(u32, u32, &[u8])]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&0xA1B2_C3D4u32.to_le_bytes());
        f.extend_from_slice(&2u16.to_le_bytes());
        f.extend_from_slice(&4u16.to_le_bytes());
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&65_535u32.to_le_bytes());
        f.extend_from_slice(&linktype.to_le_bytes());
        for (secs, usecs, data) in frames {
            f.extend_from_slice(&secs.to_le_bytes());
            f.extend_from_slice(&usecs.to_le_bytes());
            f.extend_from_slice(&(data.len() as u32).to_le_bytes());
            f.extend_from_slice(&(data.len() as u32).to_le_bytes());
            f.extend_from_slice(data);
        }
        f
    }

    fn block(kind: u32, body: &[u8]) -> Vec<u8> {
        let len = 12 + body.len().div_ceil(4) * 4;
        let mut b = kind.to_le_bytes().to_vec();
        b.extend_from_slice(&(len as u32).to_le_bytes());
        b.extend_from_slice(body);
        b.resize(len - 4, 0);
        b.extend_from_slice(&(len as u32).to_le_bytes());
        b
    }

    /// A pcapng file with one interface (nanosecond resolution when `tsresol` is 9)
    /// and one enhanced packet block per frame (`time` in interface units).
    pub(crate) fn pcapng_file(
        linktype: u16,
        tsresol: Option<u8>,
        frames: &[(u64, &[u8])],
    ) -> Vec<u8> {
        let mut shb = 0x1A2B_3C4Du32.to_le_bytes().to_vec();
        shb.extend_from_slice(&1u16.to_le_bytes());
        shb.extend_from_slice(&0u16.to_le_bytes());
        shb.extend_from_slice(&(-1i64).to_le_bytes());
        let mut f = block(0x0A0D_0D0A, &shb);
        let mut idb = linktype.to_le_bytes().to_vec();
        idb.extend_from_slice(&[0, 0]);
        idb.extend_from_slice(&0u32.to_le_bytes());
        if let Some(r) = tsresol {
            idb.extend_from_slice(&9u16.to_le_bytes());
            idb.extend_from_slice(&1u16.to_le_bytes());
            idb.extend_from_slice(&[r, 0, 0, 0]);
            idb.extend_from_slice(&[0, 0, 0, 0]);
        }
        f.extend(block(1, &idb));
        for (time, data) in frames {
            let mut epb = 0u32.to_le_bytes().to_vec();
            epb.extend_from_slice(&((time >> 32) as u32).to_le_bytes());
            epb.extend_from_slice(&(*time as u32).to_le_bytes());
            epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
            epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
            epb.extend_from_slice(data);
            f.extend(block(6, &epb));
        }
        f
    }

    fn collect(file: &[u8]) -> (Vec<(Timestamp, i32, Vec<u8>)>, ReadOutcome) {
        let mut frames = Vec::new();
        let outcome =
            read_frames(file, |f| frames.push((f.time, f.linktype, f.data.to_vec()))).unwrap();
        (frames, outcome)
    }

    #[test]
    fn classic_pcap() {
        let file = pcap_file(101, &[(10, 250_000, b"abc"), (11, 5, b"")]);
        let (frames, outcome) = collect(&file);
        assert_eq!(outcome.format, Some(Format::Pcap));
        assert_eq!(outcome.stopped, None);
        assert_eq!(
            frames,
            [
                (
                    Timestamp {
                        secs: 10,
                        nanos: 250_000_000
                    },
                    101,
                    b"abc".to_vec()
                ),
                (
                    Timestamp {
                        secs: 11,
                        nanos: 5000
                    },
                    101,
                    Vec::new()
                ),
            ]
        );
    }

    #[test]
    fn pcapng_resolutions() {
        // Default resolution: microseconds.
        let file = pcapng_file(1, None, &[(1_500_000, b"xy")]);
        let (frames, outcome) = collect(&file);
        assert_eq!(outcome.format, Some(Format::PcapNg));
        assert_eq!(
            frames,
            [(
                Timestamp {
                    secs: 1,
                    nanos: 500_000_000
                },
                1,
                b"xy".to_vec()
            )]
        );
        // if_tsresol = 9: nanoseconds.
        let file = pcapng_file(276, Some(9), &[(2_000_000_007, b"z")]);
        let (frames, _) = collect(&file);
        assert_eq!(
            frames,
            [(Timestamp { secs: 2, nanos: 7 }, 276, b"z".to_vec())]
        );
    }

    #[test]
    fn truncated_and_garbage_files() {
        let file = pcap_file(101, &[(1, 0, b"first"), (2, 0, b"second frame")]);
        let (frames, outcome) = collect(&file[..file.len() - 3]);
        assert_eq!(frames.len(), 1);
        assert!(outcome.stopped.is_some());
        assert!(read_frames(&b"hello, not a capture at all"[..], |_| {}).is_err());
        assert!(read_frames(&b""[..], |_| {}).is_err());
        // Any prefix of either format: no panic.
        let ng = pcapng_file(101, Some(6), &[(1, b"abcdef"), (2, b"ghi")]);
        for f in [&file, &ng] {
            for len in 0..f.len() {
                let _ = read_frames(&f[..len], |_| {});
            }
        }
    }
}

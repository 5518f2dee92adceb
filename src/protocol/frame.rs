//! The outer layer of a datagram: CRC trailer and compression flag.
//!
//! [`Framing::unframe`] classifies a received datagram and, for contextual packets,
//! checks and strips the CRC and reads the compression flag. It never inflates: that
//! needs a reusable buffer, which the session owns.
//!
//! Framing of outgoing packets is done by the session's datagram assembler with
//! [`Framing::seal`] for the CRC (and [`Passes::encrypt`] before it, when the
//! session negotiated encryption passes).
//!
//! Unreliable application datagrams (first byte non-zero, or `00 00` zero-escaped)
//! carry a CRC but never a compression flag, as `soe-protocol` frames them. They do
//! go through encryption passes, as in UdpLibrary.
//!
//! A session with encryption passes ([`super::passes`]) opens datagrams with
//! [`Framing::open`], which needs a buffer to decrypt into; without passes it is
//! [`Framing::unframe`], which only borrows.

use std::sync::Arc;

use super::OpCode;
use super::compress::Decompressor;
use super::crc::Crc32;
use super::passes::{PassBuffers, PassError, Passes};

/// The negotiated framing of a session's contextual datagrams.
#[derive(Debug, Clone)]
pub struct Framing {
    crc: Crc32,
    crc_seed: u32,
    crc_length: u8,
    compression: bool,
    /// Shared and boxed: most sessions have none, and the framing stays small.
    passes: Option<Arc<Passes>>,
    /// [`Framing::overhead`], worked out once: every packet a session sends asks.
    overhead: usize,
}

/// Why a received datagram was rejected before parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// An empty datagram.
    #[error("empty datagram")]
    Empty,
    /// The CRC trailer does not match.
    #[error("CRC mismatch")]
    CrcMismatch,
    /// Shorter than op code + compression flag + CRC.
    #[error("datagram too short")]
    TooShort,
    /// `00 xx` with an undefined packet type.
    #[error("unknown op code 0x{0:02x}")]
    UnknownOpCode(u8),
    /// The CRC matched but an encryption pass could not be undone: the peer sent
    /// something corrupt (UdpLibrary ends the session on it).
    #[error("encryption pass: {0}")]
    Pass(PassError),
}

/// A classified received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unframed<'a> {
    /// A contextless packet (no CRC, no flag): parse the whole datagram.
    Contextless(OpCode, &'a [u8]),
    /// Unreliable application data with the CRC and any zero-escape removed.
    Application(&'a [u8]),
    /// A contextual internal packet with its CRC and flag removed.
    Contextual {
        /// The op code.
        op: OpCode,
        /// Whether the flag said the body is a zlib stream.
        compressed: bool,
        /// The body after the op code and flag (still compressed if `compressed`).
        body: &'a [u8],
    },
}

impl Framing {
    /// Framing with the given CRC seed and length and compression flag.
    pub fn new(crc_seed: u32, crc_length: u8, compression: bool) -> Self {
        let mut framing = Self {
            crc: Crc32::new(crc_seed),
            crc_seed,
            crc_length: crc_length.min(4),
            compression,
            passes: None,
            overhead: 0,
        };
        framing.overhead = framing.compute_overhead();
        framing
    }

    fn compute_overhead(&self) -> usize {
        usize::from(self.compression) + self.expansion() + usize::from(self.crc_length)
    }

    /// The same framing with encryption passes run on every contextual datagram.
    pub fn with_passes(mut self, passes: Option<Passes>) -> Self {
        self.passes = passes.map(Arc::new);
        self.overhead = self.compute_overhead();
        self
    }

    /// The encryption passes, if the session negotiated any.
    pub fn passes(&self) -> Option<&Passes> {
        self.passes.as_deref()
    }

    /// The most bytes the encryption passes add to a datagram.
    pub fn expansion(&self) -> usize {
        self.passes().map_or(0, Passes::expansion)
    }

    /// The CRC seed.
    pub fn crc_seed(&self) -> u32 {
        self.crc_seed
    }

    /// CRC bytes per contextual datagram.
    pub fn crc_length(&self) -> u8 {
        self.crc_length
    }

    /// Whether contextual packets carry a compression flag.
    pub fn compression(&self) -> bool {
        self.compression
    }

    /// Bytes added to every contextual packet: the flag (if negotiated), what the
    /// encryption passes may add, and the CRC.
    #[inline]
    pub fn overhead(&self) -> usize {
        self.overhead
    }

    /// The seeded CRC.
    pub fn crc(&self) -> &Crc32 {
        &self.crc
    }

    /// Appends the CRC of `buf[..len]` at `buf[len..]`; returns the sealed length.
    pub fn seal(&self, buf: &mut [u8], len: usize) -> usize {
        self.crc.append(buf, len, self.crc_length)
    }

    /// Appends the CRC of `buf[start..]` to `buf`: [`Framing::seal`] for a
    /// datagram at the end of a growing buffer.
    #[inline]
    pub fn seal_vec(&self, buf: &mut Vec<u8>, start: usize) {
        self.crc.push(buf, start, self.crc_length);
    }

    /// Classifies and opens a received datagram of a session with encryption passes:
    /// checks and strips the CRC, copies the rest into `out` and undoes the passes
    /// there (EQ's compression pass inflating at most `max_inflated` bytes), then
    /// reads it as [`Framing::unframe`] does. Without passes it is `unframe`.
    pub fn open<'a>(
        &self,
        datagram: &'a [u8],
        out: &'a mut Vec<u8>,
        scratch: &mut PassBuffers,
        inflater: &mut Decompressor,
        max_inflated: usize,
    ) -> Result<Unframed<'a>, FrameError> {
        let Some(passes) = self.passes() else {
            return self.unframe(datagram);
        };
        let op = match datagram {
            [] => return Err(FrameError::Empty),
            [0, ty, ..] => {
                let op = OpCode::from_type_byte(*ty).ok_or(FrameError::UnknownOpCode(*ty))?;
                if op.is_contextless() {
                    return Ok(Unframed::Contextless(op, datagram));
                }
                Some(op)
            }
            _ => None,
        };
        let Some(cooked) = self.crc.verify(datagram, self.crc_length) else {
            let short = op.is_some() && datagram.len() < 2 + usize::from(self.crc_length);
            return Err(if short {
                FrameError::TooShort
            } else {
                FrameError::CrcMismatch
            });
        };
        if cooked.len() < op.map_or(1, |_| 2) {
            return Err(FrameError::TooShort);
        }
        out.clear();
        out.extend_from_slice(cooked);
        passes
            .decrypt(out, scratch, inflater, max_inflated)
            .map_err(FrameError::Pass)?;
        let cooked: &'a [u8] = out;
        let Some(op) = op else {
            return Ok(Unframed::Application(cooked));
        };
        self.contextual(op, cooked)
    }

    /// Reads a contextual packet whose CRC (and passes) are gone.
    fn contextual<'a>(&self, op: OpCode, cooked: &'a [u8]) -> Result<Unframed<'a>, FrameError> {
        if op == OpCode::ZeroEscape {
            return Ok(Unframed::Application(&cooked[1..]));
        }
        if self.compression {
            match cooked.get(2) {
                Some(&flag) => Ok(Unframed::Contextual {
                    op,
                    compressed: flag != 0,
                    body: &cooked[3..],
                }),
                None => Err(FrameError::TooShort),
            }
        } else {
            Ok(Unframed::Contextual {
                op,
                compressed: false,
                body: &cooked[2..],
            })
        }
    }

    /// Classifies and opens a received datagram.
    pub fn unframe<'a>(&self, datagram: &'a [u8]) -> Result<Unframed<'a>, FrameError> {
        let (first, ty) = match datagram {
            [] => return Err(FrameError::Empty),
            [first] => (*first, None),
            [first, ty, ..] => (*first, Some(*ty)),
        };
        if first != 0 || ty.is_none() {
            let body = self
                .crc
                .verify(datagram, self.crc_length)
                .ok_or(FrameError::CrcMismatch)?;
            return if body.is_empty() {
                Err(FrameError::TooShort)
            } else {
                Ok(Unframed::Application(body))
            };
        }
        let ty = ty.unwrap_or_default();
        let op = OpCode::from_type_byte(ty).ok_or(FrameError::UnknownOpCode(ty))?;
        if op.is_contextless() {
            return Ok(Unframed::Contextless(op, datagram));
        }
        // Unlike UdpLibrary, a KeepAlive is not trusted before its CRC is checked: a
        // stream of forged or corrupt datagrams must not keep a session alive.
        let Some(cooked) = self.crc.verify(datagram, self.crc_length) else {
            return if datagram.len() < 2 + usize::from(self.crc_length) {
                Err(FrameError::TooShort)
            } else {
                Err(FrameError::CrcMismatch)
            };
        };
        if cooked.len() < 2 {
            // The CRC took bytes the op code needed.
            return Err(FrameError::TooShort);
        }
        self.contextual(op, cooked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::hex;

    // Vectors: tests/vectors/v09_acks.txt.
    #[test]
    fn v9_ack_with_crc() {
        let f = Framing::new(0, 2, false);
        assert_eq!(
            f.unframe(&hex("00 15 00 01 8e 64")),
            Ok(Unframed::Contextual {
                op: OpCode::AcknowledgeAll(0),
                compressed: false,
                body: &[0, 1]
            })
        );
        assert_eq!(
            f.unframe(&hex("00 11 00 01 8e 64")),
            Err(FrameError::CrcMismatch)
        );
    }

    #[test]
    fn compression_flag_is_read_after_the_op_code() {
        let f = Framing::new(0, 0, true);
        assert_eq!(
            f.unframe(&hex("00 09 01 aa bb")),
            Ok(Unframed::Contextual {
                op: OpCode::ReliableData(0),
                compressed: true,
                body: &[0xaa, 0xbb]
            })
        );
        assert_eq!(f.unframe(&hex("00 06")), Err(FrameError::TooShort));
        // Unreliable data never carries the flag.
        assert_eq!(
            f.unframe(&hex("00 00 00 07")),
            Ok(Unframed::Application(&[0, 0, 7]))
        );
        assert_eq!(f.unframe(&hex("05 06")), Ok(Unframed::Application(&[5, 6])));
    }

    #[test]
    fn contextless_packets_skip_the_crc() {
        let f = Framing::new(77, 4, true);
        let d = hex("00 1d");
        assert_eq!(
            f.unframe(&d),
            Ok(Unframed::Contextless(OpCode::UnknownSender, &d[..]))
        );
        assert_eq!(f.unframe(&[]), Err(FrameError::Empty));
        assert_eq!(
            f.unframe(&hex("00 04 00 00 00 00")),
            Err(FrameError::UnknownOpCode(4))
        );
    }

    #[test]
    fn datagrams_shorter_than_an_op_code_after_the_crc_are_rejected() {
        // Found by fuzzing: `00 xx` where `xx` happens to be the 1-byte CRC of `00`
        // used to slice past the end.
        for crc_length in 1..=4u8 {
            let f = Framing::new(7, crc_length, true);
            for len in 0..8 {
                let mut buf = vec![0u8; len + usize::from(crc_length)];
                let n = f.seal(&mut buf, len);
                // Never panics; a contextual packet needs its whole op code.
                let r = f.unframe(&buf[..n]);
                if len < 2 {
                    assert!(
                        !matches!(r, Ok(Unframed::Contextual { .. })),
                        "{len} {crc_length} {r:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn seal_then_unframe() {
        let f = Framing::new(0xDEAD_BEEF, 3, false);
        let mut buf = [0u8; 16];
        buf[..4].copy_from_slice(&[0, 0x11, 0x12, 0x34]);
        let n = f.seal(&mut buf, 4);
        assert_eq!(n, 7);
        assert_eq!(
            f.unframe(&buf[..n]),
            Ok(Unframed::Contextual {
                op: OpCode::Acknowledge(0),
                compressed: false,
                body: &[0x12, 0x34]
            })
        );
    }

    mod passes {
        use super::*;
        use crate::protocol::compress::Compressor;
        use crate::protocol::passes::{Deflate, EncryptMethod, PassContext};
        use proptest::prelude::*;

        const SEED: u32 = 0xDEAD_BEEF;

        fn framing(methods: [EncryptMethod; 2], seed: u32, crc_length: u8) -> Framing {
            let passes =
                Passes::new(methods, [None, None], PassContext::new(1, seed), 512).unwrap();
            Framing::new(seed, crc_length, false).with_passes(passes)
        }

        /// Opens `datagram` and returns what it holds, owned.
        fn open(f: &Framing, datagram: &[u8]) -> Result<(Option<OpCode>, Vec<u8>), FrameError> {
            let mut out = Vec::new();
            let mut scratch = PassBuffers::new();
            let mut inflater = Decompressor::new();
            Ok(
                match f.open(datagram, &mut out, &mut scratch, &mut inflater, 4096)? {
                    Unframed::Application(data) => (None, data.to_vec()),
                    Unframed::Contextual { op, body, .. } => (Some(op), body.to_vec()),
                    Unframed::Contextless(op, bytes) => (Some(op), bytes.to_vec()),
                },
            )
        }

        /// Encrypts and seals a cooked packet as the assembler does.
        fn seal(f: &Framing, cooked: &[u8], zlib: Option<&mut Compressor>) -> Vec<u8> {
            let mut buf = cooked.to_vec();
            let deflate = zlib.map(|zlib| Deflate { zlib, min_len: 31 });
            f.passes()
                .unwrap()
                .encrypt(&mut buf, 0, &mut PassBuffers::new(), deflate);
            let n = buf.len();
            buf.resize(n + usize::from(f.crc_length()), 0);
            f.seal(&mut buf, n);
            buf
        }

        // Vectors computed by a separate byte-wise implementation (Python): the
        // passes over what follows the header, then CRC(seed, encrypted bytes).

        #[test]
        fn xor_ack_all_vector() {
            let f = framing([EncryptMethod::Xor, EncryptMethod::None], SEED, 2);
            assert_eq!(f.overhead(), 2);
            let wire = hex("00 15 ef e5 87 1e");
            assert_eq!(seal(&f, &hex("00 15 00 0a"), None), wire);
            assert_eq!(
                open(&f, &wire),
                Ok((Some(OpCode::AcknowledgeAll(0)), hex("00 0a")))
            );
            // The CRC covers the encrypted bytes.
            let mut bad = wire.clone();
            bad[3] ^= 1;
            assert_eq!(open(&f, &bad), Err(FrameError::CrcMismatch));
        }

        #[test]
        fn xor_application_vector() {
            let f = framing([EncryptMethod::Xor, EncryptMethod::None], SEED, 2);
            let wire = hex("42 8e dc ce ba eb e8 e9 78 ef");
            assert_eq!(seal(&f, b"\x42abcdefg", None), wire);
            assert_eq!(open(&f, &wire), Ok((None, b"\x42abcdefg".to_vec())));
        }

        #[test]
        fn xor_buffer_reliable_vector() {
            let f = framing([EncryptMethod::XorBuffer, EncryptMethod::None], SEED, 2);
            let wire = hex("00 09 a3 07 00 c9 eb 95 d6 10 93 ec 6c 3b 4a f2 ab");
            let mut cooked = hex("00 09 00 01");
            cooked.extend_from_slice(b"hello world");
            assert_eq!(seal(&f, &cooked, None), wire);
            assert_eq!(
                open(&f, &wire),
                Ok((Some(OpCode::ReliableData(0)), cooked[2..].to_vec()))
            );
        }

        #[test]
        fn eq_flag_vectors() {
            let eq = framing([EncryptMethod::Compression, EncryptMethod::None], SEED, 2);
            assert_eq!(eq.overhead(), 3);
            let wire = hex("00 06 a5 1e e9");
            assert_eq!(seal(&eq, &hex("00 06"), None), wire);
            assert_eq!(open(&eq, &wire), Ok((Some(OpCode::Heartbeat), vec![])));
            // Compression, then XOR over the flag.
            let both = framing([EncryptMethod::Compression, EncryptMethod::Xor], SEED, 2);
            let wire = hex("00 06 4a e1 00");
            assert_eq!(seal(&both, &hex("00 06"), None), wire);
            assert_eq!(open(&both, &wire), Ok((Some(OpCode::Heartbeat), vec![])));
            // A body C zlib compressed at level 1 behind 5A.
            let wire = hex("00 09 5a 78 01 63 60 4c 24 12 00 00 37 16 0f 2a 4c d5");
            let mut body = hex("00 01");
            body.extend_from_slice(&[b'a'; 40]);
            assert_eq!(
                open(&eq, &wire),
                Ok((Some(OpCode::ReliableData(0)), body.clone()))
            );
            // Ours compresses too, and reads back.
            let mut cooked = hex("00 09");
            cooked.extend_from_slice(&body);
            let mut zlib = Compressor::new(1);
            let sealed = seal(&eq, &cooked, Some(&mut zlib));
            assert_eq!(sealed[2], 0x5A);
            assert!(sealed.len() < cooked.len());
            assert_eq!(
                open(&eq, &sealed),
                Ok((Some(OpCode::ReliableData(0)), body))
            );
            // A body flagged 5A that does not inflate (XORed as pass 1 would): a
            // pass error, once the CRC has held.
            let xor = framing([EncryptMethod::None, EncryptMethod::Xor], SEED, 2);
            let bad = seal(&xor, &hex("00 09 5a 01 02 03"), None);
            assert!(matches!(open(&both, &bad), Err(FrameError::Pass(_))));
        }

        #[test]
        fn contextless_packets_bypass_the_passes() {
            let f = framing([EncryptMethod::Xor, EncryptMethod::XorBuffer], SEED, 2);
            let d = hex("00 1d");
            assert_eq!(open(&f, &d), Ok((Some(OpCode::UnknownSender), d.clone())));
            assert_eq!(open(&f, &[]), Err(FrameError::Empty));
            assert_eq!(
                open(&f, &hex("00 04 00 00")),
                Err(FrameError::UnknownOpCode(4))
            );
            assert_eq!(open(&f, &hex("00 09 00")), Err(FrameError::TooShort));
        }

        proptest! {
            #[test]
            fn seal_then_open_round_trips(
                seed in any::<u32>(),
                crc_length in 0u8..=4,
                m0 in 0usize..4,
                m1 in 0usize..4,
                first in any::<u8>(),
                ty in prop::sample::select(vec![0x00u8, 0x03, 0x05, 0x06, 0x09, 0x0E, 0x11, 0x17, 0x19, 0x1B]),
                body in proptest::collection::vec(any::<u8>(), 0..120),
            ) {
                let methods = [
                    EncryptMethod::None,
                    EncryptMethod::Xor,
                    EncryptMethod::XorBuffer,
                    EncryptMethod::Compression,
                ];
                let f = framing([methods[m0], methods[m1]], seed, crc_length);
                if f.passes().is_none() {
                    return Ok(());
                }
                let mut cooked = if first == 0 { vec![0, ty] } else { vec![first] };
                cooked.extend_from_slice(&body);
                let mut zlib = Compressor::new(1);
                let sealed = seal(&f, &cooked, Some(&mut zlib));
                prop_assert!(sealed.len() <= cooked.len() + f.overhead());
                let expected = if first != 0 {
                    (None, cooked.clone())
                } else if ty == 0 {
                    (None, cooked[1..].to_vec())
                } else {
                    (OpCode::from_type_byte(ty), cooked[2..].to_vec())
                };
                prop_assert_eq!(open(&f, &sealed), Ok(expected));
                if crc_length > 0 {
                    let mut bad = sealed.clone();
                    let last = bad.len() - 1;
                    bad[last] ^= 0x80;
                    prop_assert_eq!(open(&f, &bad), Err(FrameError::CrcMismatch));
                }
            }
        }
    }
}

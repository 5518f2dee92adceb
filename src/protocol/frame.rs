//! The outer layer of a datagram: CRC trailer and compression flag.
//!
//! [`Framing::unframe`] classifies a received datagram and, for contextual packets,
//! checks and strips the CRC and reads the compression flag. It never inflates: that
//! needs a reusable buffer, which the session owns.
//!
//! Framing of outgoing packets is done by the session's datagram assembler with
//! [`Framing::seal`] for the CRC.
//!
//! Unreliable application datagrams (first byte non-zero, or `00 00` zero-escaped)
//! carry a CRC but never a compression flag, as `soe-protocol` frames them.

use super::OpCode;
use super::crc::Crc32;

/// The negotiated framing of a session's contextual datagrams.
#[derive(Debug, Clone)]
pub struct Framing {
    crc: Crc32,
    crc_seed: u32,
    crc_length: u8,
    compression: bool,
}

/// Why a received datagram was rejected before parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
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
        Self {
            crc: Crc32::new(crc_seed),
            crc_seed,
            crc_length: crc_length.min(4),
            compression,
        }
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

    /// Bytes added to every contextual packet: the flag (if negotiated) and the CRC.
    pub fn overhead(&self) -> usize {
        usize::from(self.compression) + usize::from(self.crc_length)
    }

    /// The seeded CRC.
    pub fn crc(&self) -> &Crc32 {
        &self.crc
    }

    /// Appends the CRC of `buf[..len]` at `buf[len..]`; returns the sealed length.
    pub fn seal(&self, buf: &mut [u8], len: usize) -> usize {
        self.crc.append(buf, len, self.crc_length)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

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
}

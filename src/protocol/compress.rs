//! zlib compression of contextual packet bodies (`docs/protocol.md` §5).
//!
//! When a session negotiates compression, every contextual packet carries a flag
//! byte after its op code: `0` means the body follows as is, any other value means
//! the body is a zlib stream (RFC 1950). Inflation is always capped: a peer can never
//! make us produce more than the caller's limit, so a compression bomb costs at most
//! that many bytes of a reused buffer.
//!
//! Both halves keep their (large) zlib state for reuse and are meant to be owned once
//! per multiplexer, not per session.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Why a compressed body could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InflateError {
    /// The stream is not valid zlib, or ends early.
    #[error("corrupt zlib stream")]
    Corrupt,
    /// The inflated body would exceed the cap.
    #[error("inflated body exceeds the cap")]
    TooLarge,
}

/// A reusable zlib deflater.
pub struct Compressor {
    inner: Compress,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor").finish_non_exhaustive()
    }
}

impl Default for Compressor {
    fn default() -> Self {
        Self::new(6)
    }
}

impl Compressor {
    /// A deflater at `level` (0–9; zlib's default is 6).
    pub fn new(level: u32) -> Self {
        Self {
            inner: Compress::new(Compression::new(level.min(9)), true),
        }
    }

    /// Compresses `input` into `out` as one complete zlib stream and returns its
    /// length, or `None` if it does not fit in `out` (callers size `out` to the
    /// largest result worth sending, so "does not fit" means "not worth it").
    pub fn compress(&mut self, input: &[u8], out: &mut [u8]) -> Option<usize> {
        self.inner.reset();
        let status = self.inner.compress(input, out, FlushCompress::Finish);
        let written = self.inner.total_out() as usize;
        let consumed = self.inner.total_in() as usize;
        self.inner.reset();
        match status {
            Ok(Status::StreamEnd) if consumed == input.len() => Some(written),
            _ => None,
        }
    }
}

/// A reusable, capped zlib inflater.
pub struct Decompressor {
    inner: Decompress,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decompressor").finish_non_exhaustive()
    }
}

impl Default for Decompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl Decompressor {
    /// A new inflater.
    pub fn new() -> Self {
        Self {
            inner: Decompress::new(true),
        }
    }

    /// Inflates the zlib stream `input`, appending at most `max` bytes to `out` (what
    /// `out` already holds is kept; on error nothing is appended). Bytes after the
    /// end of the stream are ignored.
    pub fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<(), InflateError> {
        let start = out.len();
        // One extra byte tells "exactly max" apart from "more than max".
        out.resize(start + max + 1, 0);
        self.inner.reset(true);
        let status = self
            .inner
            .decompress(input, &mut out[start..], FlushDecompress::Finish);
        let produced = self.inner.total_out() as usize;
        self.inner.reset(true);
        let outcome = match status {
            Ok(Status::StreamEnd) if produced <= max => Ok(()),
            Ok(Status::StreamEnd) => Err(InflateError::TooLarge),
            Ok(_) if produced > max => Err(InflateError::TooLarge),
            _ => Err(InflateError::Corrupt),
        };
        // On failure nothing is appended, so `out` never exceeds the cap.
        out.truncate(if outcome.is_ok() {
            start + produced
        } else {
            start
        });
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_reuses_state() {
        let mut c = Compressor::default();
        let mut d = Decompressor::new();
        let mut packed = [0u8; 600];
        let mut out = Vec::new();
        for round in 0..3u8 {
            let body: Vec<u8> = (0..500).map(|i| (i % 7) as u8 + round).collect();
            let n = c.compress(&body, &mut packed).expect("compressible");
            assert!(n < body.len());
            assert_eq!(packed[0], 0x78, "zlib header");
            out.clear();
            d.inflate(&packed[..n], &mut out, 512).unwrap();
            assert_eq!(out, body);
        }
    }

    #[test]
    fn compress_reports_no_fit() {
        let mut c = Compressor::default();
        let random: Vec<u8> = (0..400u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut small = [0u8; 64];
        assert_eq!(c.compress(&random, &mut small), None);
        // The state is usable again after a failure.
        let mut big = [0u8; 1024];
        assert!(c.compress(b"hello hello hello hello", &mut big).is_some());
    }

    #[test]
    fn inflate_caps_output() {
        let mut c = Compressor::default();
        let zeros = vec![0u8; 100_000];
        let mut packed = vec![0u8; 2048];
        let n = c.compress(&zeros, &mut packed).unwrap();
        assert!(n < 300, "a bomb: {n} bytes inflate to 100 kB");
        let mut d = Decompressor::new();
        let mut out = Vec::new();
        assert_eq!(
            d.inflate(&packed[..n], &mut out, 4096),
            Err(InflateError::TooLarge)
        );
        assert!(out.capacity() < 8192);
        assert!(out.is_empty(), "nothing appended on failure");
        out.clear();
        out.extend_from_slice(&[0, 9]);
        assert_eq!(d.inflate(&packed[..n], &mut out, 100_000), Ok(()));
        assert_eq!(out.len(), 100_002);
        assert_eq!(&out[..3], &[0, 9, 0]);
        assert_eq!(
            d.inflate(&packed[..n / 2], &mut out, 100_000),
            Err(InflateError::Corrupt)
        );
        assert_eq!(
            d.inflate(b"not zlib", &mut out, 100),
            Err(InflateError::Corrupt)
        );
    }

    proptest! {
        #[test]
        fn inflate_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut d = Decompressor::new();
            let mut out = Vec::new();
            let _ = d.inflate(&data, &mut out, 1024);
            prop_assert!(out.len() <= 1024);
        }
    }
}

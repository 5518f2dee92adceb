//! Raw-packet encryption passes (`soe-spec.md` §11.3, §11.1): UdpLibrary's Xor and
//! XorBuffer, EQ's zlib pass with its `5A`/`A5` flag byte, and hooks for the
//! application's own passes (UdpLibrary's "user supplied" methods).
//!
//! A pass rewrites what follows the header of a contextual datagram: two bytes for an
//! internal packet (`00 op`), one for application data. It runs after the packet is
//! cooked (multi-packets built, compression flag of the v3 form written) and before
//! the CRC is computed, so the CRC covers the encrypted bytes. A session has at most
//! two passes: pass 0 then pass 1 on send, pass 1 then pass 0 on receive. Which ones
//! is negotiated in bytes 11 and 12 of the SessionResponse (see [`PassCodes`]).
//!
//! Xor and XorBuffer are keyed by the CRC seed (UdpLibrary's "encrypt code"); they
//! read the data as little-endian 32-bit words (the byte order of the x86 machines
//! UdpLibrary and EQEmu run on) and chain each word to the previous ciphertext word.
//! The 0–3 bytes after the last whole word are XORed with one key byte each.

use std::fmt;
use std::sync::Arc;

use super::compress::{Compressor, Decompressor, InflateError};

/// The flag byte EQ's compression pass puts before a zlib-compressed body.
pub const EQ_COMPRESSED: u8 = 0x5A;
/// The flag byte EQ's compression pass puts before a body sent as is.
pub const EQ_UNCOMPRESSED: u8 = 0xA5;

/// One encryption pass method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EncryptMethod {
    /// No pass.
    #[default]
    None,
    /// The application's first pass ([`EncryptionPass`]; UdpLibrary code 1). Free
    /// Realms and PlanetSide 2 put zlib compression here: that is the v3 compression
    /// flag, which soe-uring implements itself.
    UserSupplied,
    /// The application's second pass (UdpLibrary code 2).
    UserSupplied2,
    /// Xor chained over the words, each word also XORed with a key stream drawn
    /// from the CRC seed (UdpLibrary code 3).
    XorBuffer,
    /// Xor chained over the words, keyed by the CRC seed (UdpLibrary and EQ code 4).
    Xor,
    /// EQ's zlib pass (EQ code 1): a flag byte, `5A` for a zlib stream or `A5` for a
    /// body sent as is, before the body.
    Compression,
}

/// How a SessionResponse names encryption passes in its bytes 11 and 12.
///
/// In the 21-byte (v3) response byte 11 is always the compression flag of
/// `is_compression_enabled`; what differs is the 17-byte form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PassCodes {
    /// Byte 11 is the compression flag in both forms (soe-uring's own 17-byte
    /// form); byte 12 is pass 1 in UdpLibrary codes (always 0 from v3 peers). Pass 0
    /// cannot be negotiated. Default.
    #[default]
    V3,
    /// UdpLibrary (SWG): in the 17-byte form bytes 11 and 12 are passes 0 and 1,
    /// coded 0 none, 1 user supplied, 2 user supplied 2, 3 XorBuffer, 4 Xor.
    UdpLibrary,
    /// EQ's Daybreak stack: bytes 11 and 12 are passes 0 and 1, coded 0 none,
    /// 1 compression, 4 XOR.
    Eq,
}

impl PassCodes {
    /// The method a code stands for; `None` for a code this dialect does not define.
    pub fn method(self, code: u8) -> Option<EncryptMethod> {
        Some(match (self, code) {
            (_, 0) => EncryptMethod::None,
            (Self::Eq, 1) => EncryptMethod::Compression,
            (Self::Eq, 4) => EncryptMethod::Xor,
            (Self::Eq, _) => return None,
            (_, 1) => EncryptMethod::UserSupplied,
            (_, 2) => EncryptMethod::UserSupplied2,
            (_, 3) => EncryptMethod::XorBuffer,
            (_, 4) => EncryptMethod::Xor,
            _ => return None,
        })
    }

    /// The code of a method; `None` when this dialect has no code for it.
    pub fn code(self, method: EncryptMethod) -> Option<u8> {
        (0..=4).find(|&c| self.method(c) == Some(method))
    }

    /// Whether byte 11 of a response is pass 0 (rather than the compression flag):
    /// only in the 17-byte form, and only in the UdpLibrary and EQ dialects.
    pub fn pass_0_in_byte_11(self, v3_form: bool) -> bool {
        !v3_form && self != Self::V3
    }
}

/// Why a set of passes cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnsupportedPass {
    /// A SessionResponse byte that names no method of the dialect.
    #[error("unknown encryption method code {0}")]
    UnknownCode(u8),
    /// A user-supplied pass without an [`EncryptionPass`] to run it.
    #[error("{0:?} negotiated but no pass installed for it")]
    NoHook(EncryptMethod),
    /// A method the response cannot name (pass 0 in the v3 form, or a method the
    /// dialect has no code for).
    #[error("{0:?} cannot be negotiated in this handshake form")]
    Unexpressible(EncryptMethod),
}

/// What a pass knows about the datagram's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PassContext {
    /// The session id (UdpLibrary's connect code).
    pub session_id: u32,
    /// The CRC seed (UdpLibrary's encrypt code).
    pub crc_seed: u32,
}

impl PassContext {
    /// A context for a session.
    pub fn new(session_id: u32, crc_seed: u32) -> Self {
        Self {
            session_id,
            crc_seed,
        }
    }
}

/// A user-supplied pass refused a received body: the datagram is corrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the encryption pass could not decrypt the datagram")]
pub struct DecryptError;

/// Why a received datagram's passes could not be undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PassError {
    /// A user-supplied pass refused the body.
    #[error("user-supplied pass failed")]
    Decrypt,
    /// EQ's compression pass found a bad zlib stream, or one inflating past the cap.
    #[error("compression pass: {0}")]
    Inflate(InflateError),
    /// Longer than the XorBuffer key stream: longer than either side's datagrams.
    #[error("datagram longer than the XorBuffer key")]
    TooLong,
}

/// An application's encryption pass (UdpLibrary's "user supplied" methods 1 and 2),
/// installed on [`SessionParameters`](crate::SessionParameters) as an
/// `Arc<dyn EncryptionPass>`. One value serves every session that negotiates the
/// method, from any thread; per-session state can be keyed by the
/// [`PassContext`].
///
/// Both calls get the body of one datagram (what follows its header) and write the
/// result into `out`, which is empty on entry and reused between calls.
pub trait EncryptionPass: fmt::Debug + Send + Sync {
    /// The most bytes [`EncryptionPass::encrypt`] adds to a body (UdpLibrary's
    /// `userSuppliedEncryptExpansionBytes`); packets are sized to leave room.
    /// Default 0.
    fn expansion(&self) -> usize {
        0
    }

    /// Transforms an outgoing body. Must write at most `body.len() + expansion()`
    /// bytes.
    fn encrypt(&self, context: &PassContext, body: &[u8], out: &mut Vec<u8>);

    /// Undoes [`EncryptionPass::encrypt`] on a received body. An error ends the
    /// session with `CorruptPacket`, as UdpLibrary does.
    fn decrypt(
        &self,
        context: &PassContext,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), DecryptError>;
}

/// Reusable scratch buffers for running passes (one per [`crate::SessionIo`]).
#[derive(Debug, Default)]
pub struct PassBuffers {
    a: Vec<u8>,
    b: Vec<u8>,
}

impl PassBuffers {
    /// Empty buffers.
    pub fn new() -> Self {
        Self::default()
    }
}

/// How outgoing bodies are compressed by EQ's compression pass.
#[derive(Debug)]
pub struct Deflate<'a> {
    /// The deflater.
    pub zlib: &'a mut Compressor,
    /// Bodies shorter than this are sent as is (EQ tries bodies over 30 bytes).
    pub min_len: usize,
}

#[derive(Clone)]
enum Slot {
    None,
    Xor,
    XorBuffer(Arc<[u8]>),
    Compression,
    User(Arc<dyn EncryptionPass>),
}

/// The passes a session negotiated, ready to run.
#[derive(Clone)]
pub struct Passes {
    slots: [Slot; 2],
    methods: [EncryptMethod; 2],
    context: PassContext,
    expansion: usize,
}

impl fmt::Debug for Passes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Passes")
            .field("methods", &self.methods)
            .field("expansion", &self.expansion)
            .finish_non_exhaustive()
    }
}

impl Passes {
    /// The passes for `methods` (pass 0, pass 1), or `Ok(None)` when both are
    /// [`EncryptMethod::None`]. `user` holds the hooks for
    /// [`EncryptMethod::UserSupplied`] and [`EncryptMethod::UserSupplied2`].
    /// `max_datagram` is the longest datagram either side sends: the XorBuffer key
    /// stream covers it.
    pub fn new(
        methods: [EncryptMethod; 2],
        user: [Option<&Arc<dyn EncryptionPass>>; 2],
        context: PassContext,
        max_datagram: usize,
    ) -> Result<Option<Self>, UnsupportedPass> {
        if methods == [EncryptMethod::None; 2] {
            return Ok(None);
        }
        let mut pad: Option<Arc<[u8]>> = None;
        let mut expansion = 0;
        let mut slot = |method: EncryptMethod| -> Result<Slot, UnsupportedPass> {
            Ok(match method {
                EncryptMethod::None => Slot::None,
                EncryptMethod::Xor => Slot::Xor,
                EncryptMethod::XorBuffer => {
                    let key = pad.get_or_insert_with(|| {
                        // Whole words, as UdpLibrary sizes its buffer.
                        let len = max_datagram.clamp(64, 1 << 16).next_multiple_of(4);
                        xor_buffer_key(context.crc_seed, len).into()
                    });
                    Slot::XorBuffer(Arc::clone(key))
                }
                EncryptMethod::Compression => {
                    expansion += 1;
                    Slot::Compression
                }
                EncryptMethod::UserSupplied | EncryptMethod::UserSupplied2 => {
                    let index = usize::from(method == EncryptMethod::UserSupplied2);
                    let hook = user[index].ok_or(UnsupportedPass::NoHook(method))?;
                    expansion += hook.expansion();
                    Slot::User(Arc::clone(hook))
                }
            })
        };
        let slots = [slot(methods[0])?, slot(methods[1])?];
        Ok(Some(Self {
            slots,
            methods,
            context,
            expansion,
        }))
    }

    /// The methods, pass 0 first.
    pub fn methods(&self) -> [EncryptMethod; 2] {
        self.methods
    }

    /// The most bytes the passes add to a datagram.
    pub fn expansion(&self) -> usize {
        self.expansion
    }

    /// Whether one of the passes is EQ's compression.
    pub fn compresses(&self) -> bool {
        self.methods.contains(&EncryptMethod::Compression)
    }

    /// Runs the passes, pass 0 first, over the cooked datagram `buf[start..]` (no
    /// CRC yet), keeping its header. `deflate` is how EQ's compression pass
    /// compresses; without it that pass sends every body as is.
    pub fn encrypt(
        &self,
        buf: &mut Vec<u8>,
        start: usize,
        scratch: &mut PassBuffers,
        mut deflate: Option<Deflate<'_>>,
    ) {
        let ctx = &self.context;
        for slot in &self.slots {
            let body = start + header_len(&buf[start..]);
            match slot {
                Slot::None => {}
                Slot::Xor => xor_encrypt(ctx.crc_seed, &mut buf[body..]),
                Slot::XorBuffer(key) => xor_buffer_encrypt(ctx.crc_seed, key, &mut buf[body..]),
                Slot::Compression => eq_compress(buf, body, &mut scratch.a, deflate.as_mut()),
                Slot::User(hook) => {
                    scratch.a.clear();
                    scratch.a.extend_from_slice(&buf[body..]);
                    scratch.b.clear();
                    hook.encrypt(ctx, &scratch.a, &mut scratch.b);
                    buf.truncate(body);
                    buf.extend_from_slice(&scratch.b);
                }
            }
        }
    }

    /// Undoes the passes, pass 1 first, on the cooked packet in `packet` (header
    /// included, CRC removed). EQ's compression pass inflates at most
    /// `max_inflated` bytes.
    pub fn decrypt(
        &self,
        packet: &mut Vec<u8>,
        scratch: &mut PassBuffers,
        inflater: &mut Decompressor,
        max_inflated: usize,
    ) -> Result<(), PassError> {
        let ctx = &self.context;
        for slot in self.slots.iter().rev() {
            let body = header_len(packet);
            match slot {
                Slot::None => {}
                Slot::Xor => xor_decrypt(ctx.crc_seed, &mut packet[body..]),
                Slot::XorBuffer(key) => {
                    if packet.len() - body > key.len() {
                        return Err(PassError::TooLong);
                    }
                    xor_buffer_decrypt(ctx.crc_seed, key, &mut packet[body..]);
                }
                Slot::Compression => {
                    eq_decompress(packet, body, &mut scratch.a, inflater, max_inflated)?
                }
                Slot::User(hook) => {
                    scratch.a.clear();
                    hook.decrypt(ctx, &packet[body..], &mut scratch.a)
                        .map_err(|_| PassError::Decrypt)?;
                    packet.truncate(body);
                    packet.extend_from_slice(&scratch.a);
                }
            }
        }
        Ok(())
    }
}

/// The header a pass leaves alone: `00 op` for an internal packet, the first byte
/// of application data (never more than the packet).
pub fn header_len(cooked: &[u8]) -> usize {
    let header = if cooked.first() == Some(&0) { 2 } else { 1 };
    header.min(cooked.len())
}

fn word(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// The XorBuffer key word at word index `i` (zero past the end of the key).
fn key_word(key: &[u8], i: usize) -> u32 {
    key.get(i * 4..i * 4 + 4).map_or(0, word)
}

/// UdpLibrary's Xor (method 4; EQ's XOR): each little-endian word is XORed with
/// the previous ciphertext word (the seed for the first); the 0–3 trailing bytes
/// with the low byte of the last ciphertext word (of the seed when there is none).
pub fn xor_encrypt(seed: u32, data: &mut [u8]) {
    let mut key = seed;
    let mut words = data.chunks_exact_mut(4);
    for w in &mut words {
        key ^= word(w);
        w.copy_from_slice(&key.to_le_bytes());
    }
    let tail = key as u8;
    for b in words.into_remainder() {
        *b ^= tail;
    }
}

/// Undoes [`xor_encrypt`].
pub fn xor_decrypt(seed: u32, data: &mut [u8]) {
    let mut key = seed;
    let mut words = data.chunks_exact_mut(4);
    for w in &mut words {
        let cipher = word(w);
        w.copy_from_slice(&(cipher ^ key).to_le_bytes());
        key = cipher;
    }
    let tail = key as u8;
    for b in words.into_remainder() {
        *b ^= tail;
    }
}

/// UdpLibrary's XorBuffer (method 3): [`xor_encrypt`] with every word also XORed
/// with the key word at the same offset; trailing bytes are XORed with the key
/// byte at their offset only. `key` comes from [`xor_buffer_key`] and should be at
/// least as long as `data` (missing key bytes count as zero).
pub fn xor_buffer_encrypt(seed: u32, key: &[u8], data: &mut [u8]) {
    let mut chain = seed;
    let mut words = data.chunks_exact_mut(4);
    let mut i = 0;
    for w in &mut words {
        chain ^= word(w) ^ key_word(key, i);
        w.copy_from_slice(&chain.to_le_bytes());
        i += 1;
    }
    for (j, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= key.get(i * 4 + j).copied().unwrap_or(0);
    }
}

/// Undoes [`xor_buffer_encrypt`].
pub fn xor_buffer_decrypt(seed: u32, key: &[u8], data: &mut [u8]) {
    let mut chain = seed;
    let mut words = data.chunks_exact_mut(4);
    let mut i = 0;
    for w in &mut words {
        let cipher = word(w);
        w.copy_from_slice(&(cipher ^ chain ^ key_word(key, i)).to_le_bytes());
        chain = cipher;
        i += 1;
    }
    for (j, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= key.get(i * 4 + j).copied().unwrap_or(0);
    }
}

/// One step of UdpLibrary's random generator (Park–Miller with an added 123),
/// on 32-bit signed integers as the C++ original.
fn next_random(seed: i32) -> i32 {
    let hi = seed / 127_773;
    let lo = seed % 127_773;
    let t = lo
        .wrapping_mul(16_807)
        .wrapping_sub(hi.wrapping_mul(2_836))
        .wrapping_add(123);
    if t > 0 { t } else { t.wrapping_add(i32::MAX) }
}

/// The XorBuffer key stream for a CRC seed: `len` bytes, each the low byte of the
/// next value of UdpLibrary's generator seeded with the seed (as a signed 32-bit
/// integer). A longer key starts with a shorter one.
pub fn xor_buffer_key(seed: u32, len: usize) -> Vec<u8> {
    let mut state = seed as i32;
    (0..len)
        .map(|_| {
            state = next_random(state);
            state as u8
        })
        .collect()
}

/// EQ's compression pass on `buf[body..]`: a flag byte, then the body compressed
/// (`5A`) when that makes the datagram no longer than the body alone, else as is
/// (`A5`).
fn eq_compress(
    buf: &mut Vec<u8>,
    body: usize,
    tmp: &mut Vec<u8>,
    deflate: Option<&mut Deflate<'_>>,
) {
    tmp.clear();
    tmp.extend_from_slice(&buf[body..]);
    let len = tmp.len();
    if let Some(d) = deflate
        && len >= d.min_len.max(8)
    {
        // Flag plus at most `len - 1` bytes of zlib: never larger than the body.
        buf.resize(body + len, 0);
        buf[body] = EQ_COMPRESSED;
        if let Some(n) = d.zlib.compress(tmp, &mut buf[body + 1..]) {
            buf.truncate(body + 1 + n);
            return;
        }
    }
    buf.truncate(body);
    buf.push(EQ_UNCOMPRESSED);
    buf.extend_from_slice(tmp);
}

/// Undoes EQ's compression pass on `packet[body..]`. A body that starts with
/// neither flag is left as it is (as EQ does); a lone `A5` is an empty body.
fn eq_decompress(
    packet: &mut Vec<u8>,
    body: usize,
    tmp: &mut Vec<u8>,
    inflater: &mut Decompressor,
    max: usize,
) -> Result<(), PassError> {
    match packet.get(body..) {
        Some([EQ_UNCOMPRESSED, ..]) => {
            packet.remove(body);
        }
        Some([EQ_COMPRESSED, _, ..]) => {
            tmp.clear();
            tmp.extend_from_slice(&packet[..body]);
            inflater
                .inflate(&packet[body + 1..], tmp, max)
                .map_err(PassError::Inflate)?;
            std::mem::swap(packet, tmp);
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::test_support::hex;

    /// Xor written byte by byte: byte `k` of a word is XORed with byte `k` of the
    /// previous ciphertext word (of the seed, little-endian, for the first word);
    /// trailing bytes with byte 0 of it.
    fn reference_xor(seed: u32, plain: &[u8], xor_buffer: Option<&[u8]>) -> Vec<u8> {
        let mut prev = seed.to_le_bytes().to_vec();
        let mut out = Vec::new();
        let whole = plain.len() / 4 * 4;
        for (i, &p) in plain.iter().enumerate() {
            let pad = xor_buffer.map_or(0, |k| k[i]);
            let c = if i < whole {
                p ^ prev[i % 4] ^ pad
            } else if xor_buffer.is_some() {
                p ^ pad
            } else {
                p ^ prev[0]
            };
            out.push(c);
            if i < whole && i % 4 == 3 {
                prev = out[i - 3..=i].to_vec();
            }
        }
        out
    }

    /// The generator in 64-bit arithmetic, with division truncating toward zero.
    fn reference_key(seed: u32, len: usize) -> Vec<u8> {
        let mut s = i64::from(seed as i32);
        let mut out = Vec::new();
        for _ in 0..len {
            let hi = s / 127_773;
            let lo = s - hi * 127_773;
            let t = 16_807 * lo - 2_836 * hi + 123;
            s = if t > 0 { t } else { t + 2_147_483_647 };
            out.push((s & 0xFF) as u8);
        }
        out
    }

    #[test]
    fn xor_vectors() {
        let plain: Vec<u8> = (0..11).collect();
        let mut data = plain.clone();
        xor_encrypt(0x1234_5678, &mut data);
        assert_eq!(data, hex("78 57 36 11 7c 52 30 16 74 75 76"));
        assert_eq!(data, reference_xor(0x1234_5678, &plain, None));
        xor_decrypt(0x1234_5678, &mut data);
        assert_eq!(data, plain);
        // Seed 0: the first word passes unchanged.
        let mut data = plain.clone();
        xor_encrypt(0, &mut data);
        assert_eq!(data, hex("00 01 02 03 04 04 04 04 0c 0d 0e"));
        // Shorter than a word: every byte meets the seed's low byte.
        let mut short = [1, 2, 3];
        xor_encrypt(0xAABB_CC10, &mut short);
        assert_eq!(short, [0x11, 0x12, 0x13]);
    }

    #[test]
    fn xor_buffer_key_vectors() {
        assert_eq!(
            xor_buffer_key(0x1234_5678, 16),
            hex("19 61 8e ce 9b 8c 2d 89 44 5a b2 93 d9 b0 57 79")
        );
        assert_eq!(xor_buffer_key(1, 8), hex("22 a9 6c 5d 1c 19 5c 50"));
        // A negative seed (as UdpLibrary's signed encrypt code).
        assert_eq!(
            xor_buffer_key(0xFFFF_FFFF, 8),
            hex("d3 c6 b9 08 17 88 ab 53")
        );
        for seed in [0, 1, 127_773, 0x7FFF_FFFF, 0x8000_0000, 0xDEAD_BEEF] {
            assert_eq!(
                xor_buffer_key(seed, 64),
                reference_key(seed, 64),
                "{seed:#x}"
            );
            assert_eq!(xor_buffer_key(seed, 64)[..20], xor_buffer_key(seed, 20)[..]);
        }
    }

    #[test]
    fn xor_buffer_vectors() {
        let key = xor_buffer_key(0x1234_5678, 16);
        let plain: Vec<u8> = (0..11).collect();
        let mut data = plain.clone();
        xor_buffer_encrypt(0x1234_5678, &key, &mut data);
        assert_eq!(data, hex("61 36 b8 df fe bf 93 51 4c 53 b8"));
        assert_eq!(data, reference_xor(0x1234_5678, &plain, Some(&key)));
        xor_buffer_decrypt(0x1234_5678, &key, &mut data);
        assert_eq!(data, plain);
    }

    #[test]
    fn codes_of_each_dialect() {
        use EncryptMethod::*;
        for codes in [PassCodes::V3, PassCodes::UdpLibrary] {
            let methods: Vec<_> = (0..=5).map(|c| codes.method(c)).collect();
            assert_eq!(
                methods,
                [
                    Some(None),
                    Some(UserSupplied),
                    Some(UserSupplied2),
                    Some(XorBuffer),
                    Some(Xor),
                    Option::None
                ]
            );
            assert_eq!(codes.code(Compression), Option::None);
        }
        let eq: Vec<_> = (0..=5).map(|c| PassCodes::Eq.method(c)).collect();
        assert_eq!(
            eq,
            [
                Some(None),
                Some(Compression),
                Option::None,
                Option::None,
                Some(Xor),
                Option::None
            ]
        );
        assert_eq!(PassCodes::Eq.code(Xor), Some(4));
        assert_eq!(PassCodes::Eq.code(XorBuffer), Option::None);
        assert_eq!(PassCodes::UdpLibrary.code(XorBuffer), Some(3));
        assert!(PassCodes::UdpLibrary.pass_0_in_byte_11(false));
        assert!(!PassCodes::UdpLibrary.pass_0_in_byte_11(true));
        assert!(!PassCodes::V3.pass_0_in_byte_11(false));
    }

    fn passes(methods: [EncryptMethod; 2], seed: u32) -> Passes {
        Passes::new(methods, [None, None], PassContext::new(7, seed), 512)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn headers_are_left_alone() {
        let p = passes([EncryptMethod::Xor, EncryptMethod::None], 0x1234_5678);
        let mut buf = vec![0xEE, 0, 9, 0, 1, 2, 3];
        p.encrypt(&mut buf, 1, &mut PassBuffers::new(), None);
        assert_eq!(&buf[..3], [0xEE, 0, 9]);
        let mut app = vec![0x42, 1, 2, 3, 4];
        p.encrypt(&mut app, 0, &mut PassBuffers::new(), None);
        assert_eq!(app[0], 0x42);
        assert_eq!(
            app[1..],
            reference_xor(0x1234_5678, &[1, 2, 3, 4], None)[..]
        );
    }

    #[test]
    fn eq_compression_flags() {
        let p = passes([EncryptMethod::Compression, EncryptMethod::None], 0);
        assert_eq!(p.expansion(), 1);
        let mut scratch = PassBuffers::new();
        let mut zlib = Compressor::new(1);
        // Short bodies go as is behind A5.
        let mut buf = hex("00 09 00 01 61 62 63");
        let deflate = Deflate {
            zlib: &mut zlib,
            min_len: 31,
        };
        p.encrypt(&mut buf, 0, &mut scratch, Some(deflate));
        assert_eq!(buf, hex("00 09 a5 00 01 61 62 63"));
        // A heartbeat's empty body becomes a lone flag.
        let mut hb = hex("00 06");
        p.encrypt(&mut hb, 0, &mut scratch, None);
        assert_eq!(hb, hex("00 06 a5"));
        // Long compressible bodies are compressed behind 5A.
        let mut long = hex("00 09 00 01");
        long.extend_from_slice(&[b'a'; 40]);
        let plain = long.clone();
        let deflate = Deflate {
            zlib: &mut zlib,
            min_len: 31,
        };
        p.encrypt(&mut long, 0, &mut scratch, Some(deflate));
        assert_eq!(long[..3], [0, 9, EQ_COMPRESSED]);
        assert!(long.len() < plain.len());
        let mut inflater = Decompressor::new();
        p.decrypt(&mut long, &mut scratch, &mut inflater, 4096)
            .unwrap();
        assert_eq!(long, plain);
        // Incompressible bodies go as is even when long enough.
        let mut noise = hex("00 09 00 02");
        noise.extend((0..64u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8));
        let plain = noise.clone();
        let deflate = Deflate {
            zlib: &mut zlib,
            min_len: 31,
        };
        p.encrypt(&mut noise, 0, &mut scratch, Some(deflate));
        assert_eq!(noise[2], EQ_UNCOMPRESSED);
        assert_eq!(noise[3..], plain[2..]);
    }

    #[test]
    fn eq_compression_receive_vectors() {
        let p = passes([EncryptMethod::Compression, EncryptMethod::None], 0);
        let mut scratch = PassBuffers::new();
        let mut inflater = Decompressor::new();
        let mut open = |bytes: &str| {
            let mut packet = hex(bytes);
            p.decrypt(&mut packet, &mut scratch, &mut inflater, 4096)
                .map(|()| packet)
        };
        // ReliableData seq 1, 40 × 'a', compressed by C zlib at level 1.
        let mut expected = hex("00 09 00 01");
        expected.extend_from_slice(&[b'a'; 40]);
        assert_eq!(
            open("00 09 5a 78 01 63 60 4c 24 12 00 00 37 16 0f 2a"),
            Ok(expected)
        );
        assert_eq!(open("00 09 a5 00 01 68 69"), Ok(hex("00 09 00 01 68 69")));
        assert_eq!(open("00 06 a5"), Ok(hex("00 06")));
        // Application data: the flag follows the first byte.
        assert_eq!(open("42 a5 43"), Ok(hex("42 43")));
        // Any other flag leaves the packet untouched, as EQ does.
        assert_eq!(open("00 09 00 01 68 69"), Ok(hex("00 09 00 01 68 69")));
        assert_eq!(open("00 06 5a"), Ok(hex("00 06 5a")));
        assert!(matches!(
            open("00 09 5a 01 02 03"),
            Err(PassError::Inflate(InflateError::Corrupt))
        ));
    }

    #[test]
    fn user_supplied_passes_need_a_hook() {
        assert_eq!(
            Passes::new(
                [EncryptMethod::UserSupplied, EncryptMethod::None],
                [None, None],
                PassContext::new(1, 2),
                512
            )
            .unwrap_err(),
            UnsupportedPass::NoHook(EncryptMethod::UserSupplied)
        );
        assert!(
            Passes::new(
                [EncryptMethod::None; 2],
                [None, None],
                PassContext::new(1, 2),
                512
            )
            .unwrap()
            .is_none()
        );
    }

    /// Adds a one-byte checksum and negates every byte.
    #[derive(Debug)]
    struct Negate;

    impl EncryptionPass for Negate {
        fn expansion(&self) -> usize {
            1
        }
        fn encrypt(&self, ctx: &PassContext, body: &[u8], out: &mut Vec<u8>) {
            out.extend(body.iter().map(|b| !b));
            out.push(body.iter().fold(ctx.session_id as u8, |a, b| a ^ b));
        }
        fn decrypt(
            &self,
            ctx: &PassContext,
            body: &[u8],
            out: &mut Vec<u8>,
        ) -> Result<(), DecryptError> {
            let (&sum, body) = body.split_last().ok_or(DecryptError)?;
            out.extend(body.iter().map(|b| !b));
            let want = out.iter().fold(ctx.session_id as u8, |a, b| a ^ b);
            if want == sum {
                Ok(())
            } else {
                Err(DecryptError)
            }
        }
    }

    #[test]
    fn user_supplied_pass_runs_in_order() {
        let hook: Arc<dyn EncryptionPass> = Arc::new(Negate);
        let p = Passes::new(
            [EncryptMethod::UserSupplied2, EncryptMethod::Xor],
            [None, Some(&hook)],
            PassContext::new(5, 0xCAFE_F00D),
            512,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.expansion(), 1);
        let plain = hex("00 09 00 03 10 20 30 40 50");
        let mut buf = plain.clone();
        let mut scratch = PassBuffers::new();
        p.encrypt(&mut buf, 0, &mut scratch, None);
        // Pass 0 (negate + sum), then pass 1 (Xor) over its output.
        let mut negated: Vec<u8> = plain[2..].iter().map(|b| !b).collect();
        negated.push(plain[2..].iter().fold(5, |a, b| a ^ b));
        assert_eq!(buf[2..], reference_xor(0xCAFE_F00D, &negated, None)[..]);
        let mut inflater = Decompressor::new();
        p.decrypt(&mut buf, &mut scratch, &mut inflater, 512)
            .unwrap();
        assert_eq!(buf, plain);
        // A corrupted body is refused by the hook.
        let mut bad = plain.clone();
        p.encrypt(&mut bad, 0, &mut scratch, None);
        // (In the last word: Xor carries a flip into the next word, where the
        // XOR checksum would cancel it.)
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        assert_eq!(
            p.decrypt(&mut bad, &mut scratch, &mut inflater, 512),
            Err(PassError::Decrypt)
        );
    }

    #[test]
    fn xor_buffer_refuses_datagrams_longer_than_its_key() {
        let p = passes([EncryptMethod::XorBuffer, EncryptMethod::None], 9);
        let mut long = vec![0u8; 2 + 600];
        assert_eq!(
            p.decrypt(
                &mut long,
                &mut PassBuffers::new(),
                &mut Decompressor::new(),
                512
            ),
            Err(PassError::TooLong)
        );
    }

    proptest! {
        #[test]
        fn xor_round_trips(seed in any::<u32>(), data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut d = data.clone();
            xor_encrypt(seed, &mut d);
            prop_assert_eq!(&d, &reference_xor(seed, &data, None));
            xor_decrypt(seed, &mut d);
            prop_assert_eq!(d, data);
        }

        #[test]
        fn xor_buffer_round_trips(seed in any::<u32>(), data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let key = xor_buffer_key(seed, 64);
            let mut d = data.clone();
            xor_buffer_encrypt(seed, &key, &mut d);
            prop_assert_eq!(&d, &reference_xor(seed, &data, Some(&key)));
            xor_buffer_decrypt(seed, &key, &mut d);
            prop_assert_eq!(d, data);
        }

        #[test]
        fn passes_round_trip(
            seed in any::<u32>(),
            m0 in 0u8..5,
            m1 in 0u8..5,
            app in any::<bool>(),
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let method = |c| [
                EncryptMethod::None,
                EncryptMethod::Compression,
                EncryptMethod::UserSupplied,
                EncryptMethod::XorBuffer,
                EncryptMethod::Xor,
            ][usize::from(c)];
            let hook: Arc<dyn EncryptionPass> = Arc::new(Negate);
            let Some(p) = Passes::new(
                [method(m0), method(m1)],
                [Some(&hook), None],
                PassContext::new(3, seed),
                512,
            ).unwrap() else {
                return Ok(());
            };
            let mut cooked = if app { vec![0x42] } else { vec![0, 9] };
            cooked.extend_from_slice(&body);
            let mut buf = vec![0xAB];
            buf.extend_from_slice(&cooked);
            let mut scratch = PassBuffers::new();
            let mut zlib = Compressor::new(1);
            p.encrypt(&mut buf, 1, &mut scratch, Some(Deflate { zlib: &mut zlib, min_len: 31 }));
            prop_assert_eq!(buf[0], 0xAB);
            prop_assert!(buf.len() - 1 <= cooked.len() + p.expansion());
            let mut packet = buf[1..].to_vec();
            p.decrypt(&mut packet, &mut scratch, &mut Decompressor::new(), 4096).unwrap();
            prop_assert_eq!(packet, cooked);
        }
    }
}

//! The seeded CRC-32 that trails every contextual datagram.
//!
//! The SOE CRC is the ordinary reflected CRC-32 (polynomial `0xEDB88320`, as in zlib)
//! computed over the seed's four bytes in little-endian order followed by the data.
//! Only the low `crc_length` (0..=4) bytes of the result go on the wire, most
//! significant first.
//!
//! The seed prefix is folded once into a [`crc32fast::Hasher`] state, so checking a
//! datagram costs one hasher clone plus the data pass.

/// A CRC-32 pre-loaded with a session's seed.
#[derive(Clone)]
pub struct Crc32 {
    seeded: crc32fast::Hasher,
}

impl std::fmt::Debug for Crc32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crc32").finish_non_exhaustive()
    }
}

impl Crc32 {
    /// Pre-loads the seed.
    pub fn new(seed: u32) -> Self {
        let mut seeded = crc32fast::Hasher::new();
        seeded.update(&seed.to_le_bytes());
        Self { seeded }
    }

    /// The full 32-bit CRC of `data` under this seed.
    pub fn checksum(&self, data: &[u8]) -> u32 {
        let mut hasher = self.seeded.clone();
        hasher.update(data);
        hasher.finalize()
    }

    /// Writes the low `crc_length` bytes of the CRC of `buf[..len]` at `buf[len..]`
    /// and returns the new length.
    ///
    /// # Panics
    /// Panics if `crc_length > 4` or `buf` has fewer than `len + crc_length` bytes.
    pub fn append(&self, buf: &mut [u8], len: usize, crc_length: u8) -> usize {
        let n = usize::from(crc_length);
        assert!(n <= 4, "crc length must be 0..=4");
        if n == 0 {
            return len;
        }
        let crc = self.checksum(&buf[..len]);
        for (to, from) in buf[len..len + n].iter_mut().zip(wire_bytes(crc, n)) {
            *to = from;
        }
        len + n
    }

    /// Appends the low `crc_length` bytes of the CRC of `buf[from..]` to `buf`.
    ///
    /// # Panics
    /// Panics if `crc_length > 4` or `from > buf.len()`.
    #[inline]
    pub fn push(&self, buf: &mut Vec<u8>, from: usize, crc_length: u8) {
        let n = usize::from(crc_length);
        assert!(n <= 4, "crc length must be 0..=4");
        if n > 0 {
            let crc = self.checksum(&buf[from..]);
            // At most four bytes, pushed one by one: no call to copy an unknown
            // length.
            for b in wire_bytes(crc, n) {
                buf.push(b);
            }
        }
    }

    /// Checks the trailing `crc_length` bytes of `datagram`. Returns the datagram
    /// without its CRC when it matches, `None` otherwise (including when the datagram
    /// is shorter than the CRC).
    pub fn verify<'a>(&self, datagram: &'a [u8], crc_length: u8) -> Option<&'a [u8]> {
        let n = usize::from(crc_length).min(4);
        let split = datagram.len().checked_sub(n)?;
        let (body, trailer) = datagram.split_at(split);
        if n == 0 || crc_matches(self.checksum(body), trailer) {
            Some(body)
        } else {
            None
        }
    }
}

/// The low `n` bytes of `crc`, most significant first: its form on the wire.
#[inline]
fn wire_bytes(crc: u32, n: usize) -> impl Iterator<Item = u8> {
    crc.to_be_bytes().into_iter().skip(4 - n)
}

/// Whether the low `trailer.len()` bytes of `crc` (big-endian) equal `trailer`.
#[inline]
pub fn crc_matches(crc: u32, trailer: &[u8]) -> bool {
    let n = trailer.len().min(4);
    wire_bytes(crc, n).eq(trailer[..n].iter().copied())
}

/// One-shot seeded CRC: `crc32(seed.to_le_bytes() ++ data)`.
pub fn soe_crc32(seed: u32, data: &[u8]) -> u32 {
    Crc32::new(seed).checksum(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::hex;

    /// The classic table-driven formulation with the seed fed through the register
    /// first, written independently of crc32fast to cross-check it.
    fn reference_crc(seed: u32, data: &[u8]) -> u32 {
        let mut table = [0u32; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        let mut reg = 0xFFFF_FFFFu32;
        for &b in seed.to_le_bytes().iter().chain(data) {
            reg = (reg >> 8) ^ table[((reg ^ u32::from(b)) & 0xFF) as usize];
        }
        !reg
    }

    #[test]
    fn push_appends_what_append_writes_in_place() {
        let crc = Crc32::new(0xDEAD_BEEF);
        let data = hex("00 09 00 01 61 62 63");
        for n in 0..=4u8 {
            let mut in_place = data.clone();
            in_place.resize(data.len() + usize::from(n), 0);
            assert_eq!(crc.append(&mut in_place, data.len(), n), in_place.len());
            let mut pushed = hex("AA BB");
            pushed.extend_from_slice(&data);
            crc.push(&mut pushed, 2, n);
            assert_eq!(pushed[2..], in_place[..], "crc length {n}");
            assert!(crc.verify(&in_place, n).is_some());
        }
    }

    // Vectors: tests/vectors/v01_crc.txt.
    #[test]
    fn v1_ps2_master_fragment() {
        // Vector v01_crc_ps2_master_fragment: a 510-byte ReliableDataFragment, seed
        // 1858192374.
        let data = include_str!("../../tests/vectors/v1_fragment.hex");
        let bytes = hex(data);
        assert_eq!(bytes.len(), 510);
        assert_eq!(soe_crc32(1_858_192_374, &bytes), 0xE80F_CCAB);
        assert_eq!(reference_crc(1_858_192_374, &bytes), 0xE80F_CCAB);
    }

    // Vectors: tests/vectors/v02_crc.txt.
    #[test]
    fn v2_short_input_seed_zero() {
        assert_eq!(soe_crc32(0, &hex("00 15 00 00 02")), 0x6FC0_D22F);
    }

    // Vectors: tests/vectors/v03_crc_and_rc4_payload.txt.
    #[test]
    fn v3_append_two_bytes() {
        let mut buf =
            hex("00 09 00 00 00 a9 b7 b9 43 f1 40 a4 05 8f 13 23 57 15 a3 cd 1a 53 18 d4 00 00");
        let n = Crc32::new(0).append(&mut buf, 24, 2);
        assert_eq!(n, 26);
        assert_eq!(&buf[24..], &[0xdc, 0x51]);
    }

    // Vectors: tests/vectors/v04_crc_lengths.txt.
    #[test]
    fn v4_every_crc_length() {
        let data = hex("1b 19 76 54");
        assert_eq!(soe_crc32(5, &data), 0xAC4E_D2F1);
        let expected: [&[u8]; 5] = [
            &[],
            &[0xf1],
            &[0xd2, 0xf1],
            &[0x4e, 0xd2, 0xf1],
            &[0xac, 0x4e, 0xd2, 0xf1],
        ];
        for (len, tail) in expected.iter().enumerate() {
            let mut buf = [0u8; 8];
            buf[..4].copy_from_slice(&data);
            let n = Crc32::new(5).append(&mut buf, 4, len as u8);
            assert_eq!(&buf[4..n], *tail);
            assert_eq!(Crc32::new(5).verify(&buf[..n], len as u8), Some(&data[..]));
        }
        // AcknowledgeAll(10) under seed 5 and the wrong-seed variant.
        let ack = hex("00 15 00 0a");
        assert_eq!(soe_crc32(5, &ack), 0xD7FA_5988);
        assert_eq!(soe_crc32(0, &ack), 0x9F1A_57EC);
        let good = hex("00 15 00 0a 59 88");
        let bad = hex("00 15 00 0a 57 ec");
        assert!(Crc32::new(5).verify(&good, 2).is_some());
        assert!(Crc32::new(5).verify(&bad, 2).is_none());
        // Vectors v04_crc_ack_seed_10 and v04_crc_ack_seed_20: Acknowledge(10) under
        // seeds 10 and 20.
        let ack = hex("00 11 00 0a");
        assert_eq!(soe_crc32(10, &ack), 0x09D3_E3F8);
        assert_eq!(soe_crc32(20, &ack), 0x60E2_C0E1);
    }

    // Vectors: tests/vectors/v09_acks.txt, v10_reliable_data.txt, v25_ordered.txt.
    #[test]
    fn v9_v10_v25_datagram_crcs() {
        let crc = Crc32::new(0);
        assert!(crc.verify(&hex("00 15 00 01 8e 64"), 2).is_some());
        assert!(crc.verify(&hex("00 11 00 01 26 b8"), 2).is_some());
        let v10 = hex(
            "00 09 00 04 fc 64 28 d1 44 f7 15 5d 12 ac 5b 44 91 35 18 9b 02 71 b3 1c d9 21 50 4c 09 eb 57 62 e9 eb dc 7c 6b 3d 3e 84 75 92 cc 5e 3c",
        );
        assert_eq!(crc.verify(&v10, 2).map(<[u8]>::len), Some(43));
        assert_eq!(soe_crc32(0, &hex("00 1b 93 7f 01 00")), 0x1DF9_9E83);
        assert!(crc.verify(&hex("00 11 00 01 8e 64"), 2).is_none());
        let mut broken = v10.clone();
        *broken.last_mut().unwrap() = 0x3d;
        assert!(crc.verify(&broken, 2).is_none());
    }

    #[test]
    fn verify_rejects_short_input() {
        assert!(Crc32::new(0).verify(&[0x00], 2).is_none());
        assert_eq!(Crc32::new(0).verify(&[], 0), Some(&[][..]));
    }

    proptest::proptest! {
        #[test]
        fn matches_the_table_formulation(seed: u32, data: Vec<u8>) {
            proptest::prop_assert_eq!(soe_crc32(seed, &data), reference_crc(seed, &data));
        }
    }
}

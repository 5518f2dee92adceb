//! RC4, the stream cipher v3 games apply to reliable application data.
//!
//! One [`Rc4KeyState`] is one continuous keystream: it is never reset between
//! packets. A session keeps an independent clone of the initial state per reliable
//! channel and direction, so loss on one channel never desynchronises another.

/// An RC4 keystream position: the permutation and its two indices.
#[derive(Clone)]
pub struct Rc4KeyState {
    s: [u8; 256],
    i: u8,
    j: u8,
}

impl Rc4KeyState {
    /// Runs the key schedule.
    ///
    /// # Panics
    /// Panics if `key` is empty or longer than 256 bytes; use [`Rc4KeyState::try_new`]
    /// to get an error instead.
    pub fn new(key: &[u8]) -> Self {
        Self::try_new(key).expect("RC4 key must be 1..=256 bytes")
    }

    /// Runs the key schedule, or returns `None` if `key` is not 1..=256 bytes long.
    pub fn try_new(key: &[u8]) -> Option<Self> {
        if key.is_empty() || key.len() > 256 {
            return None;
        }
        let mut s = [0u8; 256];
        for (value, slot) in s.iter_mut().enumerate() {
            *slot = value as u8;
        }
        let mut j = 0u8;
        for i in 0..256 {
            j = j.wrapping_add(s[i]).wrapping_add(key[i % key.len()]);
            s.swap(i, usize::from(j));
        }
        Some(Self { s, i: 0, j: 0 })
    }

    #[inline]
    fn next_byte(&mut self) -> u8 {
        self.i = self.i.wrapping_add(1);
        let si = self.s[usize::from(self.i)];
        self.j = self.j.wrapping_add(si);
        let sj = self.s[usize::from(self.j)];
        self.s[usize::from(self.i)] = sj;
        self.s[usize::from(self.j)] = si;
        self.s[usize::from(si.wrapping_add(sj))]
    }

    /// XORs `buf` with the next `buf.len()` keystream bytes (encrypts or decrypts).
    pub fn apply(&mut self, buf: &mut [u8]) {
        for byte in buf {
            *byte ^= self.next_byte();
        }
    }

    /// Alias of [`Rc4KeyState::apply`], named as in `soe-protocol`.
    pub fn transform_in_place(&mut self, buf: &mut [u8]) {
        self.apply(buf);
    }

    /// Discards `n` keystream bytes.
    pub fn advance(&mut self, n: usize) {
        for _ in 0..n {
            self.next_byte();
        }
    }
}

impl std::fmt::Debug for Rc4KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Rc4KeyState").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encrypt(key: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        Rc4KeyState::new(key).apply(&mut buf);
        buf
    }

    // Vectors: tests/vectors/v21_rc4.txt.
    #[test]
    fn v21_wikipedia_vectors() {
        assert_eq!(
            encrypt(b"Key", b"Plaintext"),
            [0xbb, 0xf3, 0x16, 0xe8, 0xd9, 0x40, 0xaf, 0x0a, 0xd3]
        );
        assert_eq!(encrypt(b"Wiki", b"pedia"), [0x10, 0x21, 0xbf, 0x04, 0x20]);
        assert_eq!(
            encrypt(b"Secret", b"Attack at dawn"),
            [
                0x45, 0xa0, 0x1f, 0x64, 0x5f, 0xc3, 0x5b, 0x38, 0x35, 0x52, 0x54, 0x4b, 0x9b, 0xf5
            ]
        );
    }

    // Vectors: tests/vectors/v21_rc4.txt.
    #[test]
    fn v21_stream_continuity_and_advance() {
        let plain = b"Attack at dawn";
        let whole = encrypt(b"Secret", plain);
        let mut state = Rc4KeyState::new(b"Secret");
        let mut split = plain.to_vec();
        let (a, b) = split.split_at_mut(5);
        state.apply(a);
        state.apply(b);
        assert_eq!(split, whole);

        let mut state = Rc4KeyState::new(b"Secret");
        state.advance(2);
        let mut third = [plain[2]];
        state.apply(&mut third);
        assert_eq!(third[0], whole[2]);
    }

    // Vectors: tests/vectors/v22_rc4_login_key.txt.
    #[test]
    fn v22_h1z1_login_key() {
        let key = [
            0x17, 0xbd, 0x08, 0x6b, 0x1b, 0x94, 0xf0, 0x2f, 0xf0, 0xec, 0x53, 0xd7, 0x63, 0x58,
            0x9b, 0x5f,
        ];
        let state = Rc4KeyState::new(&key);
        assert_eq!(&state.s[..4], &[0x17, 0xd5, 0x49, 0x4d]);
        assert_eq!(&state.s[252..], &[0x31, 0x07, 0xd2, 0x7d]);
        let plain = [
            0x05, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x15, 0x00, 0x00, 0x00, 0x02,
            0x01, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x04, 0x00,
            0x00, 0x00, 0x74, 0x65, 0x73, 0x74,
        ];
        let cipher = [
            0xae, 0xb7, 0xb8, 0x43, 0xf1, 0x40, 0xa5, 0x04, 0x8c, 0x06, 0x23, 0x57, 0x66, 0xce,
            0xa9, 0x1a, 0x53, 0x18, 0xd7, 0xb7, 0x29, 0x74, 0xbe, 0xf9, 0x8f, 0xcd, 0x0e, 0xa9,
            0xec, 0xed, 0xbe, 0x81, 0x51, 0xd6,
        ];
        assert_eq!(encrypt(&key, &plain), cipher);
    }

    // Vectors: tests/vectors/v23_rc4_zero_prefix.txt.
    #[test]
    fn v23_keystream_of_sp_test_key() {
        let ks = encrypt(&[1, 2, 3, 4, 5], &[0u8; 16]);
        assert_eq!(
            ks,
            [
                0xb2, 0x39, 0x63, 0x05, 0xf0, 0x3d, 0xc0, 0x27, 0xcc, 0xc3, 0x52, 0x4a, 0x0a, 0x11,
                0x18, 0xa8
            ]
        );
    }

    #[test]
    fn rejects_bad_key_lengths() {
        assert!(Rc4KeyState::try_new(&[]).is_none());
        assert!(Rc4KeyState::try_new(&[0; 257]).is_none());
        assert!(Rc4KeyState::try_new(&[0; 256]).is_some());
    }
}

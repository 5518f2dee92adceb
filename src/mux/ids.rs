//! Random session ids and CRC seeds.
//!
//! By default they come from the OS CSPRNG (`getrandom`), drawn 512 bytes at a time
//! so a connection storm does not cost a syscall per session. Remapping trusts the
//! pair (session id, CRC seed) as proof of ownership, so they must not be
//! predictable; a fixed seed (SplitMix64) exists for deterministic tests only.

use std::hash::{BuildHasher, Hasher};

const POOL: usize = 512;

#[derive(Debug)]
pub(crate) enum IdSource {
    Os { pool: Box<[u8; POOL]>, used: usize },
    Seeded(u64),
}

impl IdSource {
    pub(crate) fn new(seed: Option<u64>) -> Self {
        match seed {
            Some(seed) => Self::Seeded(seed),
            None => Self::Os {
                pool: Box::new([0; POOL]),
                used: POOL,
            },
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        match self {
            Self::Seeded(state) => {
                *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = *state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            }
            Self::Os { pool, used } => {
                if *used + 8 > POOL {
                    if getrandom::getrandom(&mut pool[..]).is_err() {
                        // Practically unreachable on Linux; fall back to the
                        // randomly keyed std hasher (itself seeded from the OS).
                        for chunk in pool.chunks_mut(8) {
                            let mut h =
                                std::collections::hash_map::RandomState::new().build_hasher();
                            h.write_usize(chunk.as_ptr() as usize);
                            chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
                        }
                    }
                    *used = 0;
                }
                let mut raw = [0u8; 8];
                raw.copy_from_slice(&pool[*used..*used + 8]);
                *used += 8;
                u64::from_le_bytes(raw)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_deterministic_and_os_is_not() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut s = IdSource::new(Some(7));
                move |_| s.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut s = IdSource::new(Some(7));
                move |_| s.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        let mut os1 = IdSource::new(None);
        let mut os2 = IdSource::new(None);
        let x: Vec<u64> = (0..200).map(|_| os1.next_u64()).collect();
        let y: Vec<u64> = (0..200).map(|_| os2.next_u64()).collect();
        assert_ne!(x, y);
        let distinct: std::collections::HashSet<_> = x.iter().collect();
        assert_eq!(distinct.len(), 200);
    }
}

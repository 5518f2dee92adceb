//! Which shard owns a remote address, in user space and in the kernel.
//!
//! Ownership is a pure function of the remote address, [`shard_of`]. The kernel is
//! given the same function as a classic-BPF program attached to the `SO_REUSEPORT`
//! group (`SO_ATTACH_REUSEPORT_CBPF`): it reads the source address's last four bytes
//! and the source port from the packet, mixes them, and returns the socket index.
//! Using the last four address bytes makes an IPv4 datagram and its v4-mapped IPv6
//! form land on the same shard.
//!
//! Where the program returns an out-of-range index (IPv4 options, IPv6 extension
//! headers) the kernel falls back to its own hash, and where it cannot be attached
//! at all every socket gets a random share; a shard that receives a datagram it does
//! not own forwards it to the owner. Correctness never depends on the kernel.

use std::net::SocketAddr;

/// The shard a datagram from `from` goes to: the owner of `from`, except for a
/// RemapConnection (`00 1E`), which goes to the shard its CRC seed names: the one
/// that created the session, whatever address the peer now has. A session that
/// moved since (to the shard that owns its peer's new address) is looked for on
/// the following shards in turn ([`is_remap`]).
pub(crate) fn route(from: &SocketAddr, datagram: &[u8], shards: usize) -> usize {
    match datagram {
        [0, 0x1E, _, _, _, _, s0, s1, s2, s3] if shards > 1 => {
            debug_assert!(is_remap(datagram));
            crate::mux::seed_lane(u32::from_be_bytes([*s0, *s1, *s2, *s3]), shards as u32) as usize
        }
        _ => shard_of(from, shards),
    }
}

/// Whether `datagram` is a RemapConnection as [`route`] steers it.
pub(crate) fn is_remap(datagram: &[u8]) -> bool {
    matches!(datagram, [0, 0x1E, _, _, _, _, _, _, _, _])
}

/// The multiplier of the mixing step (2^32 / φ).
const MIX: u32 = 0x9E37_79B1;

/// The shard (0..`shards`) that owns sessions with `remote`.
///
/// `(low32(ip) ^ port) * 0x9E3779B1 >> 16 % shards`, where `low32` is the last four
/// bytes of the address, big-endian.
pub fn shard_of(remote: &SocketAddr, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let low = match remote {
        SocketAddr::V4(a) => u32::from_be_bytes(a.ip().octets()),
        SocketAddr::V6(a) => {
            let o = a.ip().octets();
            u32::from_be_bytes([o[12], o[13], o[14], o[15]])
        }
    };
    let mixed = (low ^ u32::from(remote.port())).wrapping_mul(MIX) >> 16;
    (mixed % shards as u32) as usize
}

/// One classic-BPF instruction: the kernel's `struct sock_filter`.
pub(crate) type BpfInsn = libc::sock_filter;

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> BpfInsn {
    BpfInsn { code, jt, jf, k }
}

// Classic BPF opcodes (linux/filter.h): class | size | mode | source.
const fn op(bits: u32) -> u16 {
    bits as u16
}
const LD_B_ABS: u16 = op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS);
const LD_H_ABS: u16 = op(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS);
const LD_W_ABS: u16 = op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS);
const ALU_AND_K: u16 = op(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K);
const ALU_RSH_K: u16 = op(libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K);
const ALU_MUL_K: u16 = op(libc::BPF_ALU | libc::BPF_MUL | libc::BPF_K);
const ALU_MOD_K: u16 = op(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K);
const ALU_XOR_X: u16 = op(libc::BPF_ALU | libc::BPF_XOR | libc::BPF_X);
const JMP_JA: u16 = op(libc::BPF_JMP | libc::BPF_JA);
const JMP_JEQ_K: u16 = op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K);
const RET_K: u16 = op(libc::BPF_RET | libc::BPF_K);
const RET_A: u16 = op(libc::BPF_RET | libc::BPF_A);
const MISC_TAX: u16 = op(libc::BPF_MISC | libc::BPF_TAX);

/// `SKF_NET_OFF`: offsets relative to the network header.
const NET: u32 = libc::SKF_NET_OFF as u32;
/// Returned where the packet shape is unexpected: out of range, so the kernel uses
/// its own hash (and the receiving shard forwards).
const FALLBACK: u32 = u32::MAX;

/// The steering program for `shards` sockets, computing [`shard_of`] in the kernel.
pub(crate) fn steering_program(shards: usize) -> Vec<BpfInsn> {
    let n = shards.max(1) as u32;
    // IPv4: version nibble 4, header length exactly 20 bytes (no options).
    let v4 = [
        insn(LD_B_ABS, 0, 0, NET),
        insn(ALU_AND_K, 0, 0, 0x0f),
        insn(JMP_JEQ_K, 1, 0, 5),
        insn(RET_K, 0, 0, FALLBACK),
        insn(LD_W_ABS, 0, 0, NET.wrapping_add(12)),
        insn(MISC_TAX, 0, 0, 0),
        insn(LD_H_ABS, 0, 0, NET.wrapping_add(20)),
    ];
    // IPv6: next header must be UDP (17), i.e. no extension headers.
    let v6 = [
        insn(LD_B_ABS, 0, 0, NET.wrapping_add(6)),
        insn(JMP_JEQ_K, 1, 0, 17),
        insn(RET_K, 0, 0, FALLBACK),
        insn(LD_W_ABS, 0, 0, NET.wrapping_add(20)),
        insn(MISC_TAX, 0, 0, 0),
        insn(LD_H_ABS, 0, 0, NET.wrapping_add(40)),
    ];
    let tail = [
        insn(ALU_XOR_X, 0, 0, 0),
        insn(ALU_MUL_K, 0, 0, MIX),
        insn(ALU_RSH_K, 0, 0, 16),
        insn(ALU_MOD_K, 0, 0, n),
        insn(RET_A, 0, 0, 0),
    ];
    let mut program = vec![
        insn(LD_B_ABS, 0, 0, NET),
        insn(ALU_RSH_K, 0, 0, 4),
        // Version 4 falls through into the v4 block; anything else skips it and
        // the jump that follows it.
        insn(JMP_JEQ_K, 0, (v4.len() + 1) as u8, 4),
    ];
    program.extend_from_slice(&v4);
    program.push(insn(JMP_JA, 0, 0, v6.len() as u32));
    program.extend_from_slice(&v6);
    program.extend_from_slice(&tail);
    program
}

/// Runs a steering program over a raw IP packet (network header first), as the
/// kernel would: the shard index, or `None` for the fallback. Test helper and
/// documentation of what the program does.
#[cfg(test)]
pub(crate) fn run_program(program: &[BpfInsn], packet: &[u8]) -> Option<usize> {
    let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
    let load = |at: u32, size: usize| -> Option<u32> {
        let at = at.wrapping_sub(NET) as usize;
        let bytes = packet.get(at..at + size)?;
        Some(bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
    };
    loop {
        let i = program.get(pc)?;
        pc += 1;
        match i.code {
            LD_B_ABS => a = load(i.k, 1)?,
            LD_H_ABS => a = load(i.k, 2)?,
            LD_W_ABS => a = load(i.k, 4)?,
            ALU_AND_K => a &= i.k,
            ALU_RSH_K => a >>= i.k,
            ALU_MUL_K => a = a.wrapping_mul(i.k),
            ALU_MOD_K => a %= i.k,
            ALU_XOR_X => a ^= x,
            MISC_TAX => x = a,
            JMP_JA => pc += i.k as usize,
            JMP_JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
            RET_K => return (i.k != FALLBACK).then_some(i.k as usize),
            RET_A => return Some(a as usize),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ipv4_udp(src: Ipv4Addr, port: u16, options: bool) -> Vec<u8> {
        let ihl = if options { 6 } else { 5 };
        let mut p = vec![0u8; ihl * 4 + 8];
        p[0] = 0x40 | ihl as u8;
        p[9] = 17;
        p[12..16].copy_from_slice(&src.octets());
        p[ihl * 4..ihl * 4 + 2].copy_from_slice(&port.to_be_bytes());
        p
    }

    fn ipv6_udp(src: Ipv6Addr, port: u16, next: u8) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[6] = next;
        p[8..24].copy_from_slice(&src.octets());
        p[40..42].copy_from_slice(&port.to_be_bytes());
        p
    }

    #[test]
    fn program_matches_shard_of_for_v4_and_v6() {
        for shards in 1..=16 {
            let program = steering_program(shards);
            for i in 0..500u32 {
                let ip = Ipv4Addr::from(0x7f00_0001u32.wrapping_add(i.wrapping_mul(7919)));
                let port = (i.wrapping_mul(2_654_435_761) >> 16) as u16;
                let addr = SocketAddr::from((ip, port));
                assert_eq!(
                    run_program(&program, &ipv4_udp(ip, port, false)),
                    Some(shard_of(&addr, shards))
                );
                let ip6 = Ipv6Addr::from(u128::from(i) * 0x1234_5678_9abc_def1 + 1);
                let addr6 = SocketAddr::from((ip6, port));
                assert_eq!(
                    run_program(&program, &ipv6_udp(ip6, port, 17)),
                    Some(shard_of(&addr6, shards))
                );
                // A v4-mapped address lands where its IPv4 form does.
                let mapped = SocketAddr::from((ip.to_ipv6_mapped(), port));
                assert_eq!(shard_of(&mapped, shards), shard_of(&addr, shards));
            }
        }
    }

    #[test]
    fn unexpected_shapes_fall_back_to_the_kernel_hash() {
        let program = steering_program(4);
        let ip = Ipv4Addr::new(127, 0, 0, 1);
        assert_eq!(run_program(&program, &ipv4_udp(ip, 9, true)), None);
        assert_eq!(
            run_program(&program, &ipv6_udp(Ipv6Addr::LOCALHOST, 9, 0)),
            None
        );
    }

    #[test]
    fn shard_of_spreads_loopback_ports() {
        let shards = 4;
        let mut counts = [0usize; 4];
        for port in 10_000..14_000u16 {
            counts[shard_of(&SocketAddr::from(([127, 0, 0, 1], port)), shards)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}

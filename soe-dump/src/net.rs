//! From a captured frame to a UDP datagram: link layer, IPv4 or IPv6, UDP.
//!
//! Supported link types (the values stored in capture files): Ethernet (1, with
//! 802.1Q/802.1ad VLAN tags), BSD loopback/null (0, host byte order) and OpenBSD
//! loopback (108, network byte order), raw IP (101, and the 12 and 14 some systems
//! write instead), bare IPv4 (228) and IPv6 (229), Linux cooked capture v1 (113) and
//! v2 (276).
//!
//! IP fragments are not reassembled: SOE datagrams fit in one packet (512 bytes by
//! default), so a fragment is reported as skipped. Checksums are checked and
//! counted but never cause a datagram to be dropped: captures taken on the sending
//! host often show the placeholder a NIC with checksum offload fills in later.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Link-layer header types this module decodes (`LINKTYPE_*` values).
pub mod linktype {
    /// BSD loopback: a 4-byte address family in the capturing host's byte order.
    pub const NULL: i32 = 0;
    /// Ethernet II.
    pub const ETHERNET: i32 = 1;
    /// `DLT_RAW` as some BSDs number it.
    pub const RAW_12: i32 = 12;
    /// `DLT_RAW` as OpenBSD numbers it.
    pub const RAW_14: i32 = 14;
    /// Raw IP: the frame starts with an IPv4 or IPv6 header.
    pub const RAW: i32 = 101;
    /// OpenBSD loopback: the address family in network byte order.
    pub const LOOP: i32 = 108;
    /// Linux cooked capture, version 1 (16-byte header).
    pub const LINUX_SLL: i32 = 113;
    /// Raw IPv4.
    pub const IPV4: i32 = 228;
    /// Raw IPv6.
    pub const IPV6: i32 = 229;
    /// Linux cooked capture, version 2 (20-byte header).
    pub const LINUX_SLL2: i32 = 276;
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86DD;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88A8;
const IPPROTO_UDP: u8 = 17;

/// A UDP datagram found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// The UDP payload.
    pub payload: &'a [u8],
    /// Whether the IPv4 header checksum was wrong (always `false` for IPv6).
    pub bad_ip_checksum: bool,
    /// Whether a UDP checksum was present and wrong.
    pub bad_udp_checksum: bool,
}

/// What a frame held, when it was not a whole UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// A link type this module does not decode.
    UnknownLinkType(i32),
    /// A network protocol other than IPv4/IPv6 (ARP, …).
    NotIp,
    /// An IP packet that is not UDP (TCP, ICMP, …).
    NotUdp,
    /// An IP fragment (not reassembled).
    IpFragment,
    /// Headers cut short or inconsistent; the reason says which.
    Malformed(&'static str),
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownLinkType(t) => write!(f, "unsupported link type {t}"),
            Self::NotIp => f.write_str("not IP"),
            Self::NotUdp => f.write_str("not UDP"),
            Self::IpFragment => f.write_str("IP fragment"),
            Self::Malformed(why) => f.write_str(why),
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Decodes a frame of link type `linktype` down to its UDP payload.
pub fn parse_frame(linktype: i32, frame: &[u8]) -> Result<UdpDatagram<'_>, Skip> {
    match linktype {
        linktype::ETHERNET => parse_ethernet(frame),
        linktype::NULL => parse_null(frame, false),
        linktype::LOOP => parse_null(frame, true),
        linktype::RAW | linktype::RAW_12 | linktype::RAW_14 => parse_ip(frame),
        linktype::IPV4 => parse_ipv4(frame),
        linktype::IPV6 => parse_ipv6(frame),
        linktype::LINUX_SLL => {
            if frame.len() < 16 {
                return Err(Skip::Malformed("truncated Linux cooked header"));
            }
            by_ethertype(be16(frame, 14), &frame[16..])
        }
        linktype::LINUX_SLL2 => {
            if frame.len() < 20 {
                return Err(Skip::Malformed("truncated Linux cooked v2 header"));
            }
            by_ethertype(be16(frame, 0), &frame[20..])
        }
        other => Err(Skip::UnknownLinkType(other)),
    }
}

fn by_ethertype(ethertype: u16, rest: &[u8]) -> Result<UdpDatagram<'_>, Skip> {
    match ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(rest),
        ETHERTYPE_IPV6 => parse_ipv6(rest),
        _ => Err(Skip::NotIp),
    }
}

fn parse_ethernet(frame: &[u8]) -> Result<UdpDatagram<'_>, Skip> {
    let mut at = 12;
    loop {
        if frame.len() < at + 2 {
            return Err(Skip::Malformed("truncated Ethernet header"));
        }
        let ethertype = be16(frame, at);
        if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
            at += 4;
            continue;
        }
        return by_ethertype(ethertype, &frame[at + 2..]);
    }
}

/// BSD loopback: the address family is a host-order `u32` (`network_order` for
/// link type 108). AF_INET is 2 everywhere; AF_INET6 differs between systems.
fn parse_null(frame: &[u8], network_order: bool) -> Result<UdpDatagram<'_>, Skip> {
    let Some(family) = frame.get(..4) else {
        return Err(Skip::Malformed("truncated loopback header"));
    };
    let family = [family[0], family[1], family[2], family[3]];
    // The capturing host's byte order is unknown: a small value read in the wrong
    // order is huge, so take whichever reading is small.
    let le = u32::from_le_bytes(family);
    let be = u32::from_be_bytes(family);
    let value = if network_order || be < le { be } else { le };
    match value {
        2 => parse_ipv4(&frame[4..]),
        10 | 23 | 24 | 28 | 30 => parse_ipv6(&frame[4..]),
        _ => Err(Skip::NotIp),
    }
}

fn parse_ip(packet: &[u8]) -> Result<UdpDatagram<'_>, Skip> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => parse_ipv4(packet),
        Some(6) => parse_ipv6(packet),
        Some(_) => Err(Skip::NotIp),
        None => Err(Skip::Malformed("empty IP packet")),
    }
}

/// The 16-bit ones' complement sum of `data` (odd length padded with a zero byte),
/// added to `sum`: the Internet checksum (RFC 1071) before [`fold`]. `loadgen`
/// writes its captures' checksums with it.
pub fn ones_sum(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds a [`ones_sum`] to 16 bits; a header or datagram whose checksum field
/// is right folds to `0xFFFF`, and a sender writes `!fold(sum)`.
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

/// The checksum a sender writes in a UDP header, from the [`ones_sum`] of the
/// pseudo-header and the datagram (checksum field zero). A computed 0 goes out as
/// `FFFF`: 0 on the wire means "no checksum".
pub fn udp_checksum(sum: u32) -> u16 {
    match !fold(sum) {
        0 => 0xFFFF,
        c => c,
    }
}

fn parse_ipv4(packet: &[u8]) -> Result<UdpDatagram<'_>, Skip> {
    if packet.len() < 20 {
        return Err(Skip::Malformed("truncated IPv4 header"));
    }
    if packet[0] >> 4 != 4 {
        return Err(Skip::Malformed("IPv4 header with another version"));
    }
    let header_len = usize::from(packet[0] & 0x0F) * 4;
    let total_len = usize::from(be16(packet, 2));
    if header_len < 20 || total_len < header_len || packet.len() < header_len {
        return Err(Skip::Malformed("bad IPv4 header length"));
    }
    let flags_offset = be16(packet, 6);
    let more_fragments = flags_offset & 0x2000 != 0;
    let offset = flags_offset & 0x1FFF;
    if packet[9] != IPPROTO_UDP {
        return Err(Skip::NotUdp);
    }
    if more_fragments || offset != 0 {
        return Err(Skip::IpFragment);
    }
    let bad_ip_checksum = fold(ones_sum(0, &packet[..header_len])) != 0xFFFF;
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    // Ethernet pads short frames: trust the IP length, not the frame length.
    let end = total_len.min(packet.len());
    let udp = &packet[header_len..end];
    let mut pseudo = ones_sum(0, &packet[12..20]);
    pseudo += u32::from(IPPROTO_UDP);
    parse_udp(
        IpAddr::V4(src),
        IpAddr::V4(dst),
        udp,
        total_len - header_len,
        pseudo,
        false,
    )
    .map(|d| UdpDatagram {
        bad_ip_checksum,
        ..d
    })
}

fn parse_ipv6(packet: &[u8]) -> Result<UdpDatagram<'_>, Skip> {
    if packet.len() < 40 {
        return Err(Skip::Malformed("truncated IPv6 header"));
    }
    if packet[0] >> 4 != 6 {
        return Err(Skip::Malformed("IPv6 header with another version"));
    }
    let payload_len = usize::from(be16(packet, 4));
    let mut next = packet[6];
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&packet[8..24]);
    dst.copy_from_slice(&packet[24..40]);
    let end = (40 + payload_len).min(packet.len());
    let mut at = 40;
    // Walk the extension headers up to UDP.
    loop {
        match next {
            IPPROTO_UDP => break,
            // Hop-by-hop, routing, destination options: length in 8-byte units.
            0 | 43 | 60 => {
                let Some(h) = packet.get(at..at + 2) else {
                    return Err(Skip::Malformed("truncated IPv6 extension header"));
                };
                next = h[0];
                at += (usize::from(h[1]) + 1) * 8;
            }
            // Fragment header: fixed 8 bytes.
            44 => {
                let Some(h) = packet.get(at..at + 8) else {
                    return Err(Skip::Malformed("truncated IPv6 fragment header"));
                };
                let offset_flags = be16(h, 2);
                if offset_flags & 0xFFF9 != 0 {
                    return Err(Skip::IpFragment);
                }
                next = h[0];
                at += 8;
            }
            // Authentication header: length in 4-byte units, plus 2.
            51 => {
                let Some(h) = packet.get(at..at + 2) else {
                    return Err(Skip::Malformed("truncated IPv6 authentication header"));
                };
                next = h[0];
                at += (usize::from(h[1]) + 2) * 4;
            }
            _ => return Err(Skip::NotUdp),
        }
        if at > end {
            return Err(Skip::Malformed("IPv6 extension headers past the payload"));
        }
    }
    let udp_len_by_ip = (40 + payload_len).saturating_sub(at);
    let mut pseudo = ones_sum(0, &packet[8..40]);
    pseudo += u32::from(IPPROTO_UDP);
    parse_udp(
        IpAddr::V6(Ipv6Addr::from(src)),
        IpAddr::V6(Ipv6Addr::from(dst)),
        &packet[at..end],
        udp_len_by_ip,
        pseudo,
        true,
    )
}

/// `udp` is what the capture holds of the UDP header and payload; `declared` what
/// the IP header says it should be. `pseudo` is the pseudo-header sum without the
/// UDP length.
fn parse_udp(
    src: IpAddr,
    dst: IpAddr,
    udp: &[u8],
    declared: usize,
    pseudo: u32,
    v6: bool,
) -> Result<UdpDatagram<'_>, Skip> {
    if udp.len() < 8 {
        return Err(Skip::Malformed("truncated UDP header"));
    }
    let udp_len = usize::from(be16(udp, 4));
    if udp_len < 8 || udp_len > declared {
        return Err(Skip::Malformed("bad UDP length"));
    }
    if udp.len() < udp_len {
        return Err(Skip::Malformed("UDP payload cut short by the capture"));
    }
    let udp = &udp[..udp_len];
    let checksum = be16(udp, 6);
    // An IPv4 sender may leave the checksum out (0); IPv6 requires it.
    let bad_udp_checksum = if checksum == 0 && !v6 {
        false
    } else {
        let sum = ones_sum(pseudo + udp_len as u32, udp);
        fold(sum) != 0xFFFF
    };
    Ok(UdpDatagram {
        src: SocketAddr::new(src, be16(udp, 0)),
        dst: SocketAddr::new(dst, be16(udp, 2)),
        payload: &udp[8..],
        bad_ip_checksum: false,
        bad_udp_checksum,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_computed_udp_checksum_of_zero_goes_out_as_ffff() {
        // A sum that folds to FFFF complements to 0, which would read as "none".
        assert_eq!(udp_checksum(0xFFFF), 0xFFFF);
        assert_eq!(udp_checksum(0x1_FFFE), 0xFFFF);
        assert_eq!(udp_checksum(0x1234), !0x1234);
    }

    /// A UDP header and `payload`, checksummed over the pseudo-header made of
    /// `addresses` (source then destination, as they stand in the IP header).
    fn udp_with_checksum(
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
        addresses: &[u8],
    ) -> Vec<u8> {
        let udp_len = 8 + payload.len();
        let mut udp = Vec::with_capacity(udp_len);
        udp.extend_from_slice(&src.port().to_be_bytes());
        udp.extend_from_slice(&dst.port().to_be_bytes());
        udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(payload);
        let sum = ones_sum(0, addresses) + u32::from(IPPROTO_UDP) + udp_len as u32;
        let c = udp_checksum(ones_sum(sum, &udp));
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        udp
    }

    /// Builds an IPv4 + UDP packet with correct checksums.
    pub(crate) fn ipv4_udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
            panic!("IPv4 addresses expected")
        };
        let udp_len = 8 + payload.len();
        let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, IPPROTO_UDP, 0, 0];
        p[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        p.extend_from_slice(&s.octets());
        p.extend_from_slice(&d.octets());
        let c = !fold(ones_sum(0, &p));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&udp_with_checksum(src, dst, payload, &p[12..20]));
        p
    }

    /// Builds an IPv6 + UDP packet with a correct checksum and, optionally, a
    /// destination-options extension header.
    pub(crate) fn ipv6_udp(src: SocketAddr, dst: SocketAddr, payload: &[u8], ext: bool) -> Vec<u8> {
        let (IpAddr::V6(s), IpAddr::V6(d)) = (src.ip(), dst.ip()) else {
            panic!("IPv6 addresses expected")
        };
        let udp_len = 8 + payload.len();
        let ext_len = if ext { 8 } else { 0 };
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&((udp_len + ext_len) as u16).to_be_bytes());
        p.push(if ext { 60 } else { IPPROTO_UDP });
        p.push(64);
        p.extend_from_slice(&s.octets());
        p.extend_from_slice(&d.octets());
        if ext {
            p.extend_from_slice(&[IPPROTO_UDP, 0, 1, 4, 0, 0, 0, 0]);
        }
        p.extend_from_slice(&udp_with_checksum(src, dst, payload, &p[8..40]));
        p
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn raw_ipv4_and_every_wrapper() {
        let (c, s) = (addr("10.0.0.2:40000"), addr("10.0.0.1:20260"));
        let ip = ipv4_udp(c, s, b"\x00\x15\x00\x01");
        let expect = |d: UdpDatagram<'_>| {
            assert_eq!((d.src, d.dst), (c, s));
            assert_eq!(d.payload, b"\x00\x15\x00\x01");
            assert!(!d.bad_ip_checksum && !d.bad_udp_checksum);
        };
        expect(parse_frame(linktype::RAW, &ip).unwrap());
        expect(parse_frame(linktype::IPV4, &ip).unwrap());

        let mut eth = vec![0xAA; 12];
        eth.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]); // VLAN 5
        eth.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        eth.extend_from_slice(&ip);
        eth.extend_from_slice(&[0; 6]); // Ethernet padding
        expect(parse_frame(linktype::ETHERNET, &eth).unwrap());

        let mut null_le = 2u32.to_le_bytes().to_vec();
        null_le.extend_from_slice(&ip);
        expect(parse_frame(linktype::NULL, &null_le).unwrap());
        let mut null_be = 2u32.to_be_bytes().to_vec();
        null_be.extend_from_slice(&ip);
        expect(parse_frame(linktype::NULL, &null_be).unwrap());
        expect(parse_frame(linktype::LOOP, &null_be).unwrap());

        let mut sll = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0];
        sll.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        sll.extend_from_slice(&ip);
        expect(parse_frame(linktype::LINUX_SLL, &sll).unwrap());

        let mut sll2 = ETHERTYPE_IPV4.to_be_bytes().to_vec();
        // reserved, interface index, hardware type, packet type, address length, address
        sll2.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0, 1, 4, 6, 1, 2, 3, 4, 5, 6, 0, 0]);
        sll2.extend_from_slice(&ip);
        expect(parse_frame(linktype::LINUX_SLL2, &sll2).unwrap());
    }

    #[test]
    fn ipv6_with_extension_header() {
        let (c, s) = (addr("[fd00::2]:40000"), addr("[fd00::1]:20260"));
        for ext in [false, true] {
            let ip = ipv6_udp(c, s, b"hello", ext);
            let d = parse_frame(linktype::RAW, &ip).unwrap();
            assert_eq!((d.src, d.dst, d.payload), (c, s, &b"hello"[..]));
            assert!(!d.bad_udp_checksum);
            let mut sll2 = ETHERTYPE_IPV6.to_be_bytes().to_vec();
            sll2.extend_from_slice(&[0; 18]);
            sll2.extend_from_slice(&ip);
            assert_eq!(parse_frame(linktype::LINUX_SLL2, &sll2).unwrap(), d);
            let mut null = 30u32.to_le_bytes().to_vec();
            null.extend_from_slice(&ip);
            assert_eq!(parse_frame(linktype::NULL, &null).unwrap(), d);
        }
    }

    #[test]
    fn checksums_are_reported_not_enforced() {
        let (c, s) = (addr("10.0.0.2:40000"), addr("10.0.0.1:20260"));
        let mut ip = ipv4_udp(c, s, b"abc");
        let last = ip.len() - 1;
        ip[last] ^= 0xFF;
        let d = parse_frame(linktype::RAW, &ip).unwrap();
        assert!(d.bad_udp_checksum && !d.bad_ip_checksum);
        ip[8] = 63; // TTL: the header checksum no longer matches
        assert!(parse_frame(linktype::RAW, &ip).unwrap().bad_ip_checksum);
    }

    #[test]
    fn skips_and_never_panics() {
        let (c, s) = (addr("10.0.0.2:40000"), addr("10.0.0.1:20260"));
        let ip = ipv4_udp(c, s, &[7; 40]);
        let mut frag = ip.clone();
        frag[6] = 0x20; // more fragments
        assert_eq!(parse_frame(linktype::RAW, &frag), Err(Skip::IpFragment));
        let mut tcp = ip.clone();
        tcp[9] = 6;
        assert_eq!(parse_frame(linktype::RAW, &tcp), Err(Skip::NotUdp));
        assert_eq!(
            parse_frame(linktype::RAW, &ip[..30]),
            Err(Skip::Malformed("UDP payload cut short by the capture"))
        );
        assert_eq!(parse_frame(999, &ip), Err(Skip::UnknownLinkType(999)));
        let mut arp = vec![0; 12];
        arp.extend_from_slice(&[0x08, 0x06, 0, 1]);
        assert_eq!(parse_frame(linktype::ETHERNET, &arp), Err(Skip::NotIp));
        // Every prefix of every wrapper decodes or is skipped, without a panic.
        let v6 = ipv6_udp(addr("[::1]:1"), addr("[::1]:2"), &[1, 2, 3], true);
        for t in [0, 1, 12, 14, 101, 108, 113, 228, 229, 276] {
            for frame in [&ip[..], &v6[..]] {
                for len in 0..frame.len() {
                    let _ = parse_frame(t, &frame[..len]);
                }
            }
        }
    }
}

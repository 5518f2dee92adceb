//! Socket matters both runtime shells share: PortAlive's TTL, and telling the
//! errors that ICMP reports leave on a socket from the call's own.

use std::io;

use socket2::SockRef;

/// Whether a socket call failed with an error that an ICMP report set on the
/// socket (a connected socket, or any with `IP_RECVERR`, returns it once from
/// the next call): not the call's own fault, so it is worth repeating.
pub(crate) fn is_icmp_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// Runs `send` with the socket's IP TTL (IPv6 hop limit, for `v6` sockets) set
/// to `ttl`, then restores the socket's own; for PortAlive
/// ([`crate::protocol::PORT_ALIVE_TTL`]).
pub(crate) fn with_ttl<T>(
    socket: SockRef<'_>,
    v6: bool,
    ttl: u32,
    send: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    let set = |value| {
        if v6 {
            socket.set_unicast_hops_v6(value)
        } else {
            socket.set_ttl_v4(value)
        }
    };
    let before = if v6 {
        socket.unicast_hops_v6()?
    } else {
        socket.ttl_v4()?
    };
    set(ttl)?;
    let sent = send();
    set(before)?;
    sent
}

//! `soe-dump`: decodes SOE (Sony Online Entertainment / Daybreak "UdpLibrary")
//! reliable-UDP sessions from pcap and pcapng captures.
//!
//! The pipeline, one module each:
//!
//! * [`capture`] reads the file frame by frame (pcap or pcapng, via `pcap-parser`);
//! * [`net`] peels the link layer, IPv4/IPv6 and UDP off each frame;
//! * [`flow`] groups datagrams into flows and decides which are SOE sessions and
//!   which end is the client;
//! * [`session`] decodes each session with `soe_uring::protocol` — CRC, zlib,
//!   multi-packets, bundles, fragments, reliable ordering, RC4 — into [`event`]s;
//! * [`output`] prints them as a timeline or as JSON lines;
//! * [`cli`] is the command line ([`run`]).
//!
//! Nothing in a capture is trusted: malformed frames and packets are reported and
//! skipped, never a reason to stop (or to panic).

pub mod capture;
pub mod cli;
pub mod event;
pub mod flow;
pub mod net;
pub mod output;
pub mod session;

pub use cli::run;

#[cfg(test)]
mod tests;

/// Helpers of the unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    /// Bytes written as whitespace-separated hex pairs (`"00 09 FF"`).
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }
}

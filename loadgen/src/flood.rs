//! `loadgen flood`: SessionRequests, each from a new source address, as a flood of
//! forged or abandoned clients sends them. For measuring what a server keeps after
//! a flood (memory, the half-open pool, admission under overload).
//!
//! Against a loopback target every request comes from a fresh address in
//! 127.0.0.0/8 and a fresh ephemeral port; against another host, from a fresh
//! ephemeral port of this host.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::args::FloodArgs;

/// A v3 SessionRequest for `protocol` with session id `id`.
fn request(id: u32, protocol: &str) -> Vec<u8> {
    let mut r = vec![0, 1, 0, 0, 0, 3];
    r.extend_from_slice(&id.to_be_bytes());
    r.extend_from_slice(&512u32.to_be_bytes());
    r.extend_from_slice(protocol.as_bytes());
    r.push(0);
    r
}

/// The source of request `n`.
fn source(target: SocketAddr, n: u32) -> SocketAddr {
    match target {
        SocketAddr::V4(t) if t.ip().is_loopback() => {
            let ip = Ipv4Addr::new(
                127,
                10 + (n >> 16) as u8 % 200,
                (n >> 8) as u8,
                1 + n as u8 % 250,
            );
            SocketAddr::from((ip, 0))
        }
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
    }
}

#[allow(clippy::disallowed_methods)] // pacing reads the clock
pub fn flood(a: FloodArgs) -> Result<ExitCode, String> {
    if a.rate <= 0.0 || a.duration <= 0.0 {
        return Err("--rate and --duration must be positive".into());
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration);
    let mut sent: u32 = 0;
    let mut failed: u64 = 0;
    let mut next_report = start + Duration::from_secs(1);
    while Instant::now() < end {
        let due = (start.elapsed().as_secs_f64() * a.rate) as u32;
        while sent < due {
            let n = sent.wrapping_add(a.seed.wrapping_mul(0x9E37_79B9));
            match UdpSocket::bind(source(a.target, n))
                .and_then(|s| s.send_to(&request(n, &a.proto.app_protocol), a.target))
            {
                Ok(_) => {}
                Err(_) => failed += 1,
            }
            sent += 1;
        }
        let now = Instant::now();
        if now >= next_report {
            eprintln!(
                "loadgen: flood {:.0}/{:.0} s, {sent} requests ({failed} not sent)",
                start.elapsed().as_secs_f64(),
                a.duration
            );
            next_report += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    println!(
        "flood: {sent} SessionRequests in {:.1} s ({:.0}/s), {failed} not sent",
        start.elapsed().as_secs_f64(),
        f64::from(sent) / start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

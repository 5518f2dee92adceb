//! `loadgen serve --metrics-addr`: a real HTTP scrape of the Prometheus text
//! exposition, parsed with a Prometheus text-format parser.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{BIN, serve, sigterm, wait_exit};

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` over HTTP/1.0; the body.
fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header"))?;
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200"),
        "{head}"
    );
    Ok(body.to_string())
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// Kills the server it holds if the test ends early (a failed assertion), so no
/// process outlives the test.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn serve_exposes_prometheus_metrics_over_http() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let (server, addr) = serve(&["--metrics-addr", &metrics]);
    let mut guard = KillOnDrop(Some(server));
    let out = Command::new(BIN)
        .args([
            "run",
            "--target",
            &addr,
            "--sessions",
            "6",
            "--duration",
            "1.5",
            "--warmup",
            "0",
            "--client-threads",
            "1",
            "--quiet",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Counters are published once a second: wait for one after the run.
    let start = Instant::now();
    let scrape = loop {
        let body = http_get(&metrics, "/metrics").expect("scrape");
        let lines = body.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition");
        if value(
            &scrape,
            "soe_sessions_closed_total",
            &[("reason", "Application")],
        ) >= 6.0
        {
            break scrape;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(value(&scrape, "soe_sessions_opened_total", &[]) >= 6.0);
    assert!(value(&scrape, "soe_datagrams_total", &[("direction", "in")]) > 100.0);
    assert!(value(&scrape, "soe_bytes_total", &[("direction", "out")]) > 1000.0);
    assert!(value(&scrape, "soe_messages_total", &[("direction", "delivered")]) > 50.0);
    assert_eq!(value(&scrape, "soe_sessions_live", &[]), 0.0);
    assert!(value(&scrape, "soe_turns_total", &[("shard", "0")]) > 0.0);
    // The histograms are exported (as summaries or histograms).
    for name in ["soe_turn_seconds", "soe_session_rtt_seconds"] {
        assert!(
            scrape.samples.iter().any(|s| s.metric == name),
            "{name} missing"
        );
    }
    let mut server = guard.0.take().unwrap();
    sigterm(&server);
    assert!(wait_exit(&mut server, Duration::from_secs(20)).success());
}

#![cfg(feature = "sim")]
//! Small simulated conversations.

use soe_uring::sim::{LinkConfig, Sim};
use soe_uring::*;

fn config(seed: u64) -> SocketConfig {
    let mut c = SocketConfig {
        rng_seed: Some(seed),
        ..SocketConfig::default()
    };
    c.default_session_params.application_protocol = "Test".into();
    c
}

fn opened(sim: &Sim, node: usize) -> bool {
    sim.node(node)
        .events
        .iter()
        .any(|e| matches!(e, SocketEvent::SessionOpened { .. }))
}

#[test]
fn handshake_and_echo() {
    let mut sim = Sim::new(1, LinkConfig::default());
    let server = sim.add_node(config(1));
    let client = sim.add_node(config(2));
    sim.connect(client, server);
    assert!(sim.run_until(|s| opened(s, client)));
    let saddr = sim.addr(server);
    let caddr = sim.addr(client);
    sim.node_mut(client)
        .mux
        .enqueue_data(&saddr, b"hello")
        .unwrap();
    sim.pump(client);
    assert!(sim.run_until(|s| s.node(server).events.iter().any(
        |e| matches!(e, SocketEvent::DataReceived { data, .. } if data.as_ref() == b"hello")
    )));
    assert!(opened(&sim, server));
    sim.node_mut(server)
        .mux
        .enqueue_data(&caddr, b"world")
        .unwrap();
    sim.pump(server);
    assert!(sim.run_until(|s| s.node(client).events.iter().any(
        |e| matches!(e, SocketEvent::DataReceived { data, .. } if data.as_ref() == b"world")
    )));
}

//! Free loopback ports for the servers under test. A port is free when
//! binding it succeeds; the listener is closed again so that the server can
//! bind it. Two things could take it in between: this process handing it out
//! twice (never: handed-out ports are remembered), and an outgoing
//! connection of any process on the machine, whose local port the kernel
//! picks from its ephemeral range. Binding port 0 returns a port from that
//! very range, so ports are taken from below it instead, where the kernel
//! never picks local ports for connections.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};

use anyhow::bail;

/// The lowest port handed out.
const LOWEST: u16 = 10000;

struct Ports {
    handed_out: HashSet<u16>,
    next: u16,
}

static PORTS: Mutex<Option<Ports>> = Mutex::new(None);

/// The first port of the kernel's ephemeral range (32768 if unknown).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .filter(|p| *p > LOWEST + 1000)
        .unwrap_or(32768)
}

fn start_offset() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::process::id().wrapping_mul(7919) ^ nanos
}

/// A loopback port that nothing listened on a moment ago, outside the
/// kernel's ephemeral range.
pub fn free_port() -> anyhow::Result<u16> {
    let top = ephemeral_start();
    let span = top - LOWEST;
    let mut guard = PORTS.lock().unwrap_or_else(PoisonError::into_inner);
    let ports = guard.get_or_insert_with(|| Ports {
        handed_out: HashSet::new(),
        // Test processes that run at the same time start apart.
        next: LOWEST + (start_offset() % u32::from(span)) as u16,
    });
    for _ in 0..span {
        let port = ports.next;
        ports.next = if port + 1 >= top { LOWEST } else { port + 1 };
        if ports.handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            ports.handed_out.insert(port);
            return Ok(port);
        }
    }
    bail!("no free loopback port between {LOWEST} and {top}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let top = ephemeral_start();
        let ports: Vec<u16> = (0..200).map(|_| free_port().expect("port")).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        for p in ports {
            assert!((LOWEST..top).contains(&p), "port {p}");
            TcpListener::bind((Ipv4Addr::LOCALHOST, p)).expect("still free");
        }
    }
}

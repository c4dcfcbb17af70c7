//! Free loopback ports. The kernel picks an unused port when binding port 0;
//! the listener is closed again so the server under test can bind it. A port
//! is never handed out twice by one test process, because the kernel may
//! offer a just-closed port again to the next caller.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};

use anyhow::Context;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port that nothing listened on a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("cannot bind a free loopback port")?;
        let port = listener
            .local_addr()
            .context("bound listener has no address")?
            .port();
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
}

//! Responses that are ready together leave in one write.
//!
//! A member answers many requests of one connection at once (a batch of
//! linearizable reads released by one read index, the proposals of one
//! raft batch applied together), each from its own task. The HTTP/2
//! connection task wakes on the first response and would write it alone,
//! then the next, and so on: a `writev` and a trip through the kernel's
//! TCP stack per response. [`Coalesced`] makes the connection's first
//! write after a flush yield once: the task goes to the back of the
//! runtime's queue (a task that wakes itself is rescheduled as a yield),
//! the tasks already ready queue their responses, and one write carries
//! them all. The yield is taken only while other requests are being
//! answered (whose responses may join the write): a lone client's response
//! is written at once, since a yield with nothing else to run can cost a
//! wake-up of another worker thread (tens of microseconds measured).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Requests whose handlers have not returned yet, all connections.
static ANSWERING: AtomicUsize = AtomicUsize::new(0);

/// Held while a request's handler runs (see [`answering`]).
pub struct Answering(&'static AtomicUsize);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a request as being answered until the guard drops: the client
/// port's outermost middleware holds it around every request.
pub fn answering() -> Answering {
    enter(&ANSWERING)
}

fn enter(count: &'static AtomicUsize) -> Answering {
    count.fetch_add(1, Ordering::Relaxed);
    Answering(count)
}

/// A connection whose first write after each flush yields once while other
/// requests are being answered.
#[derive(Debug)]
pub struct Coalesced<T> {
    inner: T,
    /// Whether this round of writes has yielded already (until the next
    /// flush).
    yielded: bool,
    /// The requests being answered ([`ANSWERING`], a test's own count).
    answering: &'static AtomicUsize,
}

impl<T> Coalesced<T> {
    pub fn new(inner: T) -> Self {
        Coalesced { inner, yielded: false, answering: &ANSWERING }
    }

    /// Yields once per round: Pending, with the task woken to run again
    /// after the tasks already queued.
    fn hold(&mut self, cx: &mut Context<'_>) -> bool {
        if self.yielded || self.answering.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        true
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.hold(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if self.hold(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if flushed.is_ready() {
            self.yielded = false;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for Coalesced<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn what_is_written_arrives_whole_and_in_order() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut a = Coalesced::new(a);
        let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                for chunk in sent.chunks(3000) {
                    a.write_all(chunk).await.expect("write");
                    a.flush().await.expect("flush");
                }
                a.shutdown().await.expect("shutdown");
            })
        };
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.expect("read");
        writer.await.expect("writer");
        assert_eq!(got, sent);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_first_write_after_a_flush_lets_ready_tasks_run_first() {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut a = Coalesced { answering: &COUNT, ..Coalesced::new(a) };
        let order = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        // Nothing else being answered: written at once, before a queued
        // task runs.
        let idle = {
            let order = order.clone();
            tokio::spawn(async move { order.lock().push("idle task") })
        };
        a.write_all(b"1").await.expect("write");
        order.lock().push("alone");
        a.flush().await.expect("flush");
        idle.await.expect("idle");
        // Another request being answered, its task queued: the write
        // yields to it once.
        let other = {
            let order = order.clone();
            let answering = enter(&COUNT);
            tokio::spawn(async move {
                order.lock().push("other task");
                drop(answering);
            })
        };
        a.write_all(b"x").await.expect("write");
        order.lock().push("written");
        a.flush().await.expect("flush");
        other.await.expect("other");
        assert_eq!(*order.lock(), vec!["alone", "idle task", "other task", "written"]);
        let mut bytes = [0u8; 2];
        b.read_exact(&mut bytes).await.expect("read");
        assert_eq!(&bytes, b"1x");
    }
}

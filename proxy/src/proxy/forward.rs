//! Copying bytes between the client and the upstream, both ways, until both
//! sides are done, one side fails, or the connection is cut from outside
//! (grant end, daemon shutdown).
//!
//! No per-byte work, and no buffer while a connection idles: bytes are read
//! into the worker thread's scratch buffer and written on at once; only what
//! the receiving side does not take yet is kept, in a buffer of the
//! connection's own, until it drains. A side that reaches EOF half-closes the
//! other (`shutdown(SHUT_WR)`).
//!
//! Reads go on until `EAGAIN`, 0 or an error: a short read is no proof that
//! the receive queue is empty (a read stops at TCP's urgent mark, and data
//! can be queued before a reset), so readiness is only cleared by the kernel
//! saying so.

use std::{
    cell::RefCell,
    future::Future,
    io,
    os::fd::AsRawFd as _,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
};

use tokio::net::TcpStream;

/// The most read at once, per worker thread.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Bytes moved each way.
#[derive(Debug, Default)]
pub struct Bytes {
    /// Client to upstream.
    pub up: AtomicU64,
    /// Upstream to client.
    pub down: AtomicU64,
}

impl Bytes {
    pub fn up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }

    pub fn down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }
}

/// How a forwarded connection ended.
#[derive(Debug)]
pub enum Ended {
    /// Both sides closed their write side; everything was delivered.
    Closed,
    /// Reading from or writing to the client failed.
    ClientError(io::Error),
    /// Reading from or writing to the upstream failed.
    UpstreamError(io::Error),
    /// Cut from outside, with the reason the caller gave.
    Cut(&'static str),
}

/// Copies both ways until the connection ends. `cut` resolves with a reason to
/// end it early; both sockets are then closed by the caller dropping them.
/// (`cut` is pinned by the caller, so the connection's state holds it once.)
pub async fn forward<C: Future<Output = &'static str>>(
    client: &TcpStream,
    upstream: &TcpStream,
    bytes: &Bytes,
    mut cut: Pin<&mut C>,
) -> Ended {
    let up = pipe(client, upstream, &bytes.up);
    let down = pipe(upstream, client, &bytes.down);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            // The cut first: once the grant has ended, no more bytes move.
            biased;
            reason = &mut cut => return Ended::Cut(reason),
            result = &mut up, if !up_done => match result {
                Ok(()) => up_done = true,
                Err(PipeError::Read(e)) => return Ended::ClientError(e),
                Err(PipeError::Write(e)) => return Ended::UpstreamError(e),
            },
            result = &mut down, if !down_done => match result {
                Ok(()) => down_done = true,
                Err(PipeError::Read(e)) => return Ended::UpstreamError(e),
                Err(PipeError::Write(e)) => return Ended::ClientError(e),
            },
        }
    }
    Ended::Closed
}

enum PipeError {
    Read(io::Error),
    Write(io::Error),
}

/// One direction: read from `from`, write to `to`, until EOF; then
/// half-close `to` so the peer sees the EOF too.
async fn pipe(from: &TcpStream, to: &TcpStream, count: &AtomicU64) -> Result<(), PipeError> {
    // What `to` has not taken yet; empty (no allocation) unless it pushes back.
    let mut unsent: Vec<u8> = Vec::new();
    loop {
        from.readable().await.map_err(PipeError::Read)?;
        let moved =
            SCRATCH_BUFFER.with_borrow_mut(|scratch| move_once(from, to, scratch, &mut unsent))?;
        let full = match moved {
            Moved::Eof => {
                shutdown_write(to).map_err(PipeError::Write)?;
                return Ok(());
            }
            Moved::Nothing => continue,
            Moved::Read { written, full } => {
                count.fetch_add(written as u64, Ordering::Relaxed);
                full
            }
        };
        if !unsent.is_empty() {
            write_all(to, &unsent).await.map_err(PipeError::Write)?;
            count.fetch_add(unsent.len() as u64, Ordering::Relaxed);
            if full {
                unsent.clear();
            } else {
                // The burst is over: an idle connection keeps no buffer.
                unsent = Vec::new();
            }
        }
    }
}

/// What one read did.
enum Moved {
    /// Nothing to read after all (readiness was stale).
    Nothing,
    /// Bytes read: `written` of them written, the rest kept in `unsent`;
    /// `full` when the read filled the scratch buffer (more is likely
    /// waiting).
    Read { written: usize, full: bool },
    /// The sender closed its side.
    Eof,
}

/// Reads once from `from` into `scratch` and writes what it got to `to`,
/// keeping in `unsent` what `to` does not take now. Does not wait.
fn move_once(
    from: &TcpStream,
    to: &TcpStream,
    scratch: &mut [u8],
    unsent: &mut Vec<u8>,
) -> Result<Moved, PipeError> {
    let n = match from.try_read(scratch) {
        Ok(0) => return Ok(Moved::Eof),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Moved::Nothing),
        Err(e) => return Err(PipeError::Read(e)),
    };
    let data = &scratch[..n];
    let written = match to.try_write(data) {
        Ok(written) => written,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(PipeError::Write(e)),
    };
    unsent.extend_from_slice(&data[written..]);
    Ok(Moved::Read {
        written,
        full: n == scratch.len(),
    })
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    match nix::sys::socket::shutdown(stream.as_raw_fd(), nix::sys::socket::Shutdown::Write) {
        Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

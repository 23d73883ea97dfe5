//! Copying bytes between the client and the upstream, both ways, until both
//! sides are done, one side fails, or the connection is cut from outside
//! (grant end, daemon shutdown).
//!
//! No per-byte work: bytes are moved with `read`/`write` into a buffer that
//! is allocated on the first readable event and doubles while reads fill it,
//! so idle connections hold no buffer and bulk transfers get large reads.
//! A side that reaches EOF half-closes the other (`shutdown(SHUT_WR)`).

use std::{
    future::Future,
    io,
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicU64, Ordering},
};

use tokio::net::TcpStream;

const FIRST_BUFFER: usize = 4 * 1024;
const MAX_BUFFER: usize = 256 * 1024;

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
pub async fn forward(
    client: &TcpStream,
    upstream: &TcpStream,
    bytes: &Bytes,
    cut: impl Future<Output = &'static str>,
) -> Ended {
    let up = pipe(client, upstream, &bytes.up);
    let down = pipe(upstream, client, &bytes.down);
    tokio::pin!(up, down, cut);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
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
            reason = &mut cut => return Ended::Cut(reason),
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
    let mut buf: Vec<u8> = Vec::new();
    loop {
        from.readable().await.map_err(PipeError::Read)?;
        if buf.is_empty() {
            buf.resize(FIRST_BUFFER, 0);
        }
        let n = match from.try_read(&mut buf) {
            Ok(0) => {
                shutdown_write(to).map_err(PipeError::Write)?;
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(PipeError::Read(e)),
        };
        write_all(to, &buf[..n]).await.map_err(PipeError::Write)?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        if n == buf.len() && buf.len() < MAX_BUFFER {
            buf.resize(buf.len() * 2, 0);
        }
    }
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

//! TCP sockets the way the daemon needs them: loopback listeners, upstream
//! connections from a marked socket, and closing with a reset.

use std::{io, net::SocketAddr, time::Duration};

use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A socket of `addr`'s family.
fn socket_for(addr: SocketAddr) -> io::Result<TcpSocket> {
    if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
}

/// Listens on `addr` (SO_REUSEADDR, so a restart can bind at once).
pub fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = socket_for(addr)?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Binds `addr` as [`listen`] would (SO_REUSEADDR), without listening,
/// and closes the socket at once: whether the daemon could bind it now.
/// Needs no runtime.
pub fn try_bind(addr: SocketAddr) -> io::Result<()> {
    let socket = socket_for(addr)?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)
}

/// Connects to `addr` from a socket carrying `mark` (SO_MARK, needs
/// CAP_NET_ADMIN), with TCP_NODELAY, giving up after `timeout`.
pub async fn connect_marked(
    addr: SocketAddr,
    mark: Option<u32>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = socket_for(addr)?;
    if let Some(mark) = mark {
        setsockopt(&socket, sockopt::Mark, &mark).map_err(io::Error::from)?;
    }
    socket.set_nodelay(true)?;
    tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// Listens on Unix socket `path` (its directory created, a stale socket
/// replaced), with `mode`.
pub fn bind_unix(path: &std::path::Path, mode: u32) -> io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Closes a socket with a reset (SO_LINGER 0), so the peer sees the refusal
/// at once instead of a clean end of stream.
pub fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = setsockopt(&stream, sockopt::Linger, &linger);
    drop(stream);
}

//! Sockets that already exist, through the kernel's sock_diag netlink
//! interface (what `ss` and `ss -K` use): list TCP and UDP sockets with their
//! owner, cgroup and mark, and end one (`SOCK_DESTROY`, needs
//! CAP_NET_ADMIN and `CONFIG_INET_DIAG_DESTROY`).
//!
//! The messages are built and read as bytes here: `struct nlmsghdr`,
//! `struct inet_diag_req_v2`, `struct inet_diag_msg` and their attributes,
//! all in host byte order except ports and addresses (network order).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, OwnedFd},
};

use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_MARK: u16 = 15;
const INET_DIAG_CGROUP_ID: u16 = 21;

const NLMSG_HEADER: usize = 16;
const SOCKID_LEN: usize = 48;
const REQ_LEN: usize = 8 + SOCKID_LEN;
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;

/// TCP states that are not connections to end: listening and closed
/// sockets, and TIME_WAIT (nothing left to send).
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;

/// One socket as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    pub family: u8,
    pub protocol: u8,
    /// TCP state (UDP: 1 when connected).
    pub state: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub uid: u32,
    pub inode: u32,
    /// The cgroup v2 id the socket belongs to.
    pub cgroup_id: Option<u64>,
    pub mark: Option<u32>,
    /// The kernel's id of the socket (`inet_diag_sockid`), to destroy it by.
    id: [u8; SOCKID_LEN],
}

impl Socket {
    /// Whether it is a live connection: TCP that is not listening, closed or
    /// in TIME_WAIT, or UDP with a peer.
    pub fn is_connection(&self) -> bool {
        match self.protocol {
            IPPROTO_TCP => !matches!(self.state, TCP_LISTEN | TCP_TIME_WAIT | TCP_CLOSE),
            _ => !self.dst.ip().is_unspecified() && self.dst.port() != 0,
        }
    }
}

/// Every IPv4 and IPv6 socket of `protocol` (TCP or UDP).
pub fn list(protocol: u8) -> io::Result<Vec<Socket>> {
    let mut all = Vec::new();
    for family in [AF_INET, AF_INET6] {
        let nl = open()?;
        let request = message(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            family,
            protocol,
            &[0; SOCKID_LEN],
        );
        send(&nl, &request)?;
        read_replies(&nl, |kind, payload| {
            if kind == SOCK_DIAG_BY_FAMILY {
                if let Some(socket) = parse(protocol, payload) {
                    all.push(socket);
                }
            }
        })?;
    }
    Ok(all)
}

/// Ends `socket`: a TCP connection is aborted (the owner's next call gets
/// ECONNABORTED), a UDP socket disconnected.
pub fn destroy(socket: &Socket) -> io::Result<()> {
    let nl = open()?;
    let request = message(
        SOCK_DESTROY,
        NLM_F_REQUEST | NLM_F_ACK,
        socket.family,
        socket.protocol,
        &socket.id,
    );
    send(&nl, &request)?;
    read_replies(&nl, |_, _| {})
}

fn open() -> io::Result<OwnedFd> {
    socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(io::Error::from)
}

fn send(nl: &OwnedFd, message: &[u8]) -> io::Result<()> {
    sendto(
        nl.as_raw_fd(),
        message,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map(drop)
    .map_err(io::Error::from)
}

/// An `nlmsghdr` followed by an `inet_diag_req_v2` for every state.
fn message(kind: u16, flags: u16, family: u8, protocol: u8, id: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let len = NLMSG_HEADER + REQ_LEN;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    m.extend_from_slice(&[family, protocol, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(id);
    m
}

/// Reads replies until the dump ends or the request is acknowledged;
/// `each` gets every other message. A netlink error is returned.
fn read_replies(nl: &OwnedFd, mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = recv(nl.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(io::Error::from)?;
        let mut rest = &buf[..n];
        while rest.len() >= NLMSG_HEADER {
            let len = u32_at(rest, 0) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            if len < NLMSG_HEADER || len > rest.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "malformed sock_diag reply",
                ));
            }
            let payload = &rest[NLMSG_HEADER..len];
            match kind {
                // A dump that failed part way says so in its end message.
                NLMSG_DONE => {
                    let errno = payload
                        .get(..4)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    return match errno {
                        e if e < 0 => Err(io::Error::from_raw_os_error(-e)),
                        _ => Ok(()),
                    };
                }
                NLMSG_ERROR => {
                    let errno = payload
                        .get(..4)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    return match errno {
                        0 => Ok(()),
                        e => Err(io::Error::from_raw_os_error(-e)),
                    };
                }
                _ => each(kind, payload),
            }
            rest = &rest[align4(len).min(rest.len())..];
        }
    }
}

/// An `inet_diag_msg` and the attributes after it.
fn parse(protocol: u8, payload: &[u8]) -> Option<Socket> {
    if payload.len() < MSG_LEN {
        return None;
    }
    let (family, state) = (payload[0], payload[1]);
    let id: [u8; SOCKID_LEN] = payload[4..4 + SOCKID_LEN].try_into().ok()?;
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let addr = |bytes: &[u8]| -> Option<IpAddr> {
        Some(match family {
            AF_INET => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&bytes[..4]).ok()?)),
            AF_INET6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
            _ => return None,
        })
    };
    let src = addr(&id[4..20])?;
    let dst = addr(&id[20..36])?;
    let tail = 4 + SOCKID_LEN;
    let uid = u32_at(payload, tail + 12);
    let inode = u32_at(payload, tail + 16);
    let mut socket = Socket {
        family,
        protocol,
        state,
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        uid,
        inode,
        cgroup_id: None,
        mark: None,
        id,
    };
    let mut attrs = &payload[MSG_LEN..];
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            break;
        }
        let value = &attrs[4..len];
        match (kind, value.len()) {
            (INET_DIAG_MARK, 4) => socket.mark = Some(u32_at(value, 0)),
            (INET_DIAG_CGROUP_ID, 8) => {
                socket.cgroup_id = value.try_into().ok().map(u64::from_ne_bytes);
            }
            _ => {}
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Some(socket)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_replies_are_not_sockets() {
        assert_eq!(parse(IPPROTO_TCP, &[0; 10]), None);
        let mut msg = vec![0u8; MSG_LEN];
        msg[0] = 99; // an unknown family
        assert_eq!(parse(IPPROTO_TCP, &msg), None);
    }

    #[test]
    fn a_message_parses_with_its_attributes() {
        let mut msg = vec![0u8; MSG_LEN];
        msg[0] = AF_INET;
        msg[1] = 1; // established
        msg[4..6].copy_from_slice(&40000u16.to_be_bytes());
        msg[6..8].copy_from_slice(&8080u16.to_be_bytes());
        msg[8..12].copy_from_slice(&[127, 0, 0, 1]);
        msg[24..28].copy_from_slice(&[127, 0, 0, 2]);
        msg[4 + SOCKID_LEN + 12..4 + SOCKID_LEN + 16].copy_from_slice(&65534u32.to_ne_bytes());
        // INET_DIAG_CGROUP_ID = 7, and a truncated attribute that is ignored.
        msg.extend_from_slice(&12u16.to_ne_bytes());
        msg.extend_from_slice(&INET_DIAG_CGROUP_ID.to_ne_bytes());
        msg.extend_from_slice(&7u64.to_ne_bytes());
        msg.extend_from_slice(&[200, 0, 1, 0]);
        let s = parse(IPPROTO_TCP, &msg).expect("a socket");
        assert_eq!(s.dst, "127.0.0.2:8080".parse().unwrap());
        assert_eq!(s.src, "127.0.0.1:40000".parse().unwrap());
        assert_eq!((s.uid, s.cgroup_id, s.mark), (65534, Some(7), None));
        assert!(s.is_connection());
    }

    #[test]
    fn listing_works_here() {
        // Needs no privilege: listing is allowed to anyone.
        assert!(list(IPPROTO_TCP).is_ok());
    }
}

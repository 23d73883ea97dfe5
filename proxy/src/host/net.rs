//! This host's own addresses, and which ports any user may bind.

use std::net::IpAddr;

use crate::config::UnprivilegedPorts;

/// The sysctl that says from which port up any user may bind (per network
/// namespace; the daemon's is the one its clients are redirected in).
const UNPRIVILEGED_PORT_START: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";

/// The addresses of this host's interfaces (loopback included), sorted,
/// without duplicates; empty if the kernel cannot list them.
pub fn local_addresses() -> Vec<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut addrs: Vec<IpAddr> = interfaces
        .filter_map(|i| i.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    addrs
}

/// Which ports any user may bind here (`net.ipv4.ip_unprivileged_port_start`);
/// the kernel's default (1024), with why, when the sysctl cannot be read.
pub fn unprivileged_ports() -> UnprivilegedPorts {
    let read = std::fs::read_to_string(UNPRIVILEGED_PORT_START).map_err(|e| e.to_string());
    unprivileged_ports_from(read.and_then(|text| parse_port_start(&text)))
}

/// The sysctl's value, or why it is not one.
fn parse_port_start(text: &str) -> Result<u16, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("`{}` is not a port number", text.trim()))
}

/// What a read of the sysctl means: its value, else the kernel's default.
fn unprivileged_ports_from(read: Result<u16, String>) -> UnprivilegedPorts {
    match read {
        Ok(start) => UnprivilegedPorts {
            start,
            assumed: None,
        },
        Err(why) => UnprivilegedPorts {
            assumed: Some(format!("cannot read {UNPRIVILEGED_PORT_START}: {why}")),
            ..UnprivilegedPorts::KERNEL_DEFAULT
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_local() {
        assert!(local_addresses().contains(&IpAddr::from([127, 0, 0, 1])));
    }

    #[test]
    fn the_sysctl_is_read_else_the_kernel_default_is_assumed_with_why() {
        assert_eq!(parse_port_start("1024\n"), Ok(1024));
        assert_eq!(parse_port_start("0\n"), Ok(0));
        let read = unprivileged_ports_from(parse_port_start("80\n"));
        assert_eq!((read.start, read.assumed), (80, None));

        let unreadable = unprivileged_ports_from(Err("No such file or directory".into()));
        assert_eq!(unreadable.start, 1024);
        let why = unreadable.assumed.expect("says why 1024 is assumed");
        assert!(
            why.contains(UNPRIVILEGED_PORT_START) && why.contains("No such file"),
            "{why}"
        );
        assert!(parse_port_start("65536").is_err());
        // Whatever this host says, it says something.
        let here = unprivileged_ports();
        assert!(here.assumed.is_none() || here.start == 1024);
    }
}

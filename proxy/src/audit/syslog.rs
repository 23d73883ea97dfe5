//! Forwards a copy of every audit record to a syslog collector (RFC 5424
//! over TCP, octet-counting framing, RFC 6587), so that the log's newest
//! records and the chain's head also live off the host: cutting records
//! after the last checkpoint is then seen by comparing with the collector.
//!
//! Best effort by design: the local log is the record of truth and access
//! never waits for the collector. Records queue in memory (bounded) while the
//! collector is unreachable and are sent when it returns; beyond the bound
//! they are counted as dropped (`jitproxy status`).

use std::{
    io::Write as _,
    net::TcpStream,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread,
    time::Duration,
};

/// Records waiting for the collector, at most.
const QUEUE: usize = 10_000;
/// Facility 13 (log audit), severity 6 (informational).
const PRI: u8 = 13 * 8 + 6;

/// The sending side, owned by the log writer.
#[derive(Debug)]
pub struct Forwarder {
    tx: mpsc::SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl Forwarder {
    /// Starts the sender thread for `addr` (`host:port`).
    pub fn start(addr: String, dropped: Arc<AtomicU64>) -> Self {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let spawned = thread::Builder::new()
            .name("jitproxy-syslog".to_owned())
            .spawn(move || run(&addr, &rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the syslog forwarder");
        }
        Self { tx, dropped }
    }

    /// Queues one record line; never blocks.
    pub fn send(&self, line: &[u8]) {
        if self.tx.try_send(line.to_vec()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One RFC 5424 message with its octet count: `LEN <PRI>1 TIME HOST APP PROCID MSGID - MSG`.
pub fn frame(record: &[u8], hostname: &str, pid: u32) -> Vec<u8> {
    let time = jiff::Timestamp::now();
    let mut msg = format!("<{PRI}>1 {time} {hostname} jitproxy {pid} audit - ").into_bytes();
    msg.extend_from_slice(record);
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(&msg);
    out
}

#[expect(
    clippy::disallowed_methods,
    reason = "the forwarder's own thread, never a runtime worker: blocking is its job"
)]
fn run(addr: &str, rx: &mpsc::Receiver<Vec<u8>>) {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "-".to_owned());
    let pid = std::process::id();
    let mut conn: Option<TcpStream> = None;
    let mut backoff = Duration::from_millis(200);
    let mut warned = false;
    // A record taken from the queue is kept until it is sent.
    let mut next: Option<Vec<u8>> = None;
    loop {
        let record = match next.take() {
            Some(r) => r,
            None => match rx.recv() {
                Ok(r) => r,
                Err(_) => return,
            },
        };
        if conn.is_none() {
            match TcpStream::connect(addr) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
                    conn = Some(s);
                    backoff = Duration::from_millis(200);
                    if warned {
                        tracing::warn!(collector = addr, "syslog collector reachable again");
                        warned = false;
                    }
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(collector = addr, error = %e, "cannot reach the syslog collector; audit records queue until it returns");
                        warned = true;
                    }
                    next = Some(record);
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            }
        }
        let framed = frame(&record, &hostname, pid);
        if let Some(stream) = conn.as_mut() {
            if stream.write_all(&framed).is_err() {
                conn = None;
                next = Some(record);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_count_their_octets() {
        let framed = frame(br#"{"seq":1}"#, "host", 42);
        let text = String::from_utf8(framed).unwrap();
        let (len, msg) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg.starts_with("<110>1 "), "{msg}");
        assert!(
            msg.ends_with(r#"host jitproxy 42 audit - {"seq":1}"#),
            "{msg}"
        );
    }
}

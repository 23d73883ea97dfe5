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

/// What separates a frame's header from the record: `... audit - `.
const RECORD_MARK: &[u8] = b" audit - ";

/// The records in a collector's copy, in order: the JSON lines carried by
/// octet-counted RFC 5424 frames (what the forwarder sends), or one record
/// per line (what collectors write to disk: a frame or a syslog line, with
/// the record after `audit - `, or the bare JSON line). Untrusted bytes: a
/// frame whose length does not fit ends the framed part, and lines with no
/// record are skipped; the caller compares what it gets.
pub fn copied_records(bytes: &[u8]) -> Vec<&[u8]> {
    let framed = bytes.iter().position(|&b| b == b' ').is_some_and(|sp| {
        sp > 0 && bytes[..sp].iter().all(u8::is_ascii_digit) && bytes.get(sp + 1) == Some(&b'<')
    });
    if framed {
        frames(bytes).into_iter().filter_map(record_of).collect()
    } else {
        bytes
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter_map(record_of)
            .collect()
    }
}

/// Splits octet-counted frames (`LEN SP MSG`), stopping at the first that
/// does not parse or is cut short.
fn frames(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some(space) = rest.iter().position(|&b| b == b' ') {
        let Some(len) = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
        else {
            break;
        };
        let Some(msg) = rest.get(space + 1..).and_then(|r| r.get(..len)) else {
            break;
        };
        out.push(msg);
        rest = &rest[space + 1 + len..];
        rest = rest.strip_prefix(b"\n").unwrap_or(rest);
    }
    out
}

/// The record in one message or line: after `audit - `, else the line
/// itself if it is a JSON object.
fn record_of(msg: &[u8]) -> Option<&[u8]> {
    let record = match msg
        .windows(RECORD_MARK.len())
        .position(|w| w == RECORD_MARK)
    {
        Some(at) => &msg[at + RECORD_MARK.len()..],
        None => msg,
    };
    record.starts_with(b"{").then_some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_read_as_frames_or_lines() {
        let mut framed = frame(br#"{"seq":1}"#, "host", 42);
        framed.extend(frame(br#"{"seq":2}"#, "host", 42));
        assert_eq!(copied_records(&framed), [br#"{"seq":1}"#, br#"{"seq":2}"#]);
        // Cut short: the whole frames are kept.
        framed.truncate(framed.len() - 3);
        assert_eq!(copied_records(&framed), [br#"{"seq":1}"#]);

        let lines = b"Dec  2 01:00:00 host jitproxy[42]: audit - {\"seq\":1}\r\n\
                      garbage\n{\"seq\":2}\n";
        assert_eq!(copied_records(lines), [br#"{"seq":1}"#, br#"{"seq":2}"#]);
        assert!(copied_records(b"").is_empty());
        assert!(copied_records(b"99999999999999999999999 <1").is_empty());
    }

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

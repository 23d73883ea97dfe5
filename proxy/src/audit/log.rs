//! The audit log writer: one thread that owns the files, so the runtime never
//! blocks on disk.
//!
//! Records are appended as JSON Lines to `audit-YYYYMMDD-NNNN.jsonl` in the
//! audit directory (0700, files 0600). Each record carries a sequence number
//! and the SHA-256 of the record line before it, across files. Events that
//! arrive together are written with one `write` and one `fsync` (group
//! commit); a durable append is acknowledged only after its fsync, and the
//! proxy forwards a connection only after that. A record that nobody waits
//! for (a connection's close, a request's completion, a refusal) reaches the
//! writer with the next durable one or within [`super::queue::LAZY`]
//! (10 ms), is written then (a killed daemon loses only what had not
//! reached the writer), and is made durable by the next durable batch's
//! fsync or within [`SYNC_DELAY`], before any checkpoint names it: a power
//! loss within that delay can lose it too.
//! Its bytes are kept in memory until an fsync succeeds; when one fails
//! (which may have dropped them from the page cache), the file is cut back
//! to what the last good fsync covered and they are written again,
//! unchanged, so the chain on disk never has a hole.
//!
//! Checkpoints of the chain head, signed with the daemon's Ed25519 key, go to
//! `checkpoints.jsonl` in the state directory (apart from the log) after the
//! first records, at least every `checkpoint_interval` while records are
//! written, at rotation and at shutdown, so that deleting the newest records
//! shows. Checkpoints form a chain of their own (each signs the hash of the
//! one before), and the log names each checkpoint (`log.checkpointed`) and
//! each file retention removes (`log.removed`, with its last record's hash):
//! a checkpoint file that loses lines, and a log that loses its oldest files
//! other than by retention, both show.
//!
//! When a write or fsync fails (disk full, permissions), the file is cut back
//! to its last good fsync, durable appends fail (the proxy refuses the
//! connection), other events wait in memory (bounded) and are written, each
//! batch with its own fsync, when the disk accepts them again; the failure is
//! reported by `jitproxy status`.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use ed25519_dalek::{Signer as _, SigningKey};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::oneshot;

use super::{
    emit,
    queue::{Queue, Taken},
    Event, EventKind, Record,
};
use crate::config::Config;

/// The hash before the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Events kept in memory while the disk refuses writes; beyond this, the
/// oldest are dropped and counted.
const MAX_PENDING: usize = 10_000;
/// Longest a written record waits for its fsync when no durable append
/// comes to share one.
const SYNC_DELAY: Duration = Duration::from_millis(100);
/// Most bytes written and not yet fsynced; a batch that would pass it is
/// fsynced at once.
const MAX_UNSYNCED: usize = 1 << 20;
/// How soon a failed write or fsync is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Where and how the log is written.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub dir: PathBuf,
    /// Signing key (0600) and its public half (`.pub`, hex).
    pub key: PathBuf,
    pub checkpoints: PathBuf,
    pub rotate_bytes: u64,
    pub retention: Duration,
    pub checkpoint_interval: Duration,
    /// Syslog collector (`host:port`) for a copy of every record.
    pub syslog: Option<String>,
}

impl AuditSettings {
    /// The settings of `config`: log in `[audit] dir` (else
    /// `<state_dir>/audit`), key and checkpoints in `state_dir`, apart from
    /// the log.
    pub fn for_config(config: &Config) -> Self {
        Self {
            dir: config.audit_dir(),
            key: config.state_dir.join("audit-signing.key"),
            checkpoints: config.state_dir.join("checkpoints.jsonl"),
            rotate_bytes: config.audit.rotate_bytes,
            retention: config.audit.retention,
            checkpoint_interval: config.audit.checkpoint_interval,
            syslog: config.audit.syslog.clone(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    #[error("audit log writer stopped")]
    Stopped,
}

/// A signed checkpoint of the chain head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub time: Timestamp,
    /// The file holding record `seq`, and its length after that record.
    pub file: String,
    pub offset: u64,
    /// SHA-256 (hex) of record `seq`'s line.
    pub head: String,
    /// SHA-256 (hex) of the previous checkpoint's line; [`GENESIS`] for the
    /// first.
    pub prev: String,
    /// Ed25519 signature (hex) of [`Checkpoint::message`].
    pub sig: String,
}

impl Checkpoint {
    /// The signed bytes.
    pub fn message(&self) -> String {
        format!(
            "jitproxy-checkpoint-v2\n{}\n{}\n{}\n{}\n{}\n{}",
            self.seq, self.time, self.file, self.offset, self.head, self.prev
        )
    }
}

/// `detail` of a `log.checkpointed` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointedDetail {
    /// The checkpointed sequence number.
    pub seq: u64,
    /// SHA-256 (hex) of the checkpoint's line in the checkpoint file.
    pub checkpoint: String,
}

/// `detail` of a `log.removed` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedDetail {
    pub file: String,
    /// The removed file's last record: its sequence number and hash.
    pub last_seq: u64,
    pub last_hash: String,
    pub why: String,
}

/// Acknowledges a durable append with its sequence number.
type Ack = oneshot::Sender<Result<u64, AuditError>>;

/// A durable append waiting for its fsync.
type Durable = (Event, Timestamp, Ack);

enum Msg {
    Append {
        // Boxed: events are large, the other messages small.
        event: Box<Event>,
        time: Timestamp,
        ack: Option<Ack>,
    },
    Checkpoint(oneshot::Sender<()>),
    Shutdown,
}

/// Shared view of the writer's health.
#[derive(Debug, Default)]
struct Health {
    failing: Mutex<Option<String>>,
    dropped: AtomicU64,
    written: AtomicU64,
    /// Events sent to the writer and not yet taken by it.
    queued: AtomicU64,
    /// Records the syslog collector did not get (queue full).
    syslog_dropped: Arc<AtomicU64>,
}

/// The proxy's end of the writer's queue; when the last clone of the
/// [`AuditLog`] goes, the writer takes what is left and stops.
struct Sender(Arc<Queue<Msg>>);

impl Sender {
    /// Queues `msg`, waking the writer if someone waits for it.
    fn send(&self, msg: Msg) -> Result<(), super::queue::WriterGone> {
        let urgent = !matches!(msg, Msg::Append { ack: None, .. });
        self.0.send(msg, urgent)
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.hang_up();
    }
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sender")
    }
}

/// A handle to the audit log; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: Arc<Sender>,
    health: Arc<Health>,
    writer: Arc<Mutex<Option<thread::JoinHandle<()>>>>,
}

impl AuditLog {
    /// Opens the log (recovering a torn last line), loads or creates the
    /// signing key, and starts the writer thread.
    pub fn open(settings: AuditSettings) -> io::Result<Self> {
        Self::start(settings, Arc::new(open_append))
    }

    /// [`AuditLog::open`], with log files opened by `open_file`.
    fn start(settings: AuditSettings, open_file: Opener) -> io::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&settings.dir)?;
        let key = load_or_create_key(&settings.key)?;
        let queue = Arc::new(Queue::new());
        let health = Arc::new(Health::default());
        let syslog = settings
            .syslog
            .clone()
            .map(|addr| super::syslog::Forwarder::start(addr, Arc::clone(&health.syslog_dropped)));
        let mut writer = Writer::open(settings, open_file, key, Arc::clone(&health), syslog)?;
        let handle = thread::Builder::new()
            .name("jitproxy-audit".to_owned())
            .spawn({
                let queue = Arc::clone(&queue);
                move || {
                    // Even if the writer panics, senders and waiters hear
                    // that it is gone.
                    struct Gone(Arc<Queue<Msg>>);
                    impl Drop for Gone {
                        fn drop(&mut self) {
                            self.0.close();
                        }
                    }
                    let gone = Gone(queue);
                    writer.run(&gone.0);
                }
            })?;
        Ok(Self {
            tx: Arc::new(Sender(queue)),
            health,
            writer: Arc::new(Mutex::new(Some(handle))),
        })
    }

    /// Appends an event; does not wait for the disk.
    pub fn record(&self, event: Event) {
        self.health.queued.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(Msg::Append {
            event: Box::new(event),
            time: Timestamp::now(),
            ack: None,
        });
    }

    /// Appends an event now, and returns a future that resolves once it is
    /// on disk (fsync), with its sequence number. (Not an `async fn`: the
    /// event is handed over at once, so the future waiting for the disk does
    /// not also hold it.)
    pub fn record_durable(
        &self,
        event: Event,
    ) -> impl std::future::Future<Output = Result<u64, AuditError>> + Send + 'static {
        let (ack, done) = oneshot::channel();
        self.health.queued.fetch_add(1, Ordering::Relaxed);
        let sent = self.tx.send(Msg::Append {
            event: Box::new(event),
            time: Timestamp::now(),
            ack: Some(ack),
        });
        async move {
            sent.map_err(|_| AuditError::Stopped)?;
            done.await.map_err(|_| AuditError::Stopped)?
        }
    }

    /// Writes a checkpoint now (if records were written since the last one).
    pub async fn checkpoint(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Checkpoint(ack)).is_ok() {
            let _ = done.await;
        }
    }

    /// Why the log cannot be written, if it cannot.
    pub fn failure(&self) -> Option<String> {
        self.health
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Events lost because the disk refused them for too long.
    pub fn dropped(&self) -> u64 {
        self.health.dropped.load(Ordering::Relaxed)
    }

    /// Records the syslog collector did not get (its queue was full).
    pub fn syslog_dropped(&self) -> u64 {
        self.health.syslog_dropped.load(Ordering::Relaxed)
    }

    /// Events waiting for the writer.
    pub fn queued(&self) -> u64 {
        self.health.queued.load(Ordering::Relaxed)
    }

    /// Records written since start.
    pub fn written(&self) -> u64 {
        self.health.written.load(Ordering::Relaxed)
    }

    /// Writes what is queued, a final checkpoint, and stops the writer.
    /// Blocks; call it off the runtime (or at the very end).
    pub fn close(&self) {
        let _ = self.tx.send(Msg::Shutdown);
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// The file operations the log's durability rests on: the writer uses the
/// real file, a test one that fails or watches them.
trait LogFile: Send {
    /// Writes all of `buf` at the end.
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file back to `len`; the next write goes there.
    fn cut_to(&mut self, len: u64) -> io::Result<()>;
}

impl LogFile for File {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        io::Write::write_all(self, buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn cut_to(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)?;
        self.seek(SeekFrom::Start(len)).map(drop)
    }
}

/// Opens a log file for appending: the file, and its length.
type Opener = Arc<dyn Fn(&Path) -> io::Result<(Box<dyn LogFile>, u64)> + Send + Sync>;

/// The writer thread's state.
struct Writer {
    settings: AuditSettings,
    open_file: Opener,
    key: SigningKey,
    health: Arc<Health>,
    file: Box<dyn LogFile>,
    file_name: String,
    /// Length of the file as the chain has it: what the last successful
    /// fsync covered, then `unsynced`.
    file_len: u64,
    /// Bytes written since the last successful fsync, kept until one
    /// succeeds: a failed fsync may have lost them, and they are then
    /// written again, unchanged.
    unsynced: Vec<u8>,
    /// Whether `unsynced` is in the file (not after a failure cut it out).
    unsynced_in_file: bool,
    /// When `unsynced` is to be fsynced if no durable batch comes first.
    sync_at: Option<Instant>,
    /// A write or fsync failed and none has succeeded since: every batch
    /// then gets its own fsync.
    failing: bool,
    /// A failed write's cut back to this length failed too, and is owed
    /// before anything else is written.
    cut_owed: Option<u64>,
    file_day: String,
    /// Hash of the last record written, and its sequence number.
    head: String,
    seq: u64,
    /// Records written since the last checkpoint, not counting the
    /// `log.checkpointed` records themselves (else an idle log would
    /// checkpoint its own checkpoint records forever).
    uncheckpointed: u64,
    /// When the last checkpoint was written; `None` before the first, so
    /// the first records are checkpointed at once.
    last_checkpoint: Option<Instant>,
    /// Hash of the last line of the checkpoint file.
    checkpoint_prev: String,
    pending: VecDeque<(Event, Timestamp)>,
    syslog: Option<super::syslog::Forwarder>,
}

impl Writer {
    fn open(
        settings: AuditSettings,
        open_file: Opener,
        key: SigningKey,
        health: Arc<Health>,
        syslog: Option<super::syslog::Forwarder>,
    ) -> io::Result<Self> {
        let files = log_files(&settings.dir)?;
        let today = day(Timestamp::now());
        // Find the chain head in the newest non-empty file.
        let mut head = GENESIS.to_owned();
        let mut seq = 0;
        let mut recovered = None;
        for name in files.iter().rev() {
            let path = settings.dir.join(name);
            let (cut, last) = recover_tail(&path)?;
            if cut > 0 {
                recovered = Some((name.clone(), cut));
            }
            if let Some(line) = last {
                let record: Record = serde_json::from_slice(&line).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "the last record of {} is not valid ({e}); run `jitproxy audit verify` and move the damaged file aside",
                            path.display()
                        ),
                    )
                })?;
                head = sha256_hex(&line);
                seq = record.seq;
                break;
            }
        }
        let (file_name, file_day) = match files.last() {
            Some(name) if name.starts_with(&format!("audit-{today}-")) => (name.clone(), today),
            Some(name) => (next_name(name, &today), today),
            None => (format!("audit-{today}-0001.jsonl"), today),
        };
        let (file, file_len) = open_file(&settings.dir.join(&file_name))?;
        let checkpoint_prev = last_checkpoint_hash(&settings.checkpoints)?;
        let mut writer = Self {
            uncheckpointed: 0,
            last_checkpoint: None,
            checkpoint_prev,
            settings,
            open_file,
            key,
            health,
            file,
            file_name,
            file_len,
            unsynced: Vec::new(),
            unsynced_in_file: true,
            sync_at: None,
            failing: false,
            cut_owed: None,
            file_day,
            head,
            seq,
            pending: VecDeque::new(),
            syslog,
        };
        if let Some((name, cut)) = recovered {
            let mut event = Event::new(EventKind::LogRecovered);
            event.detail = Some(serde_json::json!({
                "file": name,
                "torn_bytes_removed": cut,
                "why": "the daemon stopped in the middle of a write; those bytes were never acknowledged",
            }));
            writer.pending.push_back((event, Timestamp::now()));
        }
        Ok(writer)
    }

    fn run(&mut self, queue: &Queue<Msg>) {
        loop {
            let msgs = match queue.take(self.next_wake()) {
                Taken::Messages(msgs) => msgs,
                Taken::Closed => {
                    self.finish();
                    return;
                }
            };
            let mut acks = Vec::new();
            let mut checkpoint_acks = Vec::new();
            let mut shutdown = false;
            for msg in msgs {
                match msg {
                    Msg::Append { event, time, ack } => {
                        self.health.queued.fetch_sub(1, Ordering::Relaxed);
                        match ack {
                            Some(ack) => acks.push((*event, time, ack)),
                            None => self.queue(*event, time),
                        }
                    }
                    Msg::Checkpoint(ack) => checkpoint_acks.push(ack),
                    Msg::Shutdown => shutdown = true,
                }
            }
            self.flush(acks);
            if shutdown {
                self.finish();
                return;
            }
            if self.sync_at.is_some_and(|at| at <= Instant::now()) {
                self.sync();
            }
            if self.checkpoint_due() || !checkpoint_acks.is_empty() {
                self.write_checkpoint();
                // The log names the checkpoint before anyone is told.
                self.flush(Vec::new());
                if !checkpoint_acks.is_empty() {
                    self.sync();
                }
            }
            for ack in checkpoint_acks {
                let _ = ack.send(());
            }
        }
    }

    /// Writes what is queued, a last checkpoint, and the record naming it.
    fn finish(&mut self) {
        self.flush(Vec::new());
        self.write_checkpoint();
        self.flush(Vec::new());
        if !self.sync() {
            tracing::error!(
                bytes = self.unsynced.len(),
                "at shutdown, records nobody waited for could not be made durable; they are in the daemon log only"
            );
        }
    }

    fn checkpoint_due(&self) -> bool {
        self.last_checkpoint
            .is_none_or(|at| at.elapsed() >= self.settings.checkpoint_interval)
    }

    fn next_wake(&self) -> Duration {
        let wake = if self.pending.is_empty() {
            let since = self
                .last_checkpoint
                .map_or(Duration::MAX, |at| at.elapsed());
            self.settings
                .checkpoint_interval
                .saturating_sub(since)
                .max(Duration::from_millis(10))
        } else {
            // Retry writes that the disk refused.
            RETRY
        };
        self.sync_at.map_or(wake, |at| {
            wake.min(at.saturating_duration_since(Instant::now()))
        })
    }

    fn queue(&mut self, event: Event, time: Timestamp) {
        if self.pending.len() >= MAX_PENDING {
            if let Some((lost, _)) = self.pending.pop_front() {
                // The daemon log is then the only witness of it.
                emit::lost(&lost);
            }
            self.health.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.pending.push_back((event, time));
    }

    /// Writes pending events and the durable ones in `acks`, in order, with
    /// one write, and one fsync when there are durable ones (else within
    /// [`SYNC_DELAY`]); acknowledges the durable ones.
    fn flush(&mut self, acks: Vec<Durable>) {
        if self.pending.is_empty() && acks.is_empty() {
            return;
        }
        if let Err(e) = self.rotate_if_due() {
            self.fail(&format!("cannot rotate the audit log: {e}"));
        }
        let mut buf = Vec::with_capacity(256 * (self.pending.len() + acks.len()));
        let mut seq = self.seq;
        let mut head = self.head.clone();
        let mut durable_seqs = Vec::with_capacity(acks.len());
        let mut checkpointable = 0;
        let events = self
            .pending
            .iter()
            .map(|(e, t)| (e, *t))
            .chain(acks.iter().map(|(e, t, _)| (e, *t)));
        for (event, time) in events {
            seq += 1;
            if event.kind != EventKind::LogCheckpointed {
                checkpointable += 1;
            }
            let line = encode(seq, time, event, &head);
            head = sha256_hex(&line);
            buf.extend_from_slice(&line);
            buf.push(b'\n');
            durable_seqs.push(seq);
        }
        // Nobody waits for a batch without durable appends: its fsync can wait
        // for the next one's, unless the disk has been failing.
        let sync =
            !acks.is_empty() || self.failing || self.unsynced.len() + buf.len() > MAX_UNSYNCED;
        match self.write(&buf, sync) {
            Ok(()) => {
                let written = seq - self.seq;
                self.seq = seq;
                self.head = head;
                self.uncheckpointed += checkpointable;
                self.health.written.fetch_add(written, Ordering::Relaxed);
                self.recovered();
                let first_durable = durable_seqs.len() - acks.len();
                let mut durable = Vec::with_capacity(acks.len());
                for ((event, _, ack), seq) in acks.into_iter().zip(&durable_seqs[first_durable..]) {
                    let _ = ack.send(Ok(*seq));
                    durable.push(event);
                }
                // The daemon log gets what is written (fsynced, unless nobody
                // waits for it), from the same values, once no connection
                // waits for this batch any more.
                for (event, _) in self.pending.drain(..) {
                    emit::daemon_log(&event);
                }
                for event in &durable {
                    emit::daemon_log(event);
                }
            }
            Err(e) => {
                let why = format!(
                    "cannot write {}: {e}",
                    self.settings.dir.join(&self.file_name).display()
                );
                self.fail(&why);
                // Durable events fail now: their connections are refused, and
                // their "allowed" records must never appear later.
                for (_, _, ack) in acks {
                    let _ = ack.send(Err(AuditError::Unavailable(why.clone())));
                }
            }
        }
    }

    /// Appends `buf` after what is written (first writing again what a
    /// failure cut out), and fsyncs if `sync`. On failure, cuts the file back
    /// to what the last good fsync covered: what is kept in memory is
    /// written again next time, and `buf`'s records are not in the chain.
    fn write(&mut self, buf: &[u8], sync: bool) -> io::Result<()> {
        let synced_len = self.file_len - self.unsynced.len() as u64;
        match self.write_and_sync(buf, sync) {
            Ok(()) => {
                self.file_len += buf.len() as u64;
                if sync {
                    // The collector gets only what is on disk: a record it
                    // had and the disk lost would look like tampering.
                    forward(self.syslog.as_ref(), &self.unsynced);
                    forward(self.syslog.as_ref(), buf);
                    self.unsynced.clear();
                    self.sync_at = None;
                } else {
                    self.unsynced.extend_from_slice(buf);
                    self.sync_at
                        .get_or_insert_with(|| Instant::now() + SYNC_DELAY);
                }
                Ok(())
            }
            Err(e) => {
                // If even the cut fails, nothing is written until it is done:
                // appending after bytes still there would break the chain.
                if self.file.cut_to(synced_len).is_err() {
                    self.cut_owed = Some(synced_len);
                }
                self.unsynced_in_file = false;
                Err(e)
            }
        }
    }

    fn write_and_sync(&mut self, buf: &[u8], sync: bool) -> io::Result<()> {
        if let Some(len) = self.cut_owed {
            self.file.cut_to(len)?;
            self.cut_owed = None;
        }
        if !self.unsynced_in_file {
            self.file.append(&self.unsynced)?;
            self.unsynced_in_file = true;
        }
        self.file.append(buf)?;
        if sync {
            let started = Instant::now();
            self.file.sync_data()?;
            crate::metrics::METRICS.synced(started.elapsed());
        }
        Ok(())
    }

    /// fsyncs what was written without one; `false` if the disk refused
    /// (reported like a failed write, and tried again in [`RETRY`]).
    fn sync(&mut self) -> bool {
        if self.unsynced.is_empty() && self.cut_owed.is_none() {
            self.sync_at = None;
            return true;
        }
        match self.write(&[], true) {
            Ok(()) => {
                self.recovered();
                true
            }
            Err(e) => {
                let why = format!(
                    "cannot fsync {}: {e}",
                    self.settings.dir.join(&self.file_name).display()
                );
                self.fail(&why);
                self.sync_at = Some(Instant::now() + RETRY);
                false
            }
        }
    }

    fn fail(&mut self, why: &str) {
        self.failing = true;
        let mut failing = self
            .health
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if failing.as_deref() != Some(why) {
            tracing::error!(error = %why, "audit log cannot be written; connections to targets are refused until it can");
        }
        *failing = Some(why.to_owned());
    }

    fn recovered(&mut self) {
        self.failing = false;
        let mut failing = self
            .health
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if failing.take().is_some() {
            tracing::warn!("audit log writable again; connections to targets are allowed again");
        }
    }

    /// Starts a new file when the day changed or the file is too big; the new
    /// file's first record says so (and links to the old file's last).
    fn rotate_if_due(&mut self) -> io::Result<()> {
        let today = day(Timestamp::now());
        if self.file_len < self.settings.rotate_bytes && today == self.file_day {
            return Ok(());
        }
        if self.file_len == 0 {
            return Ok(());
        }
        // The old file's records are on disk before a checkpoint or the new
        // file names them.
        if !self.sync() {
            return Err(io::Error::other("the old file's fsync failed"));
        }
        self.write_checkpoint();
        let old = self.file_name.clone();
        let name = next_name(&old, &today);
        let (file, len) = (self.open_file)(&self.settings.dir.join(&name))?;
        self.file = file;
        self.file_len = len;
        self.unsynced_in_file = true;
        self.file_name = name;
        self.file_day = today;
        let mut event = Event::new(EventKind::LogRotated);
        event.detail = Some(serde_json::json!({ "previous_file": old }));
        self.pending.push_front((event, Timestamp::now()));
        self.remove_expired();
        Ok(())
    }

    /// Retention: removes log files, oldest first, not modified for
    /// `retention`; the log records each removal with the removed file's
    /// last record, where the chain now starts. Stops at the first file it
    /// keeps, so the files left are always one unbroken run.
    fn remove_expired(&mut self) {
        let Ok(files) = log_files(&self.settings.dir) else {
            return;
        };
        let now = SystemTime::now();
        for name in files.iter().filter(|n| **n != self.file_name) {
            let path = self.settings.dir.join(name);
            let old = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > self.settings.retention);
            if !old {
                return;
            }
            let Some((last_seq, last_hash)) = last_record(&path) else {
                return;
            };
            if fs::remove_file(&path).is_err() {
                return;
            }
            tracing::info!(file = %path.display(), "audit log file removed by retention");
            let mut event = Event::new(EventKind::LogRemoved);
            event.detail = serde_json::to_value(RemovedDetail {
                file: name.clone(),
                last_seq,
                last_hash,
                why: "retention".to_owned(),
            })
            .ok();
            self.pending.push_back((event, Timestamp::now()));
        }
    }

    /// Signs the chain head into the checkpoint file and queues the
    /// `log.checkpointed` record naming it; nothing when no record was
    /// written since the last one.
    fn write_checkpoint(&mut self) {
        self.last_checkpoint = Some(Instant::now());
        // A checkpoint names only records that are on disk.
        if self.uncheckpointed == 0 || !self.sync() {
            return;
        }
        let mut cp = Checkpoint {
            seq: self.seq,
            time: Timestamp::now(),
            file: self.file_name.clone(),
            offset: self.file_len,
            head: self.head.clone(),
            prev: self.checkpoint_prev.clone(),
            sig: String::new(),
        };
        cp.sig = hex(&self.key.sign(cp.message().as_bytes()).to_bytes());
        let mut line = serde_json::to_vec(&cp).unwrap_or_default();
        let hash = sha256_hex(&line);
        line.push(b'\n');
        let result = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.settings.checkpoints)
            .and_then(|mut f| f.write_all(&line).and_then(|()| f.sync_data()));
        match result {
            Ok(()) => {
                self.checkpoint_prev = hash.clone();
                self.uncheckpointed = 0;
                let mut event = Event::new(EventKind::LogCheckpointed);
                event.detail = serde_json::to_value(CheckpointedDetail {
                    seq: cp.seq,
                    checkpoint: hash,
                })
                .ok();
                self.queue(event, Timestamp::now());
            }
            Err(e) => tracing::error!(error = %e, "cannot write an audit checkpoint"),
        }
    }
}

/// Sends each line of `bytes` to the syslog collector, if there is one.
fn forward(syslog: Option<&super::syslog::Forwarder>, bytes: &[u8]) {
    if let Some(syslog) = syslog {
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            syslog.send(line);
        }
    }
}

/// Hash of the checkpoint file's last whole line (a torn one is cut off);
/// [`GENESIS`] when there is none.
fn last_checkpoint_hash(path: &Path) -> io::Result<String> {
    match recover_tail(path) {
        Ok((_, Some(line))) => Ok(sha256_hex(&line)),
        Ok((_, None)) => Ok(GENESIS.to_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(GENESIS.to_owned()),
        Err(e) => Err(e),
    }
}

/// The last record of a log file: its sequence number and hash.
fn last_record(path: &Path) -> Option<(u64, String)> {
    let data = fs::read(path).ok()?;
    let line = last_whole_line(&data)?;
    let record: Record = serde_json::from_slice(line).ok()?;
    Some((record.seq, sha256_hex(line)))
}

/// The last line of `data` that ends in a newline (without it); `None` if
/// there is none or it is empty.
fn last_whole_line(data: &[u8]) -> Option<&[u8]> {
    let whole = &data[..data.iter().rposition(|&b| b == b'\n')?];
    Some(whole.rsplit(|&b| b == b'\n').next().unwrap_or(whole)).filter(|l| !l.is_empty())
}

/// One record line (no newline). Serialized from borrowed parts: the same
/// JSON as [`Record`], without copying the event.
fn encode(seq: u64, time: Timestamp, event: &Event, prev: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct RecordRef<'a> {
        seq: u64,
        time: Timestamp,
        #[serde(flatten)]
        event: &'a Event,
        prev: &'a str,
    }
    // Serializing plain data to a Vec does not fail.
    serde_json::to_vec(&RecordRef {
        seq,
        time,
        event,
        prev,
    })
    .unwrap_or_default()
}

/// Log files in the directory, oldest first (names sort by time).
pub fn log_files(dir: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        .collect();
    names.sort();
    Ok(names)
}

/// The name after `name`: the next number today, or 0001 of a new day.
fn next_name(name: &str, today: &str) -> String {
    let number = name
        .strip_prefix(&format!("audit-{today}-"))
        .and_then(|rest| rest.strip_suffix(".jsonl"))
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    format!("audit-{today}-{:04}.jsonl", number + 1)
}

fn day(t: Timestamp) -> String {
    t.strftime("%Y%m%d").to_string()
}

fn open_append(path: &Path) -> io::Result<(Box<dyn LogFile>, u64)> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let len = file.metadata()?.len();
    Ok((Box::new(file), len))
}

/// Removes a torn last line (no trailing newline) left by a crash in the
/// middle of a write; returns the bytes removed and the last whole line.
pub(crate) fn recover_tail(path: &Path) -> io::Result<(u64, Option<Vec<u8>>)> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let cut = (data.len() - keep) as u64;
    if cut > 0 {
        file.set_len(keep as u64)?;
        file.sync_data()?;
    }
    Ok((cut, last_whole_line(&data).map(<[u8]>::to_vec)))
}

/// Loads the signing key, or creates one (0600) with its public half beside it.
pub(crate) fn load_or_create_key(path: &Path) -> io::Result<SigningKey> {
    match fs::read(path) {
        Ok(bytes) => {
            let bytes: [u8; 32] = bytes.try_into().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a 32-byte Ed25519 key", path.display()),
                )
            })?;
            Ok(SigningKey::from_bytes(&bytes))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
            let mut seed = [0u8; 32];
            File::open("/dev/urandom")?.read_exact(&mut seed)?;
            let key = SigningKey::from_bytes(&seed);
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            file.write_all(&seed)?;
            file.sync_all()?;
            fs::write(
                public_key_path(path),
                hex(key.verifying_key().as_bytes()) + "\n",
            )?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

/// Where the public half of a signing key is kept.
pub fn public_key_path(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    // Two records' hashes per request in inspect mode: `write!` per byte
    // showed in the writer's profile.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> AuditSettings {
        AuditSettings {
            dir: dir.join("audit"),
            key: dir.join("audit-signing.key"),
            checkpoints: dir.join("checkpoints.jsonl"),
            rotate_bytes: 1 << 20,
            retention: Duration::from_secs(3600),
            checkpoint_interval: Duration::from_secs(60),
            syslog: None,
        }
    }

    #[tokio::test]
    async fn durable_records_chain_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(settings(dir.path())).unwrap();
        let a = log
            .record_durable(Event::new(EventKind::DaemonStarted))
            .await
            .unwrap();
        log.record(Event::new(EventKind::ConfigLoaded));
        let b = log
            .record_durable(Event::new(EventKind::ConnectionAllowed))
            .await
            .unwrap();
        // The first records are checkpointed at once, and the log says so
        // (seq 2) before anything after them.
        assert_eq!((a, b), (1, 4));
        tokio::task::spawn_blocking(move || log.close())
            .await
            .unwrap();
        let verify = || {
            let s = settings(dir.path());
            crate::audit::verify::verify(&s.dir, &s.checkpoints, None).unwrap()
        };
        let closed = verify();
        assert!(closed.problems.is_empty(), "{:?}", closed.problems);

        let log = AuditLog::open(settings(dir.path())).unwrap();
        let c = log
            .record_durable(Event::new(EventKind::DaemonStarted))
            .await
            .unwrap();
        assert_eq!(
            Some(c),
            closed.last_seq.map(|s| s + 1),
            "sequence continues after reopen"
        );
        tokio::task::spawn_blocking(move || log.close())
            .await
            .unwrap();
        let report = verify();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        // The first records of each run, and the close of the first (the
        // second wrote nothing after its first checkpoint but that
        // checkpoint's own record).
        assert_eq!(report.checkpoints, 3);
    }

    /// A log file that says how far `sync_data` has returned, and can be
    /// told to fail it (a disk that takes writes but cannot flush them); a
    /// failed `sync_data` drops what it did not sync, as the kernel may.
    struct Watched {
        file: File,
        written: u64,
        synced: Arc<AtomicU64>,
        fail_sync: Arc<std::sync::atomic::AtomicBool>,
        /// A sick disk: an append writes half its bytes and fails, and a
        /// cut fails.
        sick: Arc<std::sync::atomic::AtomicBool>,
    }

    impl LogFile for Watched {
        fn append(&mut self, buf: &[u8]) -> io::Result<()> {
            if self.sick.load(Ordering::SeqCst) {
                let half = &buf[..buf.len() / 2];
                self.file.append(half)?;
                self.written += half.len() as u64;
                return Err(io::Error::other("write failed half way (test)"));
            }
            self.file.append(buf)?;
            self.written += buf.len() as u64;
            Ok(())
        }

        fn sync_data(&mut self) -> io::Result<()> {
            if self.fail_sync.load(Ordering::SeqCst) {
                let synced = self.synced.load(Ordering::SeqCst);
                self.file.set_len(synced)?;
                self.written = synced;
                return Err(io::Error::other("fsync failed (test)"));
            }
            LogFile::sync_data(&mut self.file)?;
            self.synced.store(self.written, Ordering::SeqCst);
            Ok(())
        }

        fn cut_to(&mut self, len: u64) -> io::Result<()> {
            if self.sick.load(Ordering::SeqCst) {
                return Err(io::Error::other("cut failed (test)"));
            }
            self.file.cut_to(len)?;
            self.written = len;
            Ok(())
        }
    }

    /// Opens log files as [`Watched`], reporting to `synced`, failing
    /// fsyncs while `fail_sync` is set, and failing writes and cuts while
    /// `sick` is.
    fn watched(
        synced: &Arc<AtomicU64>,
        fail_sync: &Arc<std::sync::atomic::AtomicBool>,
        sick: &Arc<std::sync::atomic::AtomicBool>,
    ) -> Opener {
        let (synced, fail_sync, sick) =
            (Arc::clone(synced), Arc::clone(fail_sync), Arc::clone(sick));
        Arc::new(move |path: &Path| {
            let (_, len) = open_append(path)?;
            let file = OpenOptions::new().append(true).open(path)?;
            synced.store(len, Ordering::SeqCst);
            let watched = Watched {
                file,
                written: len,
                synced: Arc::clone(&synced),
                fail_sync: Arc::clone(&fail_sync),
                sick: Arc::clone(&sick),
            };
            Ok((Box::new(watched) as Box<dyn LogFile>, len))
        })
    }

    /// A log on [`Watched`] files, and the knobs of their faults.
    struct WatchedLog {
        dir: tempfile::TempDir,
        log: AuditLog,
        synced: Arc<AtomicU64>,
        fail_sync: Arc<std::sync::atomic::AtomicBool>,
        sick: Arc<std::sync::atomic::AtomicBool>,
    }

    impl WatchedLog {
        fn start() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let (synced, fail_sync, sick) = (Arc::default(), Arc::default(), Arc::default());
            let log =
                AuditLog::start(settings(dir.path()), watched(&synced, &fail_sync, &sick)).unwrap();
            Self {
                dir,
                log,
                synced,
                fail_sync,
                sick,
            }
        }

        /// Past its first durable record and the checkpoint that the first
        /// records get at once.
        async fn past_first_checkpoint() -> Self {
            let watched = Self::start();
            watched
                .log
                .record_durable(Event::new(EventKind::ConnectionAllowed))
                .await
                .unwrap();
            watched.log.checkpoint().await;
            watched
        }
    }

    /// The records of the (one) log file, and where each ends in it.
    fn records_with_ends(dir: &Path) -> Vec<(Record, u64)> {
        let files = log_files(&settings(dir).dir).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        let data = fs::read(settings(dir).dir.join(&files[0])).unwrap();
        let mut offset = 0u64;
        // Only whole lines: the writer may be in the middle of one.
        data.split_inclusive(|&b| b == b'\n')
            .filter(|line| line.ends_with(b"\n"))
            .map(|line| {
                offset += line.len() as u64;
                (serde_json::from_slice(line).unwrap(), offset)
            })
            .collect()
    }

    fn assert_verifies(dir: &Path) {
        let s = settings(dir);
        let report = crate::audit::verify::verify(&s.dir, &s.checkpoints, None).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    /// Durable appends are acknowledged only once `sync_data` has returned
    /// for their bytes, and one whose fsync fails is refused and never
    /// appears: `kill -9` keeps the page cache, so no crash test can show
    /// this.
    #[tokio::test]
    async fn a_durable_append_is_acknowledged_only_after_its_fsync() {
        let WatchedLog {
            dir,
            log,
            synced,
            fail_sync,
            ..
        } = WatchedLog::start();
        let mut acked = Vec::new();
        for _ in 0..20 {
            let seq = log
                .record_durable(Event::new(EventKind::ConnectionAllowed))
                .await
                .unwrap();
            acked.push((seq, synced.load(Ordering::SeqCst)));
        }
        fail_sync.store(true, Ordering::SeqCst);
        let mut refused = Event::new(EventKind::ConnectionAllowed);
        refused.reason = Some("must never appear".to_owned());
        let err = log.record_durable(refused).await.unwrap_err();
        assert!(matches!(err, AuditError::Unavailable(_)), "{err:?}");
        fail_sync.store(false, Ordering::SeqCst);
        let after = log
            .record_durable(Event::new(EventKind::ConnectionAllowed))
            .await
            .unwrap();
        acked.push((after, synced.load(Ordering::SeqCst)));
        tokio::task::spawn_blocking(move || log.close())
            .await
            .unwrap();

        let mut ends = std::collections::HashMap::new();
        for (record, end) in records_with_ends(dir.path()) {
            assert_ne!(record.event.reason.as_deref(), Some("must never appear"));
            ends.insert(record.seq, end);
        }
        for (seq, synced_at_ack) in acked {
            assert!(
                synced_at_ack >= ends[&seq],
                "seq {seq} acknowledged with {synced_at_ack} bytes synced, but it ends at {}",
                ends[&seq]
            );
        }
        assert_verifies(dir.path());
    }

    /// A record nobody waits for is in the file within LAZY (a killed
    /// daemon keeps it: the page cache survives) and on disk within
    /// SYNC_DELAY, or with the next durable append, whichever comes first.
    #[tokio::test]
    async fn a_record_nobody_waits_for_is_written_soon_and_synced_soon() {
        let WatchedLog {
            dir, log, synced, ..
        } = WatchedLog::past_first_checkpoint().await;
        let file_len = || {
            records_with_ends(dir.path())
                .last()
                .map_or(0, |(_, end)| *end)
        };
        let wait_written = |before: u64| async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while file_len() == before {
                assert!(Instant::now() < deadline, "the record was never written");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };

        // Alone: written now, synced after the delay.
        let before = file_len();
        log.record(Event::new(EventKind::ConnectionClosed));
        wait_written(before).await;
        let written = file_len();
        let deadline = Instant::now() + SYNC_DELAY + Duration::from_secs(5);
        while synced.load(Ordering::SeqCst) < written {
            assert!(Instant::now() < deadline, "never synced");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // Followed by a durable append: synced by its fsync.
        log.record(Event::new(EventKind::ConnectionClosed));
        log.record_durable(Event::new(EventKind::ConnectionAllowed))
            .await
            .unwrap();
        assert_eq!(synced.load(Ordering::SeqCst), file_len());
        tokio::task::spawn_blocking(move || log.close())
            .await
            .unwrap();
        assert_verifies(dir.path());
    }

    /// Records written without an fsync, which a failed fsync then drops,
    /// are written again, unchanged, once the disk recovers: the chain on
    /// disk has no hole, and the durable append of the failed batch is not
    /// in it.
    #[tokio::test]
    async fn records_a_failed_fsync_dropped_are_written_again() {
        let WatchedLog {
            dir,
            log,
            fail_sync,
            ..
        } = WatchedLog::past_first_checkpoint().await;

        fail_sync.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            let mut closed = Event::new(EventKind::ConnectionClosed);
            closed.reason = Some("kept".to_owned());
            log.record(closed);
        }
        // Written, not yet synced (the fsync SYNC_DELAY later fails too).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !records_with_ends(dir.path())
            .iter()
            .any(|(record, _)| record.event.reason.as_deref() == Some("kept"))
        {
            assert!(Instant::now() < deadline, "the records were never written");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut refused = Event::new(EventKind::ConnectionAllowed);
        refused.reason = Some("must never appear".to_owned());
        let err = log.record_durable(refused).await.unwrap_err();
        assert!(matches!(err, AuditError::Unavailable(_)), "{err:?}");
        assert!(log.failure().is_some());
        fail_sync.store(false, Ordering::SeqCst);
        log.record_durable(Event::new(EventKind::ConnectionAllowed))
            .await
            .unwrap();
        assert!(log.failure().is_none());
        tokio::task::spawn_blocking(move || log.close())
            .await
            .unwrap();

        let records = records_with_ends(dir.path());
        let reasons = |r: &str| {
            records
                .iter()
                .filter(|(record, _)| record.event.reason.as_deref() == Some(r))
                .count()
        };
        assert_eq!(reasons("kept"), 3);
        assert_eq!(reasons("must never appear"), 0);
        assert_verifies(dir.path());
    }

    /// A write that fails half way on a disk where the cut back fails too:
    /// nothing more is written until the cut is done, so the file never
    /// holds the half record, nor the refused durable one, nor a record
    /// twice.
    #[tokio::test]
    async fn a_failed_cut_is_done_before_anything_else_is_written() {
        let WatchedLog { dir, log, sick, .. } = WatchedLog::past_first_checkpoint().await;

        sick.store(true, Ordering::SeqCst);
        let mut refused = Event::new(EventKind::ConnectionAllowed);
        refused.reason = Some("must never appear".to_owned());
        assert!(log.record_durable(refused.clone()).await.is_err());
        assert!(log.record_durable(refused).await.is_err());
        sick.store(false, Ordering::SeqCst);
        log.record_durable(Event::new(EventKind::ConnectionAllowed))
            .await
            .unwrap();
        tokio::task::spawn_blocking(move || log.close())
            .await
            .unwrap();

        let files = log_files(&settings(dir.path()).dir).unwrap();
        let data = fs::read(settings(dir.path()).dir.join(&files[0])).unwrap();
        assert!(data.ends_with(b"\n"), "a torn line is left");
        let records = records_with_ends(dir.path());
        assert!(records
            .iter()
            .all(|(r, _)| r.event.reason.as_deref() != Some("must never appear")));
        let mut seqs: Vec<u64> = records.iter().map(|(r, _)| r.seq).collect();
        seqs.dedup();
        assert_eq!(seqs.len(), records.len(), "a record is there twice");
        assert_verifies(dir.path());
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
    }

    #[test]
    fn torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit-20260101-0001.jsonl");
        fs::write(&path, b"{\"a\":1}\n{\"b\":").unwrap();
        let (cut, last) = recover_tail(&path).unwrap();
        assert_eq!(cut, 5);
        assert_eq!(last.unwrap(), b"{\"a\":1}");
        assert_eq!(fs::read(&path).unwrap(), b"{\"a\":1}\n");
    }

    #[test]
    fn names_roll_by_day_and_number() {
        assert_eq!(
            next_name("audit-20260101-0001.jsonl", "20260101"),
            "audit-20260101-0002.jsonl"
        );
        assert_eq!(
            next_name("audit-20260101-0007.jsonl", "20260102"),
            "audit-20260102-0001.jsonl"
        );
    }
}

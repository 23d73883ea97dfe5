//! What the fuzz targets share: scratch directories, one Tokio runtime, and
//! an audit log written by the real writer with a fixed key.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use jitproxy::audit::{
    log::{hex, public_key_path},
    AuditLog, AuditSettings, Event, EventKind,
};
use tempfile::TempDir;

/// A fresh directory, in memory when the machine has /dev/shm: the targets
/// write files on every run, and fsync there costs nothing.
pub fn scratch() -> TempDir {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    dir.expect("a scratch directory")
}

/// One single-threaded runtime for the whole process (its timers drive
/// hyper's; blocking work goes to its pool).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a Tokio runtime")
    })
}

/// The audit signing key of [`written_log`], fixed so that inputs that
/// carry its signatures stay valid from run to run.
const KEY_SEED: [u8; 32] = *b"jitproxy fuzz audit signing key!";

/// An audit log's files as the daemon leaves them: the log directory's
/// files and the checkpoint file, as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// Log files by name, oldest first; `None` for a deleted one.
    pub logs: Vec<(String, Option<Vec<u8>>)>,
    pub checkpoints: Option<Vec<u8>>,
}

impl Files {
    /// Writes the files to `dir`; returns the log directory and the
    /// checkpoint file's path.
    pub fn write_to(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let audit = dir.join("audit");
        let checkpoints = dir.join("checkpoints.jsonl");
        fs::create_dir(&audit).expect("the audit directory");
        for (name, data) in &self.logs {
            if let Some(data) = data {
                fs::write(audit.join(name), data).expect("a log file");
            }
        }
        if let Some(data) = &self.checkpoints {
            fs::write(&checkpoints, data).expect("the checkpoint file");
        }
        (audit, checkpoints)
    }
}

/// A log that the real writer wrote (see [`written_log`]).
#[derive(Debug)]
pub struct WrittenLog {
    _dir: TempDir,
    pub audit: PathBuf,
    pub checkpoints: PathBuf,
    /// The hex public key that verifies its checkpoints.
    pub public_key: PathBuf,
    pub files: Files,
}

/// A log written once per process by [`AuditLog`] with the fixed key, with
/// everything `audit verify` checks: several files (rotation), signed
/// checkpoints naming their predecessors, `log.checkpointed` records, a
/// restart, and an oldest file removed by retention (`log.removed`).
pub fn written_log() -> &'static WrittenLog {
    static LOG: OnceLock<WrittenLog> = OnceLock::new();
    LOG.get_or_init(WrittenLog::write)
}

impl WrittenLog {
    fn write() -> Self {
        let dir = scratch();
        let settings = AuditSettings {
            dir: dir.path().join("audit"),
            key: dir.path().join("audit-signing.key"),
            checkpoints: dir.path().join("checkpoints.jsonl"),
            // A new file every few records.
            rotate_bytes: 600,
            retention: Duration::from_secs(3600),
            checkpoint_interval: Duration::from_secs(3600),
            syslog: None,
        };
        let key = ed25519_dalek::SigningKey::from_bytes(&KEY_SEED);
        fs::write(&settings.key, KEY_SEED).expect("the signing key");
        let public_key = public_key_path(&settings.key);
        fs::write(&public_key, hex(key.verifying_key().as_bytes()) + "\n").expect("the public key");

        write_rounds(&settings, 2);
        // The oldest file ages past retention; the next run's first
        // rotation removes it and says so.
        let oldest = jitproxy::audit::log::log_files(&settings.dir).expect("log files")[0].clone();
        fs::File::options()
            .write(true)
            .open(settings.dir.join(oldest))
            .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(7200)))
            .expect("aging the oldest file");
        write_rounds(&settings, 2);

        let files = Files {
            logs: jitproxy::audit::log::log_files(&settings.dir)
                .expect("log files")
                .into_iter()
                .map(|name| {
                    let data = fs::read(settings.dir.join(&name)).expect("a log file");
                    (name, Some(data))
                })
                .collect(),
            checkpoints: Some(fs::read(&settings.checkpoints).expect("checkpoints")),
        };
        Self {
            audit: settings.dir,
            checkpoints: settings.checkpoints,
            public_key,
            files,
            _dir: dir,
        }
    }
}

/// One daemon run: `rounds` times a few events and a checkpoint, then the
/// close (a last checkpoint).
fn write_rounds(settings: &AuditSettings, rounds: usize) {
    let log = AuditLog::open(settings.clone()).expect("opening the audit log");
    runtime().block_on(async {
        for _ in 0..rounds {
            for kind in [
                EventKind::ConnectionAllowed,
                EventKind::GrantCreated,
                EventKind::ConnectionDenied,
            ] {
                log.record_durable(Event::new(kind))
                    .await
                    .expect("a durable record");
            }
            log.checkpoint().await;
        }
    });
    log.close();
}

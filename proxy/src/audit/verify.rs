//! `jitproxy audit verify`: checks the hash chain of every log file, in
//! order, the chain of signed checkpoints, and what each says of the other,
//! and names the first bad place.
//!
//! What each check catches:
//! - a changed byte: the record no longer parses, or its hash no longer
//!   matches the `prev` of the record after it, or a checkpoint's head;
//! - a deleted, inserted or reordered record: the sequence jumps or goes
//!   back, and `prev` breaks;
//! - a checkpointed record rewritten with the chain after it recomputed: its
//!   hash no longer matches the signed head;
//! - deleted newest records: a checkpoint names a sequence number past the
//!   end of the log;
//! - a deleted or cut checkpoint file: the log names checkpoints
//!   (`log.checkpointed`) that the file lacks; a checkpoint taken out of the
//!   middle breaks the checkpoints' own chain;
//! - deleted oldest files: the chain starts after a record that no
//!   `log.removed` record (retention) accounts for;
//! - an edited checkpoint, or one signed by another key: its signature fails.
//!
//! Records written after the newest checkpoint are covered by the chain only:
//! cutting them off (together with the `log.checkpointed` records naming
//! the newest checkpoints, and those checkpoints) is seen at the next
//! checkpoint (at most a minute later, or at shutdown), or by comparing with
//! the syslog collector's copy (`verify --copy`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt, fs, io,
    path::Path,
};

use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};

use super::{
    log::{log_files, sha256_hex, Checkpoint, CheckpointedDetail, RemovedDetail, GENESIS},
    EventKind, Record,
};

/// What verification found.
#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub checkpoints: usize,
    /// Problems in the order found; the first names the first bad place.
    pub problems: Vec<Problem>,
    /// Notes that are not failures (e.g. the chain starts after files removed
    /// by retention).
    pub notes: Vec<String>,
}

impl Report {
    fn problem(&mut self, place: impl Into<String>, what: impl Into<String>) {
        self.problems.push(Problem::new(place, what));
    }
}

/// One problem: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub place: String,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.what)
    }
}

/// What the log says, gathered in one pass.
#[derive(Debug, Default)]
struct Log {
    /// Hash and place of every record, by sequence number.
    records: HashMap<u64, (String, String)>,
    /// The first record: its `prev`, and where it is.
    start: Option<(String, u64, String)>,
    /// `log.checkpointed` records: (the checkpoint's hash, its seq, place).
    checkpointed: Vec<(String, u64, String)>,
    /// `log.removed` records: the last hashes of files retention removed.
    removed: HashMap<String, RemovedDetail>,
}

/// One line of the checkpoint file.
struct CheckpointLine {
    line: usize,
    hash: String,
    checkpoint: Checkpoint,
}

/// Verifies the logs in `dir` against the checkpoints in `checkpoints`,
/// whose signatures are checked with the hex public key in `public_key`
/// (default: `<checkpoints dir>/audit-signing.key.pub`).
pub fn verify(dir: &Path, checkpoints: &Path, public_key: Option<&Path>) -> io::Result<Report> {
    let mut report = Report::default();
    let files = log_files(dir)?;
    report.files = files.len();
    let log = read_log(dir, &files, &mut report)?;
    check_start(&log, &mut report);
    let cps = read_checkpoints(checkpoints, &mut report)?;
    let key = load_public_key(public_key, checkpoints, &mut report);
    check_checkpoints(&cps, &log, key.as_ref(), checkpoints, &mut report);
    check_named_checkpoints(&cps, &log, checkpoints, &mut report);
    report.checkpoints = cps.len();
    Ok(report)
}

/// What comparing a collector's copy with the local log found.
#[derive(Debug, Default)]
pub struct CopyReport {
    /// Records in the copy.
    pub records: usize,
    /// Differences, by sequence number: the first names the first record
    /// that differs or is missing on either side.
    pub problems: Vec<Problem>,
    pub notes: Vec<String>,
}

/// Compares the records in `copy` (a collector's bytes: RFC 5424 frames or
/// lines, see [`super::syslog::copied_records`]) with the local log in
/// `dir`, record by record (byte for byte, by hash). Within the copy's
/// range every record must be on both sides and the same; local records
/// before or after it are only noted (the collector started later, or has
/// not got the newest yet), copy records before the local log's start
/// too (retention).
pub fn compare_copy(dir: &Path, copy: &[u8]) -> io::Result<CopyReport> {
    let files = log_files(dir)?;
    let log = read_log(dir, &files, &mut Report::default())?;
    let mut out = CopyReport::default();
    let mut copied: BTreeMap<u64, String> = BTreeMap::new();
    let mut problems: Vec<(u64, Problem)> = Vec::new();
    for (i, record) in super::syslog::copied_records(copy).into_iter().enumerate() {
        out.records += 1;
        let place = format!("copy record #{}", i + 1);
        let Ok(Seq { seq }) = serde_json::from_slice::<Seq>(record) else {
            problems.push((0, Problem::new(place, "not an audit record")));
            continue;
        };
        let hash = sha256_hex(record);
        match copied.get(&seq) {
            Some(seen) if *seen != hash => problems.push((
                seq,
                Problem::new(
                    place,
                    format!("seq {seq} appears twice in the copy, differently"),
                ),
            )),
            Some(_) => {}
            None => {
                copied.insert(seq, hash);
            }
        }
    }
    let (Some(&first), Some(&last)) = (copied.keys().next(), copied.keys().next_back()) else {
        out.notes.push("the copy holds no records".to_owned());
        return Ok(out);
    };
    let local_first = log.records.keys().min().copied();
    for (&seq, hash) in &copied {
        match log.records.get(&seq) {
            Some((local, _)) if local == hash => {}
            Some((_, place)) => problems.push((
                seq,
                Problem::new(
                    place.as_str(),
                    format!("record seq {seq} differs from the collector's copy"),
                ),
            )),
            None if local_first.is_some_and(|f| seq < f) => {}
            None => problems.push((
                seq,
                Problem::new(
                    format!("seq {seq}"),
                    "the collector has this record, the local log does not: it was removed locally",
                ),
            )),
        }
    }
    let mut before = 0;
    let mut after = 0;
    for (&seq, (_, place)) in &log.records {
        if seq < first {
            before += 1;
        } else if seq > last {
            after += 1;
        } else if !copied.contains_key(&seq) {
            problems.push((
                seq,
                Problem::new(
                    place.as_str(),
                    format!("record seq {seq} is missing from the copy (lost on the way? `jitproxy status` counts syslog drops)"),
                ),
            ));
        }
    }
    if before > 0 {
        out.notes.push(format!(
            "the copy starts at seq {first}; {before} older local record(s) are not in it"
        ));
    }
    if after > 0 {
        out.notes.push(format!(
            "the copy ends at seq {last}; {after} newer local record(s) are not in it (not delivered yet)"
        ));
    }
    problems.sort_by_key(|(seq, _)| *seq);
    out.problems = problems.into_iter().map(|(_, p)| p).collect();
    Ok(out)
}

/// The one field of a record that comparing copies needs.
#[derive(serde::Deserialize)]
struct Seq {
    seq: u64,
}

impl Problem {
    fn new(place: impl Into<String>, what: impl Into<String>) -> Self {
        Self {
            place: place.into(),
            what: what.into(),
        }
    }
}

/// Reads every file in order, checking each record's link to the one
/// before it (across files).
fn read_log(dir: &Path, files: &[String], report: &mut Report) -> io::Result<Log> {
    let mut log = Log::default();
    let mut prev: Option<(String, u64)> = None;
    for name in files {
        let data = fs::read(dir.join(name))?;
        let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        let torn = lines.pop().is_some_and(|last| !last.is_empty());
        for (i, line) in lines.iter().enumerate() {
            let place = format!("{name}:{}", i + 1);
            let hash = sha256_hex(line);
            report.records += 1;
            let record = match serde_json::from_slice::<Record>(line) {
                Ok(record) => record,
                Err(e) => {
                    report.problem(&place, format!("record is not valid ({e}); it was changed"));
                    prev = None;
                    continue;
                }
            };
            match &prev {
                Some((prev_hash, prev_seq)) => {
                    check_link(report, &record, &place, prev_hash, *prev_seq);
                }
                None if log.start.is_none() => {
                    log.start = Some((record.prev.clone(), record.seq, place.clone()));
                }
                None => {}
            }
            note_record(&mut log, &record, &hash, &place);
            report.first_seq.get_or_insert(record.seq);
            report.last_seq = Some(record.seq);
            prev = Some((hash, record.seq));
        }
        if torn {
            report.problem(
                format!("{name}:{}", lines.len() + 1),
                "the file ends in the middle of a record (cut, or still being written)",
            );
        }
    }
    Ok(log)
}

/// Keeps what later checks need of one record.
fn note_record(log: &mut Log, record: &Record, hash: &str, place: &str) {
    log.records
        .insert(record.seq, (hash.to_owned(), place.to_owned()));
    let detail = record.event.detail.clone().unwrap_or_default();
    match record.event.kind {
        EventKind::LogCheckpointed => {
            if let Ok(d) = serde_json::from_value::<CheckpointedDetail>(detail) {
                log.checkpointed
                    .push((d.checkpoint, d.seq, place.to_owned()));
            }
        }
        EventKind::LogRemoved => {
            if let Ok(d) = serde_json::from_value::<RemovedDetail>(detail) {
                log.removed.insert(d.last_hash.clone(), d);
            }
        }
        _ => {}
    }
}

/// Checks that `record` follows the one before it.
fn check_link(report: &mut Report, record: &Record, place: &str, prev_hash: &str, prev_seq: u64) {
    // Checked: the file may say seq u64::MAX, which nothing can follow.
    let next = prev_seq.checked_add(1);
    if next != Some(record.seq) {
        let what = match next {
            Some(next) if record.seq > next => format!(
                "records seq {next}..{} are missing before this one",
                record.seq - 1
            ),
            _ => format!(
                "sequence goes back from {prev_seq} to {}: records were inserted, reordered or copied",
                record.seq
            ),
        };
        report.problem(place, what);
    } else if record.prev != prev_hash {
        report.problem(
            place,
            format!(
                "the record before seq {} was changed (its hash does not match this record's prev)",
                record.seq
            ),
        );
    }
}

/// The chain starts at the first record ever written, or right after the
/// last record of a file that retention removed, as the log records.
fn check_start(log: &Log, report: &mut Report) {
    let Some((prev, seq, place)) = &log.start else {
        return;
    };
    if prev == GENESIS {
        return;
    }
    match log.removed.get(prev) {
        Some(removed) => report.notes.push(format!(
            "the chain starts at seq {seq}: older files were removed by {} (the last was {})",
            removed.why, removed.file
        )),
        None => report.problem(
            place.as_str(),
            format!(
                "records before seq {seq} are missing: the oldest files were removed, and no log.removed record says retention did it"
            ),
        ),
    }
}

/// Each checkpoint: its signature, its link to the checkpoint before it,
/// and the record it names.
fn check_checkpoints(
    cps: &[CheckpointLine],
    log: &Log,
    key: Option<&VerifyingKey>,
    path: &Path,
    report: &mut Report,
) {
    let mut prev = GENESIS.to_owned();
    for cp_line in cps {
        let cp = &cp_line.checkpoint;
        let place = format!("{}:{}", path.display(), cp_line.line);
        if let Some(key) = key {
            if !signed_by(cp, key) {
                report.problem(
                    &place,
                    format!(
                        "checkpoint of seq {} has a bad signature: it was edited, or signed by another key",
                        cp.seq
                    ),
                );
            }
        }
        if cp.prev != prev {
            report.problem(
                &place,
                format!(
                    "the checkpoint before this one (seq {}) is missing or was changed",
                    cp.seq
                ),
            );
        }
        prev.clone_from(&cp_line.hash);
        check_head(cp, log, &place, report);
    }
}

/// The record a checkpoint names must be in the log with the signed hash.
fn check_head(cp: &Checkpoint, log: &Log, place: &str, report: &mut Report) {
    match log.records.get(&cp.seq) {
        Some((hash, _)) if *hash == cp.head => {}
        Some((_, record_place)) => report.problem(
            record_place.as_str(),
            format!(
                "record seq {} does not match its signed checkpoint of {}: it was changed",
                cp.seq, cp.time
            ),
        ),
        None if report.last_seq.is_none_or(|last| cp.seq > last) => report.problem(
            format!("{} (end of log)", cp.file),
            format!(
                "records up to seq {} were checkpointed at {} but the log ends at seq {}: the newest records were deleted",
                cp.seq,
                cp.time,
                report.last_seq.map_or_else(|| "none".to_owned(), |s| s.to_string())
            ),
        ),
        // Before the chain's start: in a file retention removed.
        None if report.first_seq.is_some_and(|first| cp.seq < first) => {}
        None => report.problem(
            place,
            format!("record seq {} named by a checkpoint is missing from the log", cp.seq),
        ),
    }
}

/// Every checkpoint the log names must be in the checkpoint file.
fn check_named_checkpoints(cps: &[CheckpointLine], log: &Log, path: &Path, report: &mut Report) {
    let present: HashSet<&str> = cps.iter().map(|c| c.hash.as_str()).collect();
    for (hash, seq, place) in &log.checkpointed {
        if !present.contains(hash.as_str()) {
            report.problem(
                place.as_str(),
                format!(
                    "this record names the checkpoint of seq {seq}, which {} lacks: checkpoints were deleted",
                    path.display()
                ),
            );
        }
    }
    if cps.is_empty() && report.records > 0 && log.checkpointed.is_empty() {
        report.problem(
            path.display().to_string(),
            "there are no checkpoints, but the daemon writes one as soon as it has written records: they were deleted (or the daemon stopped before its first)",
        );
    }
}

fn signed_by(cp: &Checkpoint, key: &VerifyingKey) -> bool {
    hex_bytes(&cp.sig)
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b))
        .is_some_and(|sig| key.verify(cp.message().as_bytes(), &sig).is_ok())
}

fn read_checkpoints(path: &Path, report: &mut Report) -> io::Result<Vec<CheckpointLine>> {
    let data = match fs::read(path) {
        Ok(data) => data,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    // Lines as the writer writes and hashes them: bytes up to each `\n`
    // (not text, whose `lines` would also drop a `\r` unseen), and, as in
    // the log, what follows the last one is a torn write.
    let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let torn = lines.pop().is_some_and(|last| !last.is_empty());
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_slice::<Checkpoint>(line) {
            Ok(checkpoint) => out.push(CheckpointLine {
                line: i + 1,
                hash: sha256_hex(line),
                checkpoint,
            }),
            Err(e) => report.problem(
                format!("{}:{}", path.display(), i + 1),
                format!("checkpoint is not valid ({e}): it was edited"),
            ),
        }
    }
    if torn {
        report.problem(
            format!("{}:{}", path.display(), lines.len() + 1),
            "the file ends in the middle of a checkpoint (cut, or still being written)",
        );
    }
    Ok(out)
}

fn load_public_key(
    given: Option<&Path>,
    checkpoints: &Path,
    report: &mut Report,
) -> Option<VerifyingKey> {
    let default;
    let path = match given {
        Some(p) => p,
        None => {
            default = checkpoints.with_file_name("audit-signing.key.pub");
            &default
        }
    };
    let key = fs::read_to_string(path)
        .ok()
        .and_then(|s| hex_bytes(s.trim()))
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok());
    if key.is_none() {
        report.problem(
            path.display().to_string(),
            "cannot read the checkpoint public key; signatures were not checked",
        );
    }
    key
}

/// Hex digits only: `from_str_radix` alone would also take a `+` sign.
fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    //! One test per way of tampering, each on a log the real writer wrote:
    //! the first problem names the place, and the untouched log verifies.
    use std::{
        path::PathBuf,
        time::{Duration, SystemTime},
    };

    use super::*;
    use crate::audit::{
        log::{public_key_path, AuditLog, AuditSettings},
        Event,
    };

    struct Written {
        _dir: tempfile::TempDir,
        settings: AuditSettings,
    }

    impl Written {
        fn verify(&self) -> Report {
            self.verify_with(&public_key_path(&self.settings.key))
        }

        fn verify_with(&self, key: &Path) -> Report {
            verify(&self.settings.dir, &self.settings.checkpoints, Some(key)).unwrap()
        }

        fn first_problem(&self) -> Problem {
            let report = self.verify();
            report
                .problems
                .first()
                .cloned()
                .unwrap_or_else(|| panic!("tampering went unseen: {report:?}"))
        }

        fn files(&self) -> Vec<PathBuf> {
            log_files(&self.settings.dir)
                .unwrap()
                .iter()
                .map(|n| self.settings.dir.join(n))
                .collect()
        }

        /// The single log file's lines.
        fn lines(&self) -> Vec<String> {
            let files = self.files();
            assert_eq!(files.len(), 1);
            fs::read_to_string(&files[0])
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }

        fn write_lines(&self, lines: &[String]) {
            let mut text = lines.join("\n");
            text.push('\n');
            fs::write(&self.files()[0], text).unwrap();
        }

        fn checkpoint_lines(&self) -> Vec<String> {
            fs::read_to_string(&self.settings.checkpoints)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }

        fn write_checkpoint_lines(&self, lines: &[String]) {
            fs::write(&self.settings.checkpoints, lines.join("\n") + "\n").unwrap();
        }
    }

    fn settings(dir: &Path, rotate_bytes: u64, retention: Duration) -> AuditSettings {
        AuditSettings {
            dir: dir.join("audit"),
            key: dir.join("audit-signing.key"),
            checkpoints: dir.join("checkpoints.jsonl"),
            rotate_bytes,
            retention,
            checkpoint_interval: Duration::from_secs(3600),
            syslog: None,
        }
    }

    /// `rounds` times: five records, then a checkpoint; then five more
    /// records that no checkpoint covers until the close.
    async fn write(settings: AuditSettings, rounds: usize) {
        let log = AuditLog::open(settings).unwrap();
        for _ in 0..rounds {
            for kind in [
                EventKind::ConnectionAllowed,
                EventKind::ConnectionClosed,
                EventKind::GrantCreated,
                EventKind::ConnectionDenied,
                EventKind::GrantExpired,
            ] {
                log.record_durable(Event::new(kind)).await.unwrap();
            }
            log.checkpoint().await;
        }
        tokio::task::spawn_blocking(move || log.close())
            .await
            .unwrap();
    }

    async fn written(rounds: usize) -> Written {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path(), 1 << 20, Duration::from_secs(3600));
        write(settings.clone(), rounds).await;
        let w = Written {
            _dir: dir,
            settings,
        };
        let report = w.verify();
        assert!(
            report.problems.is_empty(),
            "untouched: {:?}",
            report.problems
        );
        assert!(report.notes.is_empty(), "untouched: {:?}", report.notes);
        w
    }

    fn hash_of(line: &str) -> String {
        sha256_hex(line.as_bytes())
    }

    /// Re-links every line after `from` to the one before it, as someone
    /// who rewrote a record would.
    fn rechain(lines: &mut [String], from: usize) {
        for i in from + 1..lines.len() {
            let mut value: serde_json::Value = serde_json::from_str(&lines[i]).unwrap();
            value["prev"] = hash_of(&lines[i - 1]).into();
            lines[i] = value.to_string();
        }
    }

    fn index_of(lines: &[String], kind: &str) -> Vec<usize> {
        lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains(&format!("\"type\":\"{kind}\"")))
            .map(|(i, _)| i)
            .collect()
    }

    #[tokio::test]
    async fn a_cut_tail_shows_even_with_the_checkpoints_gone() {
        let w = written(3).await;
        let mut lines = w.lines();
        lines.truncate(lines.len() - 3);
        w.write_lines(&lines);
        fs::remove_file(&w.settings.checkpoints).unwrap();
        let p = w.first_problem();
        assert!(p.what.contains("checkpoints were deleted"), "{p}");
        assert!(p.place.starts_with("audit-"), "{p}");
    }

    #[tokio::test]
    async fn a_cut_tail_shows_against_the_newest_checkpoint() {
        let w = written(3).await;
        let mut lines = w.lines();
        let last_checkpoint_record = *index_of(&lines, "log.checkpointed").last().unwrap();
        // Cut back to before the close's checkpoint record, which names
        // seq of the record before it.
        lines.truncate(last_checkpoint_record - 2);
        w.write_lines(&lines);
        let p = w.first_problem();
        assert!(p.what.contains("the newest records were deleted"), "{p}");
        assert!(p.place.ends_with("(end of log)"), "{p}");
    }

    #[tokio::test]
    async fn a_deleted_checkpoint_file_shows() {
        let w = written(2).await;
        fs::remove_file(&w.settings.checkpoints).unwrap();
        let first_named = index_of(&w.lines(), "log.checkpointed")[0];
        let p = w.first_problem();
        assert!(p.what.contains("checkpoints were deleted"), "{p}");
        assert!(p.place.ends_with(&format!(":{}", first_named + 1)), "{p}");
    }

    #[tokio::test]
    async fn missing_newest_checkpoints_show() {
        let w = written(3).await;
        let mut cps = w.checkpoint_lines();
        cps.pop();
        w.write_checkpoint_lines(&cps);
        let last_named = *index_of(&w.lines(), "log.checkpointed").last().unwrap();
        let p = w.first_problem();
        assert!(p.what.contains("checkpoints were deleted"), "{p}");
        assert!(p.place.ends_with(&format!(":{}", last_named + 1)), "{p}");
    }

    #[tokio::test]
    async fn a_checkpoint_taken_out_of_the_middle_shows() {
        let w = written(3).await;
        let mut cps = w.checkpoint_lines();
        cps.remove(1);
        w.write_checkpoint_lines(&cps);
        let report = w.verify();
        let chain = report
            .problems
            .iter()
            .find(|p| p.what.contains("the checkpoint before this one"))
            .unwrap_or_else(|| panic!("{report:?}"));
        assert!(chain.place.ends_with("checkpoints.jsonl:2"), "{chain}");
    }

    #[tokio::test]
    async fn an_inserted_record_shows() {
        let w = written(2).await;
        let mut lines = w.lines();
        let copy = lines[3].clone();
        lines.insert(6, copy);
        w.write_lines(&lines);
        let p = w.first_problem();
        assert!(p.what.contains("inserted, reordered or copied"), "{p}");
        assert!(p.place.ends_with(":7"), "{p}");
    }

    #[tokio::test]
    async fn reordered_records_show() {
        let w = written(2).await;
        let mut lines = w.lines();
        lines.swap(4, 5);
        w.write_lines(&lines);
        let p = w.first_problem();
        assert!(p.place.ends_with(":5"), "{p}");
        assert!(p.what.contains("missing before this one"), "{p}");
    }

    #[tokio::test]
    async fn a_rewritten_checkpointed_record_shows_though_the_chain_was_recomputed() {
        let w = written(2).await;
        let mut lines = w.lines();
        lines[2] = lines[2].replace("grant.created", "grant.revoked");
        rechain(&mut lines, 2);
        w.write_lines(&lines);
        let report = w.verify();
        let p = report
            .problems
            .first()
            .unwrap_or_else(|| panic!("unseen: {report:?}"));
        assert!(
            p.what.contains("does not match its signed checkpoint"),
            "{p}"
        );
    }

    #[tokio::test]
    async fn checkpoint_edits_below_the_text_show_at_their_line() {
        let w = written(2).await;
        let pristine = fs::read(&w.settings.checkpoints).unwrap();
        let first_problem = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut data = pristine.clone();
            edit(&mut data);
            fs::write(&w.settings.checkpoints, &data).unwrap();
            w.first_problem()
        };
        // A carriage return before the first newline (`str::lines` drops it).
        let p = first_problem(&|data| {
            let newline = data.iter().position(|&b| b == b'\n').unwrap();
            data.insert(newline, b'\r');
        });
        assert!(p.what.contains("the checkpoint before this one"), "{p}");
        assert!(p.place.ends_with("checkpoints.jsonl:2"), "{p}");
        // A byte that is not UTF-8: a bad line, not an unreadable file.
        let p = first_problem(&|data| data.insert(0, 0xff));
        assert!(p.what.contains("checkpoint is not valid"), "{p}");
        assert!(p.place.ends_with("checkpoints.jsonl:1"), "{p}");
        // The last newline cut: a torn write, which the writer would cut.
        let p = first_problem(&|data| {
            data.pop();
        });
        assert!(p.what.contains("ends in the middle of a checkpoint"), "{p}");
    }

    #[test]
    fn hex_is_hex_digits_only() {
        assert_eq!(hex_bytes("0aFf"), Some(vec![0x0a, 0xff]));
        assert_eq!(hex_bytes("+a0f"), None);
        assert_eq!(hex_bytes("0a0"), None);
    }

    #[tokio::test]
    async fn a_foreign_key_fails_every_signature() {
        let w = written(2).await;
        let other = tempfile::tempdir().unwrap();
        let foreign = settings(other.path(), 1 << 20, Duration::from_secs(3600));
        write(foreign.clone(), 1).await;
        let report = w.verify_with(&public_key_path(&foreign.key));
        assert_eq!(report.problems.len(), report.checkpoints, "{report:?}");
        let p = &report.problems[0];
        assert!(p.what.contains("signed by another key"), "{p}");
        assert!(p.place.ends_with("checkpoints.jsonl:1"), "{p}");
    }

    #[tokio::test]
    async fn a_copy_matches_until_one_record_differs_or_goes() {
        let w = written(2).await;
        let lines = w.lines();
        let framed: Vec<u8> = lines
            .iter()
            .flat_map(|l| crate::audit::syslog::frame(l.as_bytes(), "host", 7))
            .collect();
        let same = compare_copy(&w.settings.dir, &framed).unwrap();
        assert!(same.problems.is_empty(), "{:?}", same.problems);
        assert_eq!(same.records, lines.len());

        // One record of the copy changed: named by its seq and local place.
        let mut changed = lines.clone();
        changed[4] = changed[4].replace("connection.denied", "connection.allowed");
        let report = compare_copy(&w.settings.dir, changed.join("\n").as_bytes()).unwrap();
        let p = &report.problems[0];
        assert!(p.what.contains("record seq 5 differs"), "{p}");
        assert!(p.place.ends_with(":5"), "{p}");

        // The local log lost its newest records: the copy still has them.
        let mut local = lines.clone();
        local.truncate(lines.len() - 2);
        w.write_lines(&local);
        let report = compare_copy(&w.settings.dir, lines.join("\n").as_bytes()).unwrap();
        let p = &report.problems[0];
        assert!(p.what.contains("removed locally"), "{p}");
        assert_eq!(p.place, format!("seq {}", lines.len() - 1));
    }

    #[tokio::test]
    async fn old_files_go_only_by_retention() {
        let dir = tempfile::tempdir().unwrap();
        // Every flush starts a new file.
        let small = settings(dir.path(), 1, Duration::from_secs(3600));
        write(small.clone(), 3).await;
        let w = Written {
            _dir: dir,
            settings: small,
        };
        let files = w.files();
        assert!(files.len() > 4, "{files:?}");

        // Someone deletes the two oldest files.
        let kept: Vec<Vec<u8>> = files[..2].iter().map(|f| fs::read(f).unwrap()).collect();
        for f in &files[..2] {
            fs::remove_file(f).unwrap();
        }
        let p = w.first_problem();
        assert!(p.what.contains("no log.removed record"), "{p}");

        // Put back, age them past retention, and let the writer remove them.
        for (f, data) in files[..2].iter().zip(&kept) {
            fs::write(f, data).unwrap();
            let old = SystemTime::now() - Duration::from_secs(7200);
            fs::File::options()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        write(w.settings.clone(), 1).await;
        let report = w.verify();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains("removed by retention")),
            "{:?}",
            report.notes
        );
        assert!(!files[0].exists() && !files[1].exists());
    }
}

//! `jitproxy audit verify`: checks the hash chain of every log file, in
//! order, and every signed checkpoint, and names the first bad place.
//!
//! What each check catches:
//! - a changed byte: the record no longer parses, or its hash no longer
//!   matches the `prev` of the record after it, or a checkpoint's head;
//! - a deleted or reordered record: the sequence jumps and `prev` breaks;
//! - deleted newest records: a checkpoint names a sequence number past the
//!   end of the log;
//! - an edited checkpoint: its signature fails.
//!
//! Records written after the newest checkpoint are covered by the chain only:
//! cutting them off is seen at the next checkpoint (at most a minute later, or
//! at shutdown).

use std::{collections::HashMap, fmt, fs, io, path::Path};

use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};

use super::{
    log::{log_files, sha256_hex, Checkpoint, GENESIS},
    Record,
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

/// Where a record is.
#[derive(Debug, Clone)]
struct Seen {
    hash: String,
    place: String,
}

/// Verifies the logs in `dir` against the checkpoints in `checkpoints`,
/// whose signatures are checked with the hex public key in `public_key`
/// (default: `<checkpoints dir>/audit-signing.key.pub`).
pub fn verify(dir: &Path, checkpoints: &Path, public_key: Option<&Path>) -> io::Result<Report> {
    let mut report = Report::default();
    let cps = read_checkpoints(checkpoints, &mut report)?;
    let key = load_public_key(public_key, checkpoints, &mut report);
    let wanted: HashMap<u64, ()> = cps.iter().map(|(_, cp)| (cp.seq, ())).collect();
    let mut seen: HashMap<u64, Seen> = HashMap::new();

    let files = log_files(dir)?;
    report.files = files.len();
    let mut prev_hash: Option<String> = None;
    let mut prev_seq: Option<u64> = None;
    for name in &files {
        let data = fs::read(dir.join(name))?;
        let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        let torn = lines.pop().is_some_and(|last| !last.is_empty());
        for (i, line) in lines.iter().enumerate() {
            let place = format!("{name}:{}", i + 1);
            let hash = sha256_hex(line);
            report.records += 1;
            match serde_json::from_slice::<Record>(line) {
                Err(e) => report.problems.push(Problem {
                    place: place.clone(),
                    what: format!("record is not valid ({e}); it was changed"),
                }),
                Ok(record) => {
                    check_link(&mut report, &record, &place, prev_hash.as_deref(), prev_seq);
                    report.first_seq.get_or_insert(record.seq);
                    report.last_seq = Some(record.seq);
                    if wanted.contains_key(&record.seq) {
                        seen.insert(
                            record.seq,
                            Seen {
                                hash: hash.clone(),
                                place: place.clone(),
                            },
                        );
                    }
                    prev_seq = Some(record.seq);
                }
            }
            prev_hash = Some(hash);
        }
        if torn {
            report.problems.push(Problem {
                place: format!("{name}:{}", lines.len() + 1),
                what: "the file ends in the middle of a record (cut, or still being written)"
                    .to_owned(),
            });
        }
    }

    for (line, cp) in &cps {
        let place = format!("{}:{line}", checkpoints.display());
        if let Some(key) = &key {
            let valid = hex_bytes(&cp.sig)
                .and_then(|b| <[u8; 64]>::try_from(b).ok())
                .map(|b| Signature::from_bytes(&b))
                .is_some_and(|sig| key.verify(cp.message().as_bytes(), &sig).is_ok());
            if !valid {
                report.problems.push(Problem {
                    place,
                    what: format!(
                        "checkpoint of seq {} has a bad signature: it was edited",
                        cp.seq
                    ),
                });
                continue;
            }
        }
        match seen.get(&cp.seq) {
            Some(s) if s.hash == cp.head => {}
            Some(s) => report.problems.push(Problem {
                place: s.place.clone(),
                what: format!(
                    "record seq {} does not match its signed checkpoint of {}: it was changed",
                    cp.seq, cp.time
                ),
            }),
            None if report.last_seq.is_none_or(|last| cp.seq > last) => report.problems.push(Problem {
                place: format!("{} (end of log)", cp.file),
                what: format!(
                    "records up to seq {} were checkpointed at {} but the log ends at seq {}: the newest records were deleted",
                    cp.seq,
                    cp.time,
                    report.last_seq.map_or_else(|| "none".to_owned(), |s| s.to_string())
                ),
            }),
            None if report.first_seq.is_some_and(|first| cp.seq < first) => {}
            None => report.problems.push(Problem {
                place,
                what: format!("record seq {} named by a checkpoint is missing from the log", cp.seq),
            }),
        }
    }
    report.checkpoints = cps.len();
    Ok(report)
}

/// Checks that `record` follows the one before it.
fn check_link(
    report: &mut Report,
    record: &Record,
    place: &str,
    prev_hash: Option<&str>,
    prev_seq: Option<u64>,
) {
    let Some(prev_hash) = prev_hash else {
        if record.prev != GENESIS {
            report.notes.push(format!(
                "the chain starts at seq {} ({place}): older files were removed (retention) or are elsewhere",
                record.seq
            ));
        }
        return;
    };
    match prev_seq {
        Some(p) if record.seq != p + 1 => {
            let what = if record.seq > p + 1 {
                format!(
                    "records seq {}..{} are missing before this one",
                    p + 1,
                    record.seq - 1
                )
            } else {
                format!(
                    "sequence goes back from {p} to {}: records were reordered or copied",
                    record.seq
                )
            };
            report.problems.push(Problem {
                place: place.to_owned(),
                what,
            });
        }
        _ if record.prev != prev_hash => report.problems.push(Problem {
            place: place.to_owned(),
            what: format!(
                "the record before seq {} was changed (its hash does not match this record's prev)",
                record.seq
            ),
        }),
        _ => {}
    }
}

fn read_checkpoints(path: &Path, report: &mut Report) -> io::Result<Vec<(usize, Checkpoint)>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            report
                .notes
                .push(format!("no checkpoints at {}", path.display()));
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match serde_json::from_str::<Checkpoint>(line) {
            Ok(cp) => out.push((i + 1, cp)),
            Err(e) => report.problems.push(Problem {
                place: format!("{}:{}", path.display(), i + 1),
                what: format!("checkpoint is not valid ({e}): it was edited"),
            }),
        }
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
        report.problems.push(Problem {
            place: path.display().to_string(),
            what: "cannot read the checkpoint public key; signatures were not checked".to_owned(),
        });
    }
    key
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

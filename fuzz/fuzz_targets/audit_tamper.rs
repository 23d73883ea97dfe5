//! Fuzzes `audit verify` as a tamper detector: the input is a list of edits
//! (bytes flipped, inserted or cut off the end, lines dropped, swapped or copied, JSON
//! fields rewritten, the chain recomputed after an edit, files deleted) to
//! a log the real writer wrote. Verification never panics or fails, the
//! untouched log verifies clean, and an edit that verify is built to catch
//! is caught: one that changes a record up to the newest checkpoint while
//! the checkpoint file is intact, or one that changes the checkpoint file
//! while the log is intact.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use jitproxy::audit::{
    log::{sha256_hex, Checkpoint},
    verify, Record,
};
use jitproxy_fuzz::{scratch, written_log, Files};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[derive(Debug, Arbitrary)]
enum Op {
    Flip {
        file: u8,
        at: u16,
        mask: u8,
    },
    Insert {
        file: u8,
        at: u16,
        bytes: Vec<u8>,
    },
    /// Cuts bytes off the end (the newest records, a last newline).
    CutTail {
        file: u8,
        bytes: u16,
    },
    Delete {
        file: u8,
    },
    DropLine {
        file: u8,
        line: u8,
    },
    SwapLines {
        file: u8,
        a: u8,
        b: u8,
    },
    CopyLine {
        from: u8,
        line: u8,
        to: u8,
        at: u8,
    },
    /// Sets or removes a field of a line's JSON object (`path` picks a key,
    /// and a key of its value when that is an object too).
    SetField {
        file: u8,
        line: u8,
        path: (u8, Option<u8>),
        value: Field,
    },
    /// Rewrites each record's `prev` after the `from`th line of the log so
    /// that the chain links again, as someone who edited a record would.
    Rechain {
        from: u8,
    },
}

#[derive(Debug, Arbitrary)]
enum Field {
    Number(i64),
    Text(String),
    Remove,
}

fuzz_target!(
    init: {
        let report = verify_files(&written_log().files);
        assert!(report.problems.is_empty(), "the written log: {:?}", report.problems);
        assert!(!report.notes.is_empty(), "no retention note: the log lacks a removed file");
    },
    |ops: Vec<Op>| {
        let original = &written_log().files;
        let mut files = original.clone();
        for op in &ops {
            apply(&mut files, op);
        }
        let report = verify_files(&files);
        let logs_same = files.logs == original.logs;
        let checkpoints_same = files.checkpoints == original.checkpoints;
        let must_see = match (logs_same, checkpoints_same) {
            (true, true) => {
                assert!(report.problems.is_empty(), "{:?}", report.problems);
                false
            }
            (false, true) => covered(&files) != covered(original),
            (true, false) => true,
            (false, false) => false,
        };
        assert!(
            !must_see || !report.problems.is_empty(),
            "tampering went unseen: {ops:?}"
        );
    }
);

fn verify_files(files: &Files) -> verify::Report {
    let dir = scratch();
    let (audit, checkpoints) = files.write_to(dir.path());
    verify::verify(&audit, &checkpoints, Some(&written_log().public_key))
        .expect("verify reads every file it finds")
}

/// The file the `file`th slot names: a log file, or (last) the checkpoints.
fn slot(files: &mut Files, file: u8) -> &mut Option<Vec<u8>> {
    let i = usize::from(file) % (files.logs.len() + 1);
    match files.logs.get_mut(i) {
        Some((_, data)) => data,
        None => &mut files.checkpoints,
    }
}

fn apply(files: &mut Files, op: &Op) {
    match *op {
        Op::Flip { file, at, mask } => edit(slot(files, file), |data| {
            if let Some(b) = pick_mut(data, at) {
                *b ^= mask;
            }
        }),
        Op::Insert {
            file,
            at,
            ref bytes,
        } => edit(slot(files, file), |data| {
            let at = usize::from(at) % (data.len() + 1);
            data.splice(at..at, bytes.iter().copied());
        }),
        Op::CutTail { file, bytes } => edit(slot(files, file), |data| {
            data.truncate(data.len() - usize::from(bytes) % (data.len() + 1));
        }),
        Op::Delete { file } => *slot(files, file) = None,
        Op::DropLine { file, line } => edit_lines(slot(files, file), |lines| {
            if !lines.is_empty() {
                lines.remove(usize::from(line) % lines.len());
            }
        }),
        Op::SwapLines { file, a, b } => edit_lines(slot(files, file), |lines| {
            if !lines.is_empty() {
                let n = lines.len();
                lines.swap(usize::from(a) % n, usize::from(b) % n);
            }
        }),
        Op::CopyLine { from, line, to, at } => {
            let Some(copy) = slot(files, from)
                .as_deref()
                .map(lines)
                .and_then(|l| pick(&l, line).cloned())
            else {
                return;
            };
            edit_lines(slot(files, to), |lines| {
                let at = usize::from(at) % (lines.len() + 1);
                lines.insert(at, copy);
            });
        }
        Op::SetField {
            file,
            line,
            path,
            ref value,
        } => edit_lines(slot(files, file), |lines| {
            if let Some(line) = pick_mut(lines, line) {
                edit_json(line, |object| set_field(object, path, value));
            }
        }),
        Op::Rechain { from } => rechain(files, usize::from(from)),
    }
}

fn edit(data: &mut Option<Vec<u8>>, f: impl FnOnce(&mut Vec<u8>)) {
    if let Some(data) = data {
        f(data);
    }
}

/// Edits a file as lines (each with its newline, if it has one).
fn edit_lines(data: &mut Option<Vec<u8>>, f: impl FnOnce(&mut Vec<Vec<u8>>)) {
    edit(data, |data| {
        let mut lines = lines(data);
        f(&mut lines);
        *data = lines.concat();
    });
}

fn lines(data: &[u8]) -> Vec<Vec<u8>> {
    data.split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn pick<T>(items: &[T], i: impl Into<usize>) -> Option<&T> {
    (!items.is_empty()).then(|| &items[i.into() % items.len()])
}

fn pick_mut<T>(items: &mut [T], i: impl Into<usize>) -> Option<&mut T> {
    let n = items.len();
    (n > 0).then(|| &mut items[i.into() % n])
}

/// Rewrites a line that holds a JSON object, keeping its newline.
fn edit_json(line: &mut Vec<u8>, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let newline = line.ends_with(b"\n");
    let Ok(Value::Object(mut object)) = serde_json::from_slice(line.trim_ascii_end()) else {
        return;
    };
    f(&mut object);
    *line = serde_json::to_vec(&object).unwrap_or_default();
    if newline {
        line.push(b'\n');
    }
}

fn set_field(object: &mut serde_json::Map<String, Value>, path: (u8, Option<u8>), value: &Field) {
    let keys: Vec<String> = object.keys().cloned().collect();
    let Some(key) = pick(&keys, path.0) else {
        return;
    };
    if let (Some(inner), Some(Value::Object(nested))) = (path.1, object.get_mut(key)) {
        return set_field(nested, (inner, None), value);
    }
    match value {
        Field::Number(n) => object.insert(key.clone(), (*n).into()),
        Field::Text(s) => object.insert(key.clone(), s.as_str().into()),
        Field::Remove => object.remove(key),
    };
}

/// Links every log line after the `from`th to the line before it.
fn rechain(files: &mut Files, from: usize) {
    let mut prev: Option<String> = None;
    let mut index = 0;
    for (_, data) in &mut files.logs {
        edit_lines(data, |lines| {
            for line in lines {
                if index > from {
                    if let Some(hash) = &prev {
                        edit_json(line, |object| {
                            object.insert("prev".to_owned(), hash.as_str().into());
                        });
                    }
                }
                prev = Some(sha256_hex(line.strip_suffix(b"\n").unwrap_or(line)));
                index += 1;
            }
        });
    }
}

/// The log's lines up to the record of the newest checkpoint (of the
/// written log): what the checkpoints vouch for.
fn covered(files: &Files) -> Vec<Vec<u8>> {
    let mut lines = log_lines(files);
    lines.truncate(covered_len());
    lines
}

/// Every log file's lines, in order, without their newlines.
fn log_lines(files: &Files) -> Vec<Vec<u8>> {
    let all: Vec<u8> = files
        .logs
        .iter()
        .filter_map(|(_, data)| data.as_deref())
        .flatten()
        .copied()
        .collect();
    all.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

fn covered_len() -> usize {
    static LEN: OnceLock<usize> = OnceLock::new();
    *LEN.get_or_init(|| {
        let files = &written_log().files;
        let newest = files
            .checkpoints
            .as_deref()
            .and_then(|c| c.trim_ascii_end().rsplit(|&b| b == b'\n').next())
            .and_then(|line| serde_json::from_slice::<Checkpoint>(line).ok())
            .expect("the newest checkpoint");
        log_lines(files)
            .iter()
            .position(|l| serde_json::from_slice::<Record>(l).is_ok_and(|r| r.seq == newest.seq))
            .expect("the newest checkpoint's record")
            + 1
    })
}

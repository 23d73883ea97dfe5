//! Fuzzes the audit log's torn-tail recovery, which runs on every start on
//! files anyone with write access to the log directory may have changed: it
//! never panics, cuts only what follows the last newline, and names the
//! last whole line.
#![no_main]

use std::fs;

use jitproxy::fuzzing::recover_tail;
use jitproxy_fuzz::scratch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let path = dir.path().join("audit-20260101-0001.jsonl");
    fs::write(&path, data).expect("the log file");
    let (cut, last) = recover_tail(&path).expect("recovering the tail");
    let kept = fs::read(&path).expect("the log file");
    assert!(kept.is_empty() || kept.ends_with(b"\n"), "{kept:?}");
    let whole = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    assert_eq!(kept, data[..whole], "only the torn line goes");
    assert_eq!(usize::try_from(cut).ok(), Some(data.len() - whole));
    match last {
        Some(line) => {
            let before = kept.len() - line.len() - 1;
            assert!(!line.is_empty() && !line.contains(&b'\n'), "{line:?}");
            assert!(kept[before..].starts_with(&line));
            assert!(before == 0 || kept[before - 1] == b'\n');
        }
        None => assert!(kept.is_empty() || kept == b"\n" || kept.ends_with(b"\n\n")),
    }
});

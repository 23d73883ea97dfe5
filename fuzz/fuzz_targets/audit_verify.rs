//! Fuzzes `audit verify` and the audit readers: whoever can write the log
//! directory controls these bytes, and verification must report, not panic.
#![no_main]

use std::fs;

use jitproxy::audit::{query, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first half is a log file, the rest the checkpoints file.
    let (log, checkpoints) = data.split_at(data.len() / 2);
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let audit = dir.path().join("audit");
    if fs::create_dir(&audit).is_err()
        || fs::write(audit.join("audit-20260101-0001.jsonl"), log).is_err()
        || fs::write(dir.path().join("checkpoints.jsonl"), checkpoints).is_err()
    {
        return;
    }
    let _ = verify::verify(&audit, &dir.path().join("checkpoints.jsonl"), None);
    if let Ok(records) = query::read(&audit, &query::Filter::default()) {
        let _ = query::summarize(&records);
    }
});

//! Fuzzes `audit verify` and the audit readers on files of the input's
//! choosing: whoever can write the log directory controls these bytes, and
//! verification must report, not panic or fail. The input is split at 0xFF
//! bytes (never in a JSON line): the checkpoint file, then up to 16 log
//! files; checkpoints are checked with a real public key, so signature
//! checks, the checkpoints' chain, the chain across files and the
//! retention links all run.
#![no_main]

use jitproxy::audit::{query, verify};
use jitproxy_fuzz::{scratch, written_log, Files};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xFF);
    let checkpoints = parts.next().map(<[u8]>::to_vec);
    let files = Files {
        logs: parts
            .take(16)
            .enumerate()
            .map(|(i, log)| {
                (
                    format!("audit-20260101-{:04}.jsonl", i + 1),
                    Some(log.to_vec()),
                )
            })
            .collect(),
        checkpoints,
    };
    let dir = scratch();
    let (audit, checkpoints) = files.write_to(dir.path());
    let report = verify::verify(&audit, &checkpoints, Some(&written_log().public_key))
        .expect("verify reads every file it finds");
    for problem in &report.problems {
        let _ = problem.to_string();
    }
    let records = query::read(&audit, &query::Filter::default()).expect("the log reads");
    let _ = query::summarize(&records);
});

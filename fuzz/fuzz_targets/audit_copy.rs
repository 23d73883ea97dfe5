//! Fuzzes `audit verify --copy`: the input is a syslog collector's copy of
//! the log (untrusted bytes: frames or lines), compared with a log the real
//! writer wrote. Comparing never panics or fails, the collector's true copy
//! matches, and the records read from a copy read back the same once framed
//! again as the forwarder frames them.
#![no_main]

use jitproxy::audit::{syslog, verify};
use jitproxy_fuzz::written_log;
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        let log = written_log();
        let framed: Vec<u8> = log
            .files
            .logs
            .iter()
            .filter_map(|(_, data)| data.as_deref())
            .flat_map(|data| data.split(|&b| b == b'\n').filter(|l| !l.is_empty()))
            .flat_map(|record| syslog::frame(record, "host", 1))
            .collect();
        let report = verify::compare_copy(&log.audit, &framed).expect("comparing the true copy");
        assert!(report.problems.is_empty(), "the true copy: {:?}", report.problems);
    },
    |copy: &[u8]| {
        let report = verify::compare_copy(&written_log().audit, copy).expect("comparing a copy");
        for problem in &report.problems {
            let _ = problem.to_string();
        }
        let records = syslog::copied_records(copy);
        assert_eq!(report.records, records.len());
        let framed: Vec<u8> = records
            .iter()
            .flat_map(|record| syslog::frame(record, "host", 1))
            .collect();
        assert_eq!(syslog::copied_records(&framed), records);
    }
);

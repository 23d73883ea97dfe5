//! Fuzzes the `/proc/PID/stat` parser jitproxy relies on (procfs's, for a
//! process's start time, part of its identity) with a command name of the
//! input's choosing: any process may name itself so, `)`, spaces and
//! newlines included. A line as the kernel writes it always parses to the
//! right fields, and this process, renamed so by the kernel, keeps its
//! start time as jitproxy reads it.
#![no_main]

use std::{ffi::CString, sync::OnceLock};

use jitproxy::host::proc::Process;
use libfuzzer_sys::fuzz_target;
use procfs::{process::Stat, FromRead as _};

const STARTTIME: u64 = 987_654_321;

/// This process's start time before any renaming.
fn own_start() -> Option<u64> {
    static START: OnceLock<Option<u64>> = OnceLock::new();
    *START.get_or_init(|| Process::open(std::process::id()).and_then(|p| p.start_boot_ns()))
}

fuzz_target!(
    init: assert!(own_start().is_some(), "cannot read this process's start time"),
    |comm: &[u8]| {
        let line = [
            b"4242 (".as_slice(),
            comm,
            format!(
                ") S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {STARTTIME} \
                 12345678 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 \
                 0 0 0 0 0 0 0\n"
            )
            .as_bytes(),
        ]
        .concat();
        let stat = Stat::from_read(line.as_slice()).expect("a stat line as the kernel writes it");
        assert_eq!((stat.pid, stat.ppid, stat.starttime), (4242, 1, STARTTIME));
        assert_eq!(stat.comm, String::from_utf8_lossy(comm));

        // The kernel keeps the name up to the first NUL, at most 15 bytes.
        let name = comm.split(|&b| b == 0).next().unwrap_or_default();
        let name = CString::new(name).expect("no NUL");
        nix::sys::prctl::set_name(&name).expect("renaming this thread");
        let me = Process::open(std::process::id()).expect("this process");
        assert_eq!(me.start_boot_ns(), own_start(), "named {name:?}");
    }
);

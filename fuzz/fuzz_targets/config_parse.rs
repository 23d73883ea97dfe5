//! Fuzzes the config parser: any UTF-8 text must be accepted or refused with
//! an error, never panic (a config file is operator input, STYLE.md rule 8).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Config files are read as UTF-8 before parsing; other bytes never get here.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = jitproxy::config::Config::parse(text, "fuzz.toml") {
        // Formatting the error runs the line and column computation too.
        let _ = e.to_string();
    }
});

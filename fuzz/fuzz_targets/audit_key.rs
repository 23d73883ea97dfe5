//! Fuzzes the loading of the audit keys from files anyone with write access
//! to the state directory may have changed: the signing key the daemon
//! loads at start (an error or the key, never a panic, and never rewritten)
//! and the public key `audit verify` reads (only hex of 32 bytes is taken).
#![no_main]

use std::fs;

use jitproxy::{
    audit::{log::public_key_path, verify},
    fuzzing::load_or_create_key,
};
use jitproxy_fuzz::scratch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let key = dir.path().join("audit-signing.key");
    fs::write(&key, data).expect("the key file");
    match load_or_create_key(&key) {
        Ok(secret) => assert_eq!(secret[..], *data),
        Err(e) => assert_ne!(data.len(), 32, "{e}"),
    }
    assert_eq!(
        fs::read(&key).expect("the key file"),
        data,
        "the key was rewritten"
    );
    assert!(!public_key_path(&key).exists(), "a public key appeared");

    let public = dir.path().join("other.pub");
    fs::write(&public, data).expect("the public key file");
    let audit = dir.path().join("audit");
    fs::create_dir(&audit).expect("the audit directory");
    let report = verify::verify(&audit, &dir.path().join("checkpoints.jsonl"), Some(&public))
        .expect("verifying an empty log");
    let refused = report
        .problems
        .iter()
        .any(|p| p.what.contains("public key"));
    let hex = std::str::from_utf8(data)
        .map(str::trim)
        .is_ok_and(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(
        hex || refused,
        "{:?} was taken as a public key",
        String::from_utf8_lossy(data)
    );
});

//! Inspect mode's first read of a client: a TLS ClientHello, parsed by
//! rustls, then the choice of server name among the target's names.
//! Invariants: nothing panics, and a chosen name is one of the target's
//! names and is the hello's server name (ASCII case aside).
//!
//! Input: one byte choosing how many of the names the target has (0 to 3),
//! then the bytes the client sent. Seeds in seeds/client_hello were written
//! by Python's ssl module for `api.inspect.test`, another name, and no name.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 3] = ["api.inspect.test", "v2.api.inspect.test", "127.0.0.9"];

fuzz_target!(|data: &[u8]| {
    let Some((&count, hello)) = data.split_first() else {
        return;
    };
    let names: Vec<Arc<str>> = NAMES
        .iter()
        .take(usize::from(count % 4))
        .map(|n| Arc::from(*n))
        .collect();
    if let Some(Ok(name)) = jitproxy::fuzzing::client_hello(hello, &names) {
        assert!(
            names.iter().any(|n| n.eq_ignore_ascii_case(&name)),
            "chose `{name}`, which is not one of the target's names"
        );
    }
});

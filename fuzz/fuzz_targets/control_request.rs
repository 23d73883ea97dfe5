//! Fuzzes the control API's request bodies: any bytes a local user sends on
//! the control socket are parsed into a request or refused, never a panic.
#![no_main]

use jitproxy::{
    audit::query::Filter,
    control::proto::{DropRequest, GrantRequest, RevokeRequest},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<GrantRequest>(data);
    let _ = serde_json::from_slice::<RevokeRequest>(data);
    let _ = serde_json::from_slice::<DropRequest>(data);
    let _ = serde_json::from_slice::<Filter>(data);
});

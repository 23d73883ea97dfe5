//! Inspect mode: TLS terminated on the host with the local CA, each HTTP
//! request decided, recorded and sent on with the real credential.

pub mod credential;

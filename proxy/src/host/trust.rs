//! The host's trust stores: adding jitproxy's local CA to them and taking it
//! out again (`jitproxy ca install | uninstall`).

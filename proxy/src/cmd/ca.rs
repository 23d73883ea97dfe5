//! `jitproxy ca show | export | install | uninstall | rotate`.

//! `cargo xtask demo`: jitproxy on its embedded default config, watching a
//! child cgroup, with a stand-in production API on 127.0.0.2:8080. Shows a
//! refused connection and why, an engineer's access request and its
//! approval (and an approver refused a grant to themselves), requests
//! redirected through the proxy with the caller's identity, a caller outside
//! the cgroup untouched, targets closed while the daemon is down, and access
//! given back.
//! Removes everything it started, also on Ctrl-C.

use std::net::SocketAddr;

use anyhow::{bail, Context as _, Result};
use jitproxy_e2e::{output, Behaviour, Cgroup, Daemon, Upstream, NOBODY};
use serde_json::Value;

use crate::{setup, util};

/// The embedded default's only target (config/default.toml).
const DEMO_API: &str = "127.0.0.2:8080";

pub fn run() -> Result<()> {
    util::require_root("jitproxy attaches eBPF programs to a cgroup")?;
    let interrupted = util::on_ctrl_c()?;
    let check = || interrupted.check();

    setup::run(setup::Needs::default())?;
    let bin = util::build_jitproxy()?;
    std::env::set_var("JITPROXY_BIN", &bin);
    check()?;

    util::step("starting a stand-in production API and jitproxy (embedded default config)");
    let api_addr: SocketAddr = DEMO_API.parse()?;
    let _api = Upstream::start(api_addr, Behaviour::Http)
        .with_context(|| format!("the demo needs {DEMO_API} free"))?;
    let cgroup = Cgroup::create("demo")?;
    let mut daemon = Daemon::start(&cgroup, None)?;
    println!(
        "stand-in API     http://{DEMO_API}/  (target `demo-api` of `jitproxy config default`)"
    );
    println!("watched cgroup   {}", cgroup.path().display());
    println!(
        "jitproxy         pid {}, listening on 127.0.0.1:971 and [::1]:971",
        daemon.pid().unwrap_or(0)
    );
    check()?;

    let url = format!("http://{DEMO_API}/v1/payments/42");
    let curl = |cmd: &mut std::process::Command| {
        let (ok, out, err) = output(cmd.args(["-sS", "-m", "5", &url]));
        print!("{}", if ok { out } else { err });
        ok
    };

    util::step("no grant yet: curl from inside the watched cgroup is refused");
    println!("nobody$ curl {url}    # inside {}", cgroup.path().display());
    if curl(&mut cgroup.command_as(NOBODY, NOBODY, "curl")) {
        bail!("a target was reachable without a grant");
    }
    as_nobody(&daemon, &["why"]);
    check()?;

    util::step("the engineer asks for access; an approver (root here) approves it");
    as_nobody(
        &daemon,
        &["request", "demo-api", "--for", "10m", "--reason", "DEMO-1"],
    );
    println!("root$ jitproxy requests");
    print!("{}", daemon.client(&["requests"]));
    println!("root$ jitproxy approve 1");
    print!("{}", daemon.client(&["approve", "1"]));
    println!("root$ jitproxy grant root demo-api --for 10m --reason DEMO-2    # an approver grants themselves access");
    let (code, out, err) = daemon.client_as(
        0,
        0,
        None,
        &[
            "grant", "root", "demo-api", "--for", "10m", "--reason", "DEMO-2",
        ],
    );
    print!("{out}{err}");
    if code == 0 {
        bail!("root granted itself access");
    }
    println!("root$ jitproxy grants --all");
    print!("{}", daemon.client(&["grants", "--all"]));
    check()?;

    util::step("granted: nobody's curl goes through the proxy; root, without a grant, is refused");
    println!("nobody$ curl {url}");
    curl(&mut cgroup.command_as(NOBODY, NOBODY, "curl"));
    println!("root$ curl {url}");
    if curl(&mut cgroup.command("curl")) {
        bail!("root reached a target without a grant");
    }
    check()?;

    println!("\nWhat jitproxy recorded for nobody's request (its audit event):");
    let allowed = daemon.events_of("connection.allowed");
    for event in &allowed {
        print_event(event);
    }
    if allowed.len() != 1 {
        bail!(
            "expected 1 redirected connection, saw {}:\n{}",
            allowed.len(),
            daemon.log_text()
        );
    }

    util::step("curl from outside the cgroup: not watched, goes direct");
    curl(&mut std::process::Command::new("curl"));
    println!(
        "(jitproxy saw {} connections: unchanged)",
        daemon.events_of("connection.allowed").len()
    );
    check()?;

    util::step("kill -9 the daemon: the pinned programs stay, targets are closed, not open");
    daemon.kill9();
    println!("nobody$ curl {url}    # daemon down");
    if curl(&mut cgroup.command_as(NOBODY, NOBODY, "curl")) {
        bail!("a target was reachable while the daemon was down");
    }
    daemon.restart()?;
    println!("nobody$ curl {url}    # after restart: the grant survived");
    curl(&mut cgroup.command_as(NOBODY, NOBODY, "curl"));
    check()?;

    util::step("nobody gives their access back: `jitproxy drop demo-api`");
    as_nobody(&daemon, &["drop", "demo-api"]);
    println!("nobody$ curl {url}");
    if curl(&mut cgroup.command_as(NOBODY, NOBODY, "curl")) {
        bail!("access outlived a dropped grant");
    }

    util::step("the audit trail: every grant and connection, hash-chained and signed");
    println!("root$ jitproxy audit");
    print!("{}", daemon.client(&["audit"]));
    daemon.stop()?;
    let config = daemon.state_dir();
    let (ok, out, err) = output(
        std::process::Command::new(&bin)
            .args(["audit", "verify", "--state-dir"])
            .arg(&config),
    );
    println!("root$ jitproxy audit verify");
    print!("{out}{err}");
    if !ok {
        bail!("the demo's audit log does not verify");
    }

    util::step("cleaning up: daemon stopped, programs detached, cgroup removed");
    drop(daemon);
    drop(cgroup);
    println!("done. Next: README.md (install, grants) and docs/architecture.md.");
    Ok(())
}

/// `jitproxy ARGS` as nobody, shown as typed and answered.
fn as_nobody(daemon: &Daemon, args: &[&str]) {
    println!("nobody$ jitproxy {}", args.join(" "));
    let (_, out, err) = daemon.client_as(NOBODY, NOBODY, None, args);
    print!("{out}{err}");
}

fn print_event(e: &Value) {
    let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
    let n = |k: &str| e[k].as_i64().unwrap_or(-1);
    let login = match n("login_uid") {
        -1 => "unset".to_owned(),
        uid => uid.to_string(),
    };
    println!(
        "  {client} -> {dst} ({target}) via jitproxy\n    caller: user {user} (uid {uid}, gid {gid}, login uid {login}), pid {pid}, comm {comm}\n            exe {exe}, cgroup {cgroup}",
        client = s("client"),
        dst = s("dst"),
        target = s("target_name"),
        user = s("user"),
        uid = n("uid"),
        gid = n("gid"),
        pid = n("pid"),
        comm = s("comm"),
        exe = s("exe"),
        cgroup = s("cgroup"),
    );
}

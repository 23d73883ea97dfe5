//! The inspect section of `cargo xtask bench`: proxies that terminate TLS,
//! add a credential and open TLS again toward the upstream, against a direct
//! TLS connection, in one run. nginx serves `api.inspect.test` on
//! 127.0.0.3:18444 with a leaf signed by an upstream CA the bench makes;
//! HAProxy (mode http, one thread) does the job on 127.0.0.1:18444 with a
//! leaf signed by a second, local CA; jitproxy does it as an inspect target
//! with the local CA it makes itself. Every client asks for
//! `https://api.inspect.test:18444/`, the name resolved through a hosts file
//! bound over /etc/hosts for that client only, so that the three routes see
//! the same requests.
//!
//! jitproxy's inspect mode may not be built (or may fail) in the binary
//! measured: its column then says why and the section goes on without it.

use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    net::TcpListener,
    os::unix::fs::OpenOptionsExt as _,
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Instant,
};

use anyhow::{anyhow, bail, Context as _, Result};
use jitproxy_e2e::{Cgroup, Daemon};

use super::{
    daemon_warnings, format_count, format_duration, grant, http_get, load_average, median, pinned,
    ratio, row, spawn_daemon, versions, wrk, Http, HttpMedians, Options, Route, Scenario, Scratch,
    Server, DEFAULT_DAEMON_LOG, METRICS,
};
use crate::util;

/// The name every client asks for and every certificate is for.
const SERVER_NAME: &str = "api.inspect.test";
/// nginx's address: one of its own, and jitproxy's inspect target.
const UPSTREAM_IP: &str = "127.0.0.3";
/// HAProxy's frontend address. Both listen on [`PORT`], so that the
/// clients' requests (`Host: api.inspect.test:18444`) are the same bytes on
/// every route.
const HAPROXY_IP: &str = "127.0.0.1";
const PORT: u16 = 18444;
/// nginx's stub_status (plain HTTP, `GET /status`): its accepted connections
/// over a run say how often a proxy opened a connection upstream.
const NGINX_STATUS: &str = "127.0.0.3:18445";
/// The target as jitproxy's config names it.
const TARGET: &str = "bench-inspect";
/// What the credential's secret file holds; both proxies send
/// `Authorization: Bearer bench-secret`.
const SECRET: &str = "bench-secret";
/// nginx's answer says in this header whether the request carried the
/// credential (`yes` or `no`)...
const CREDENTIAL_HEADER: &str = "x-bench-credential";
/// ... and in this one how it was reached (HTTP and TLS version).
const UPSTREAM_HEADER: &str = "x-bench-upstream";
/// The issue's figures for HAProxy MITM on this machine: ratio to direct TLS
/// and CPU per request on keep-alive, the same per connection for new
/// connections.
const REFERENCE: &str = "HAProxy MITM 0.29× direct TLS on keep-alive (17 µs CPU per request), \
                         0.20× on new connections (845 µs CPU per connection)";
/// The issue's aims: jitproxy's ratio to direct over HAProxy's, keep-alive
/// and new connections.
const AIM_KEEP_ALIVE: f64 = 1.5;
const AIM_NEW_CONNECTION: f64 = 3.0;

pub(super) fn run(options: &Options, pin: bool, interrupted: &util::Interrupted) -> Result<()> {
    let check = || interrupted.check();
    let upstream = format!("{UPSTREAM_IP}:{PORT}");
    let haproxy_addr = format!("{HAPROXY_IP}:{PORT}");
    for addr in [
        upstream.as_str(),
        haproxy_addr.as_str(),
        NGINX_STATUS,
        METRICS,
    ] {
        TcpListener::bind(addr).with_context(|| {
            format!("{addr} is in use; is another bench running? (stop it first)")
        })?;
    }

    util::step("inspect: starting nginx (TLS upstream), HAProxy (MITM) and jitproxy (inspect)");
    let scratch = Scratch::create("bench-inspect")?;
    let files = Files::create(scratch.path())?;
    let nginx = start_nginx(&scratch, &files, pin)?;
    let haproxy = start_haproxy(&scratch, &files, pin)?;
    let cgroup = Cgroup::create("bench-inspect")?;
    let base = format!("https://{SERVER_NAME}:{PORT}");
    let direct = Route {
        name: "direct",
        base: base.clone(),
        cgroup: None,
        proxy: None,
        metrics: None,
        hosts: Some(&files.hosts_upstream),
    };
    let hap = Route {
        name: "HAProxy",
        base,
        cgroup: None,
        proxy: Some(haproxy.pid()),
        metrics: None,
        hosts: Some(&files.hosts_haproxy),
    };
    let direct_probe = probe(&direct, &files.upstream_ca)?;
    if direct_probe.credential != "no" {
        bail!("nginx saw the credential on a direct request: its check is broken");
    }
    let hap_probe = probe(&hap, &files.local_ca)?;
    if hap_probe.credential != "yes" {
        bail!("the credential did not arrive at nginx through HAProxy");
    }

    // From here on jitproxy's failures are reported, not fatal. The harness
    // panics when it cannot clean up after a daemon that failed to start
    // (`jitproxy uninstall` refuses the config too): one more such failure.
    let daemon = panic::catch_unwind(AssertUnwindSafe(|| {
        start_jitproxy(&cgroup, &files, &options.daemon_log, pin)
    }))
    .unwrap_or_else(|_| {
        Err(anyhow!(
            "jitproxy did not start, and cleaning up after it failed (the panic message above says why)"
        ))
    });
    let jitproxy = match &daemon {
        Ok(daemon) => check_jitproxy(daemon, &cgroup, &files),
        Err(e) => Err(failure(e, "")),
    };
    let (jit_route, jit_probe, mut unavailable) = match jitproxy {
        Ok((route, probe)) => (Some(route), Some(probe), None),
        Err(why) => {
            eprintln!("  jitproxy inspect: not available ({why})");
            (None, None, Some(why))
        }
    };
    check()?;

    let mut report = Report {
        options,
        pin,
        started: Instant::now(),
        load: load_average(),
        versions: versions(),
        probes: [Some(direct_probe), jit_probe, Some(hap_probe)],
        sections: Vec::new(),
        unavailable: None,
        notes: Vec::new(),
    };
    let d = options.duration;
    let c = options.connections;
    let scenarios = [
        Scenario {
            title: format!("keep-alive, {c} connections (wrk -t1 -c{c} -d{d}s)"),
            connections: c,
            close: false,
            tls: true,
            // One audit record per request.
            fsyncs: true,
        },
        Scenario {
            title: format!("single client, keep-alive (wrk -t1 -c1 -d{d}s)"),
            connections: 1,
            close: false,
            tls: true,
            // One audit record per request.
            fsyncs: true,
        },
        Scenario {
            title: format!("new connection per request, {c} at a time (Connection: close)"),
            connections: c,
            close: true,
            tls: true,
            fsyncs: true,
        },
    ];
    for scenario in &scenarios {
        util::step(&format!("inspect: {}", scenario.title));
        // Columns as the table has them.
        let routes = [Some(&direct), jit_route.as_ref(), Some(&hap)];
        let section = measure(&routes, scenario, options, &mut unavailable, interrupted)?;
        report.sections.push(section);
    }

    if let Ok(daemon) = &daemon {
        let warnings = daemon_warnings(daemon);
        if !warnings.is_empty() {
            report
                .notes
                .extend(warnings.iter().map(|w| format!("jitproxy logged {w}")));
            report.notes.push(
                "expected: a few connection.denied, for connections wrk closes before the proxy \
                 accepts them (its test connection at the start of a run, and those still \
                 waiting when a connection-per-request run stops)"
                    .to_owned(),
            );
        }
    }
    report.unavailable = unavailable;
    util::step("inspect: stopping jitproxy, HAProxy and nginx");
    // The harness checks the daemon's audit log when it stops it, and panics
    // if the check fails: reported here, as any other failure of jitproxy's.
    if panic::catch_unwind(AssertUnwindSafe(|| drop(daemon))).is_err() {
        report.notes.push(
            "jitproxy's audit log check failed when it was stopped (the panic message above says why)"
                .to_owned(),
        );
    }
    drop(cgroup);
    drop(haproxy);
    drop(nginx);
    drop(scratch);
    print!("{}", report.render());
    Ok(())
}

/// jitproxy's route, checked with one request that must carry the
/// credential to nginx; or why not, for the table.
fn check_jitproxy<'a>(
    daemon: &Daemon,
    cgroup: &'a Cgroup,
    files: &'a Files,
) -> Result<(Route<'a>, Probe), String> {
    let route = Route {
        name: "jitproxy",
        base: format!("https://{SERVER_NAME}:{PORT}"),
        cgroup: Some(cgroup),
        proxy: daemon.pid(),
        metrics: Some(METRICS),
        hosts: Some(&files.hosts_upstream),
    };
    let checked = probe(&route, &daemon.state_dir().join("ca/ca.crt")).and_then(|p| {
        if p.credential != "yes" {
            bail!("the credential did not arrive at nginx through jitproxy");
        }
        Ok(p)
    });
    match checked {
        Ok(p) => Ok((route, p)),
        Err(e) => {
            let (_, why, _) = daemon.client_as(0, 0, None, &["why"]);
            Err(failure(&e, &why))
        }
    }
}

/// `--runs` wrk runs of `scenario` per route (direct, jitproxy, HAProxy),
/// alternating between the routes as in the other sections, each with the
/// connections nginx accepted per request. A failure of jitproxy's is kept
/// in `unavailable` and its later runs skipped; any other fails the bench.
fn measure(
    routes: &[Option<&Route<'_>>; 3],
    scenario: &Scenario,
    options: &Options,
    unavailable: &mut Option<String>,
    interrupted: &util::Interrupted,
) -> Result<Section> {
    let runs = options.runs;
    let mut results: Vec<Vec<Http>> = routes.iter().map(|_| Vec::new()).collect();
    let mut upstream: Vec<Vec<f64>> = routes.iter().map(|_| Vec::new()).collect();
    for n in 1..=runs {
        for (i, route) in routes.iter().enumerate() {
            let Some(route) = route else { continue };
            let is_jitproxy = i == 1;
            if is_jitproxy && unavailable.is_some() {
                continue;
            }
            let accepted_before = nginx_accepts()?;
            let run = wrk(route, scenario, options.duration);
            // The scrape's own connection is one of those counted.
            let accepted = nginx_accepts()?.saturating_sub(accepted_before + 1);
            match run {
                Ok(http) => {
                    eprintln!(
                        "  {} (run {n} of {runs}): {} requests/s",
                        route.name,
                        format_count(http.per_second)
                    );
                    upstream[i].push(accepted as f64 / http.requests as f64);
                    results[i].push(http);
                }
                Err(e) if is_jitproxy => {
                    let why = failure(&e, "");
                    eprintln!("  jitproxy inspect: not available ({why})");
                    *unavailable = Some(why);
                }
                Err(e) => return Err(e),
            }
            interrupted.check()?;
        }
    }
    Ok(Section {
        title: scenario.title.clone(),
        close: scenario.close,
        results,
        upstream_connections: upstream,
    })
}

/// The connections nginx accepted so far, from its stub_status.
fn nginx_accepts() -> Result<u64> {
    // "Active connections: 1", "server accepts handled requests",
    // " 12 12 40", ...
    let body = http_get(NGINX_STATUS, "/status")?;
    body.lines()
        .nth(2)
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("unexpected stub_status of nginx:\n{body}"))
}

/// The first lines of an error, for a table cell; with `why` (jitproxy's
/// `why` for the client) when it says something.
fn failure(error: &anyhow::Error, why: &str) -> String {
    let text = format!("{error:#}");
    let mut brief: String = text.lines().take(4).collect::<Vec<_>>().join(" | ");
    if text.lines().count() > 4 {
        brief.push_str(" | ...");
    }
    let why = why.trim();
    if !why.is_empty() {
        let _ = write!(
            brief,
            "; jitproxy why: {}",
            why.lines().collect::<Vec<_>>().join(" | ")
        );
    }
    brief
}

/// The certificates, keys, secret and hosts files the servers and clients
/// use, in the section's scratch directory.
struct Files {
    /// The CA nginx's leaf is signed by: HAProxy and jitproxy verify nginx
    /// against it.
    upstream_ca: PathBuf,
    upstream_cert: PathBuf,
    upstream_key: PathBuf,
    /// The CA HAProxy's leaf is signed by (jitproxy makes its own).
    local_ca: PathBuf,
    /// HAProxy's leaf and key in one PEM, as `crt` wants them.
    haproxy_pem: PathBuf,
    /// Root's, 0600.
    secret: PathBuf,
    /// [`SERVER_NAME`] at nginx's address, at HAProxy's.
    hosts_upstream: PathBuf,
    hosts_haproxy: PathBuf,
}

impl Files {
    fn create(dir: &Path) -> Result<Self> {
        let upstream_ca = dir.join("upstream-ca.crt");
        let local_ca = dir.join("local-ca.crt");
        make_ca(&upstream_ca, &dir.join("upstream-ca.key"), "upstream")?;
        make_ca(&local_ca, &dir.join("local-ca.key"), "local")?;
        let upstream_cert = dir.join("upstream.crt");
        let upstream_key = dir.join("upstream.key");
        make_leaf(
            dir,
            (&upstream_ca, &dir.join("upstream-ca.key")),
            &upstream_cert,
            &upstream_key,
        )?;
        let (local_cert, local_key) = (dir.join("local.crt"), dir.join("local.key"));
        make_leaf(
            dir,
            (&local_ca, &dir.join("local-ca.key")),
            &local_cert,
            &local_key,
        )?;
        let haproxy_pem = dir.join("haproxy.pem");
        fs::write(
            &haproxy_pem,
            [fs::read(&local_cert)?, fs::read(&local_key)?].concat(),
        )?;
        let secret = dir.join("secret");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret)
            .and_then(|mut f| f.write_all(SECRET.as_bytes()))
            .with_context(|| format!("cannot write {}", secret.display()))?;
        let hosts = |ip: &str, name: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            fs::write(
                &path,
                format!("127.0.0.1 localhost\n::1 localhost\n{ip} {SERVER_NAME}\n"),
            )?;
            Ok(path)
        };
        Ok(Self {
            upstream_ca,
            upstream_cert,
            upstream_key,
            local_ca,
            haproxy_pem,
            secret,
            hosts_upstream: hosts(UPSTREAM_IP, "hosts.upstream")?,
            hosts_haproxy: hosts(HAPROXY_IP, "hosts.haproxy")?,
        })
    }
}

/// A self-signed P-256 CA valid for a day.
fn make_ca(cert: &Path, key: &Path, which: &str) -> Result<()> {
    openssl(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-nodes", "-days", "1"])
            .arg("-subj")
            .arg(format!("/CN=jitproxy bench {which} CA"))
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(key)
            .arg("-out")
            .arg(cert),
        &format!("the {which} CA"),
    )
}

/// A P-256 leaf for [`SERVER_NAME`] signed by `ca` (certificate, key).
fn make_leaf(dir: &Path, ca: (&Path, &Path), cert: &Path, key: &Path) -> Result<()> {
    let csr = dir.join("leaf.csr");
    let ext = dir.join("leaf.ext");
    openssl(
        Command::new("openssl")
            .args(["req", "-new", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .arg("-subj")
            .arg(format!("/CN={SERVER_NAME}"))
            .arg("-keyout")
            .arg(key)
            .arg("-out")
            .arg(&csr),
        "a certificate request",
    )?;
    fs::write(
        &ext,
        format!(
            "subjectAltName=DNS:{SERVER_NAME}\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        ),
    )?;
    // Without -CAserial, openssl 3 picks a random serial and writes no file.
    openssl(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "1", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(ca.0)
            .arg("-CAkey")
            .arg(ca.1)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(cert),
        &format!("the leaf {}", cert.display()),
    )?;
    fs::remove_file(&csr)?;
    fs::remove_file(&ext)?;
    Ok(())
}

fn openssl(cmd: &mut Command, what: &str) -> Result<()> {
    let out = match cmd.stdin(Stdio::null()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "the inspect section needs the openssl command to make its certificates, \
             and it is not installed: apt-get install openssl"
        ),
        Err(e) => return Err(e).context("cannot run openssl"),
    };
    if !out.status.success() {
        bail!(
            "openssl could not make {what} ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// nginx for this section alone: TLS (1.2 and 1.3, HTTP/2 offered by ALPN)
/// on [`UPSTREAM_IP`]:[`PORT`], the same small body for every request, and
/// in two headers whether the credential came and how nginx was reached.
fn start_nginx(scratch: &Scratch, files: &Files, pin: bool) -> Result<Server> {
    let dir = scratch.path();
    let d = dir.display();
    let (cert, key) = (files.upstream_cert.display(), files.upstream_key.display());
    // nginx 1.22 (Debian 12) has `listen ... http2`; `http2 on;` is 1.25.1+.
    let conf = format!(
        r#"worker_processes 1;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/nginx.error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    map $http_authorization $bench_credential {{
        "Bearer {SECRET}" yes;
        default no;
    }}
    server {{
        listen {UPSTREAM_IP}:{PORT} ssl http2;
        server_name {SERVER_NAME};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            default_type text/plain;
            add_header {CREDENTIAL_HEADER} $bench_credential;
            add_header {UPSTREAM_HEADER} "$server_protocol $ssl_protocol";
            return 200 "ok\n";
        }}
    }}
    server {{
        listen {NGINX_STATUS};
        location = /status {{
            stub_status;
        }}
    }}
}}
"#
    );
    let conf_path = dir.join("nginx.conf");
    fs::write(&conf_path, conf)?;
    let mut cmd = pinned("1", pin, "/usr/sbin/nginx");
    cmd.arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("nginx.error.log"))
        .arg("-c")
        .arg(&conf_path)
        .args(["-g", "daemon off;"]);
    Server::start(
        "nginx",
        cmd,
        &[&format!("{UPSTREAM_IP}:{PORT}"), NGINX_STATUS],
        &dir.join("nginx.out"),
    )
}

/// HAProxy as a TLS-terminating proxy that adds the credential: its leaf
/// from the local CA, nginx verified against the upstream CA with
/// [`SERVER_NAME`] as SNI, server connections kept and reused
/// (`http-reuse always`) and TLS sessions toward nginx resumed (HAProxy's
/// default).
fn start_haproxy(scratch: &Scratch, files: &Files, pin: bool) -> Result<Server> {
    let dir = scratch.path();
    let (pem, ca) = (files.haproxy_pem.display(), files.upstream_ca.display());
    let conf = format!(
        r#"global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend inspect
    bind {HAPROXY_IP}:{PORT} ssl crt {pem}
    http-request set-header Authorization "Bearer {SECRET}"
    default_backend upstream
backend upstream
    http-reuse always
    server s1 {UPSTREAM_IP}:{PORT} ssl verify required ca-file {ca} sni str({SERVER_NAME}) verifyhost {SERVER_NAME}
"#
    );
    let conf_path = dir.join("haproxy.cfg");
    fs::write(&conf_path, conf)?;
    let mut cmd = pinned("0", pin, "/usr/sbin/haproxy");
    // -db: foreground, no master process: the pid we hold is the proxy.
    cmd.arg("-db").arg("-f").arg(&conf_path);
    Server::start(
        "haproxy",
        cmd,
        &[&format!("{HAPROXY_IP}:{PORT}")],
        &dir.join("haproxy.out"),
    )
}

/// jitproxy with the inspect target, the bench's clients granted access.
fn start_jitproxy(cgroup: &Cgroup, files: &Files, log: &str, pin: bool) -> Result<Daemon> {
    // Limits as the passthrough target's, for connections and for requests
    // (an inspect target's own default is 100 per second per user): far
    // above any rate reached.
    let targets = format!(
        r#"
[[target]]
name = "{TARGET}"
hosts = ["{UPSTREAM_IP}"]
ports = [{PORT}]
mode = "inspect"
server_names = ["{SERVER_NAME}"]
upstream_ca = "{}"
limits = {{ connections_per_second = 1000000.0, burst = 1000000, max_concurrent = 1000000 }}
requests_per_second = 1000000.0
requests_burst = 1000000
[target.credential]
header = "Authorization"
value = "Bearer {{secret}}"
secret_file = "{}"
"#,
        files.upstream_ca.display(),
        files.secret.display()
    );
    let daemon = spawn_daemon(cgroup, &targets, log, pin)?;
    grant(&daemon, TARGET)?;
    Ok(daemon)
}

/// What nginx said to a check request.
struct Probe {
    /// `yes` when the request carried `Authorization: Bearer bench-secret`.
    credential: String,
    /// How the request reached nginx: HTTP and TLS version.
    upstream: String,
}

/// One request through `route` with curl, its certificate verified against
/// `ca`.
fn probe(route: &Route<'_>, ca: &Path) -> Result<Probe> {
    let out = route
        .command("curl")
        .args(["-sS", "--noproxy", "*", "-m", "5", "-o", "/dev/null"])
        .arg("--cacert")
        .arg(ca)
        .arg("-w")
        .arg(format!(
            "%{{http_code}}\n%header{{{CREDENTIAL_HEADER}}}\n%header{{{UPSTREAM_HEADER}}}"
        ))
        .arg(format!("{}/", route.base))
        .stdin(Stdio::null())
        .output()
        .context("cannot run curl")?;
    if !out.status.success() {
        bail!(
            "a check request to {}/ via {} failed: {}",
            route.base,
            route.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let status = lines.next().unwrap_or("");
    if status != "200" {
        bail!(
            "a check request to {}/ via {} answered {status}",
            route.base,
            route.name
        );
    }
    Ok(Probe {
        credential: lines.next().unwrap_or("").to_owned(),
        upstream: lines.next().unwrap_or("").to_owned(),
    })
}

/// One scenario's wrk runs, per route (direct, jitproxy, HAProxy).
struct Section {
    title: String,
    /// A new connection per request: CPU is per connection.
    close: bool,
    results: Vec<Vec<Http>>,
    /// Connections nginx accepted per request, per route and run.
    upstream_connections: Vec<Vec<f64>>,
}

struct Report<'a> {
    options: &'a Options,
    pin: bool,
    started: Instant,
    load: Option<f64>,
    versions: String,
    /// The check requests, per route.
    probes: [Option<Probe>; 3],
    sections: Vec<Section>,
    /// Why jitproxy's column is empty.
    unavailable: Option<String>,
    notes: Vec<String>,
}

impl Report<'_> {
    fn render(&self) -> String {
        let mut out = String::new();
        let o = self.options;
        let _ = writeln!(
            out,
            "\njitproxy bench: inspect ({} s)",
            self.started.elapsed().as_secs()
        );
        if let Some(bin) = &o.jitproxy_bin {
            let _ = writeln!(out, "jitproxy binary: {} (--jitproxy-bin)", bin.display());
        }
        let _ = writeln!(
            out,
            "upstream {} on {UPSTREAM_IP}:{PORT}: TLS 1.2/1.3 with ALPN h2, leaf for {SERVER_NAME} \
             from the bench's upstream CA (P-256); every client asks for https://{SERVER_NAME}:{PORT}/ \
             (the name resolved to the route's address by a hosts file bound over /etc/hosts for it alone)",
            self.versions
        );
        let _ = writeln!(
            out,
            "HAProxy: mode http, nbthread 1, on {HAPROXY_IP}:{PORT} with a leaf from the bench's local CA; \
             sets Authorization; to nginx: verify required against the upstream CA, SNI {SERVER_NAME}, \
             http-reuse always, TLS sessions resumed"
        );
        let _ = writeln!(
            out,
            "jitproxy: inspect target {TARGET} (its own local CA), credential from a root-only secret file, \
             connection and request limits above any rate reached, JITPROXY_LOG={}{}",
            o.daemon_log,
            if o.daemon_log == DEFAULT_DAEMON_LOG {
                " (the audit log is written)"
            } else {
                ""
            }
        );
        let names = ["direct", "jitproxy", "HAProxy"];
        let checks: Vec<String> = names
            .iter()
            .zip(&self.probes)
            .filter_map(|(name, p)| {
                let p = p.as_ref()?;
                let credential = match p.credential.as_str() {
                    "yes" => "credential arrived",
                    "no" => "no credential",
                    _ => "credential not reported",
                };
                Some(format!(
                    "{name}: {credential}, nginx reached by {}",
                    p.upstream
                ))
            })
            .collect();
        let _ = writeln!(out, "check requests (curl): {}", checks.join("; "));
        let _ = writeln!(
            out,
            "cpus {}; {}; load average at start {}",
            thread::available_parallelism().map_or(0, usize::from),
            if self.pin {
                "proxies pinned to CPU 0, nginx to CPU 1, clients unpinned"
            } else {
                "nothing pinned"
            },
            self.load.map_or("?".to_owned(), |l| format!("{l:.2}"))
        );
        let _ = writeln!(
            out,
            "each wrk cell is the median of {} runs of {} s per route, the routes' runs alternating; \
             ratios: value / direct TLS, and jitproxy / HAProxy; CPU is the proxy process's utime+stime",
            o.runs, o.duration
        );
        let _ = writeln!(
            out,
            "nginx connections per request: what nginx accepted over a run (stub_status on {NGINX_STATUS}) / requests; \
             audit fsyncs: jitproxy's over a run / requests\n"
        );
        let _ = writeln!(
            out,
            "{:<34}{:>12}{:>12}{:>12}{:>10}{:>10}{:>10}",
            "", "direct TLS", "jitproxy", "HAProxy", "jit/dir", "HAP/dir", "jit/HAP"
        );
        let mut notes = Vec::new();
        // Ratio to direct TLS of jitproxy's and HAProxy's requests/s, keep-alive
        // (many connections) and new connection.
        let mut keep_alive = None;
        let mut new_connection = None;
        for section in &self.sections {
            let title = &section.title;
            let _ = writeln!(out, "{title}");
            let results: Vec<Option<HttpMedians>> = section
                .results
                .iter()
                .enumerate()
                .map(|(i, runs)| {
                    let dropped = i == 1 && self.unavailable.is_some();
                    (!dropped && !runs.is_empty()).then(|| HttpMedians::of(runs))
                })
                .collect();
            row(&mut out, "  requests/s", &results, |r| {
                let r = r.as_ref()?;
                Some((r.per_second, format_count(r.per_second)))
            });
            let seconds = |v: f64| format_duration(std::time::Duration::from_secs_f64(v));
            row(&mut out, "  latency p50", &results, |r| {
                let r = r.as_ref()?;
                Some((r.p50, seconds(r.p50)))
            });
            row(&mut out, "  latency p99", &results, |r| {
                let r = r.as_ref()?;
                Some((r.p99, seconds(r.p99)))
            });
            let cpu_label = if section.close {
                "  proxy CPU per connection"
            } else {
                "  proxy CPU per request"
            };
            row(&mut out, cpu_label, &results, |r| {
                let per = r.as_ref()?.cpu_per_request?;
                Some((per, seconds(per)))
            });
            let upstream: Vec<String> = section
                .upstream_connections
                .iter()
                .enumerate()
                .map(|(i, runs)| {
                    let dropped = i == 1 && self.unavailable.is_some();
                    let value = median(runs.clone()).filter(|_| !dropped);
                    value.map_or("-".to_owned(), |v| format!("{v:.3}"))
                })
                .collect();
            let _ = writeln!(
                out,
                "{:<34}{:>12}{:>12}{:>12}",
                "  nginx connections per request", upstream[0], upstream[1], upstream[2]
            );
            if results
                .iter()
                .flatten()
                .any(|r| r.fsyncs_per_connection.is_some())
            {
                let label = if section.close {
                    "  audit fsyncs per connection"
                } else {
                    "  audit fsyncs per request"
                };
                row(&mut out, label, &results, |r| {
                    let per = r.as_ref()?.fsyncs_per_connection?;
                    Some((per, format!("{per:.3}")))
                });
            }
            let to_direct = |i: usize| {
                let rate = |i: usize| results.get(i)?.as_ref().map(|r| r.per_second);
                Some(rate(i)? / rate(0)?)
            };
            let ratios = (to_direct(1), to_direct(2));
            // The keep-alive aim is about many connections, not one.
            if section.close {
                new_connection = Some(ratios);
            } else if keep_alive.is_none() {
                keep_alive = Some(ratios);
            }
            for (name, r) in names.iter().zip(&results) {
                if let Some(r) = r.as_ref().filter(|r| r.errors > 0) {
                    notes.push(format!(
                        "{title}: {name}: {} socket errors or non-2xx responses in {} requests ({} runs)",
                        r.errors, r.requests, r.runs
                    ));
                }
            }
        }
        let aim = |label: &str, ratios: Option<(Option<f64>, Option<f64>)>, aim: f64| {
            let (jit, hap) = ratios.unwrap_or((None, None));
            let cell = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}×"));
            let ratio_of_ratios = jit.zip(hap).map(|(j, h)| ratio(j, h));
            format!(
                "  {label:<20} jitproxy {} / HAProxy {} direct = {} (aim ≥ {aim})",
                cell(jit),
                cell(hap),
                ratio_of_ratios.unwrap_or_else(|| "-".to_owned())
            )
        };
        let _ = writeln!(
            out,
            "aims (the issue): jitproxy's ratio to direct TLS over HAProxy's"
        );
        let _ = writeln!(out, "{}", aim("keep-alive", keep_alive, AIM_KEEP_ALIVE));
        let _ = writeln!(
            out,
            "{}",
            aim("new connections", new_connection, AIM_NEW_CONNECTION)
        );
        let _ = writeln!(out, "reference (the issue, this machine): {REFERENCE}");
        if let Some(why) = &self.unavailable {
            let _ = writeln!(out, "jitproxy inspect: not available ({why})");
        }
        notes.extend(self.notes.iter().cloned());
        if let Some(load) = self.load.filter(|l| *l >= 1.0) {
            notes.push(format!(
                "the load average was {load:.2} before the first run: other work shared the CPUs, \
                 so expect noise; run again on an idle machine"
            ));
        }
        for note in notes {
            let _ = writeln!(out, "note: {note}");
        }
        out.lines().map(|l| format!("{}\n", l.trim_end())).collect()
    }
}

//! `cargo xtask bench`: jitproxy against a direct connection and HAProxy, in
//! one run, on loopback. An nginx upstream on 127.0.0.2:18080 is reached
//! three ways: direct (wrk outside the watched cgroup), through jitproxy (the
//! same command inside it, redirected by the kernel programs) and through
//! HAProxy 2.6 in TCP mode with one thread (127.0.0.1:28080). The same nginx
//! also serves TLS on 127.0.0.2:18443 (a self-signed certificate made at
//! start with the openssl CLI), reached the same three ways (HAProxy's TLS
//! frontend is 127.0.0.1:28443), and passed through by both proxies. Prints
//! requests/s and latency for keep-alive, connection-per-request (plain and
//! TLS) and single-client load, each the median of `--runs` wrk runs; bulk
//! throughput through one connection; the proxies' CPU time per request;
//! jitproxy's audit fsyncs per connection (from its metrics endpoint); and
//! the proxies' memory with idle connections open, each with its ratio to
//! direct and jitproxy's to HAProxy's.
//!
//! The inspect section (`bench/inspect.rs`) runs after it, with servers and a
//! daemon of its own: TLS-terminating proxies that add a credential, against
//! a direct TLS connection. `--only` picks sections.
//!
//! Only prints: nothing here passes or fails on a figure (speed is measured,
//! never asserted). Every server it starts is stopped by pid, also on error
//! and on Ctrl-C.

mod inspect;

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use jitproxy_e2e::{Cgroup, Daemon, PYTHON};

use crate::{setup, util};

/// The stand-in production API (nginx) and jitproxy's target.
const UPSTREAM: &str = "127.0.0.2:18080";
/// HAProxy's frontend.
const HAPROXY: &str = "127.0.0.1:28080";
/// nginx's TLS listener, on the same address as [`UPSTREAM`] and part of
/// the same target.
const UPSTREAM_TLS: &str = "127.0.0.2:18443";
/// HAProxy's TLS frontend (TCP passthrough to [`UPSTREAM_TLS`]).
const HAPROXY_TLS: &str = "127.0.0.1:28443";
/// jitproxy's Prometheus endpoint (plain HTTP, `GET /metrics`): not the
/// 9971 of the docs' examples, so a daemon installed on the machine does not
/// collide with it.
const METRICS: &str = "127.0.0.1:9972";
/// The audit writer's fsync histogram's count in the metrics text: one per
/// group commit.
const FSYNC_COUNT_METRIC: &str = "jitproxy_audit_fsync_seconds_count";
/// nginx's self-signed certificate and key, in the scratch directory.
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
/// jitproxy's listener (127.0.0.1 and [::1]): below 1024, as jitproxy
/// requires (no other user may bind it), and not the default 971 the demo
/// uses.
const JITPROXY_PORT: u16 = 970;
/// `/proc/PID/stat` counts CPU time in USER_HZ, which Linux fixes at 100 for
/// every architecture whatever the kernel's own tick rate.
const USER_HZ: u64 = 100;
/// Name of the sparse file nginx serves for the bulk run.
const BULK_FILE: &str = "bulk.bin";
const GIB: u64 = 1 << 30;
/// Warnings only, so that the two info log lines per connection (copies of
/// the audit records for the operator's log) are not what is measured; the
/// audit log itself is written as always.
const DEFAULT_DAEMON_LOG: &str = "warn";
/// The target as the daemon's config names it; limits far above any rate
/// the bench reaches, so that none refuses a connection.
const TARGET_CONFIG: &str = r#"
[[target]]
name = "bench-api"
hosts = ["127.0.0.2"]
ports = [18080, 18443]
limits = { connections_per_second = 1000000.0, burst = 1000000, max_concurrent = 1000000 }
"#;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Seconds of each wrk run (four scenarios, three routes each, --runs
    /// times).
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// wrk runs per route and scenario; each figure printed is their median.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Concurrent connections of the keep-alive and connection-per-request runs.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// GiB moved through one connection in the bulk run.
    #[arg(long, default_value_t = 2)]
    bulk_gib: u64,
    /// Idle connections held open through each proxy for the memory figures.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Let the scheduler place every process (default: proxies on CPU 0,
    /// nginx on CPU 1).
    #[arg(long)]
    no_pin: bool,
    /// JITPROXY_LOG for the daemon. The default drops the per-connection
    /// log lines (info); the audit log is written either way.
    #[arg(long, default_value = DEFAULT_DAEMON_LOG)]
    daemon_log: String,
    /// Measure this jitproxy binary instead of building the workspace's
    /// (e.g. an earlier commit's, for a before-and-after table).
    #[arg(long, value_name = "PATH")]
    jitproxy_bin: Option<PathBuf>,
    /// Run only these sections (comma-separated or repeated); all when not
    /// given.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "SECTION")]
    only: Vec<Part>,
}

impl Options {
    fn runs_part(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

/// The bench's sections, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// Plain HTTP and TLS passed through: keep-alive, new connections,
    /// single client, bulk, memory.
    Passthrough,
    /// TLS terminated, a credential added: direct TLS, HAProxy MITM and
    /// jitproxy's inspect mode.
    Inspect,
    /// `jitproxy debug bench-decision` and `bench-audit`.
    Micro,
}

pub fn run(options: &Options) -> Result<()> {
    util::require_root("jitproxy attaches eBPF programs to a cgroup")?;
    if options.duration == 0
        || options.runs == 0
        || options.connections == 0
        || options.bulk_gib == 0
    {
        bail!("--duration, --runs, --connections and --bulk-gib must be at least 1");
    }
    let interrupted = util::on_ctrl_c()?;

    // Before anything is installed or started: jitproxy needs cgroup v2.
    jitproxy_e2e::cgroup2_mount()?;
    setup::run(setup::Needs {
        bench: true,
        ..setup::Needs::default()
    })?;
    let bin = match &options.jitproxy_bin {
        Some(bin) if bin.is_file() => bin.clone(),
        Some(bin) => bail!("--jitproxy-bin {}: no such file", bin.display()),
        None => util::build_jitproxy()?,
    };
    std::env::set_var("JITPROXY_BIN", &bin);
    interrupted.check()?;
    // Pinning: on two cores, each proxy gets CPU 0 to itself and nginx gets
    // CPU 1, so a proxy can never take more than one core (HAProxy runs one
    // thread; jitproxy's runtime has a worker per core) and the two are
    // compared on equal terms. wrk and the other clients float: the
    // scheduler gives them whatever time is left on either core. Direct runs
    // have one process fewer competing, which is part of what a proxy costs.
    let pin = !options.no_pin;
    // Each section starts and stops its own servers and prints its table
    // when done, so that a later section's failure keeps the earlier ones.
    if options.runs_part(Part::Passthrough) {
        passthrough(options, pin, &interrupted)?;
    }
    if options.runs_part(Part::Inspect) {
        inspect::run(options, pin, &interrupted)?;
    }
    if options.runs_part(Part::Micro) {
        micro_benchmarks(&bin)?;
    }
    Ok(())
}

/// The passthrough section: plain HTTP and TLS through both proxies, bulk
/// and memory.
fn passthrough(options: &Options, pin: bool, interrupted: &util::Interrupted) -> Result<()> {
    let check = || interrupted.check();
    // Each idle connection costs a proxy two descriptors; they inherit ours.
    let needed = 2 * options.idle + 256;
    let limit = open_files_limit()?;
    if limit < needed {
        bail!(
            "the open-files limit is {limit} and --idle {} needs {needed}: \
             raise it with `ulimit -n {needed}` or lower --idle",
            options.idle
        );
    }
    for addr in [UPSTREAM, UPSTREAM_TLS, HAPROXY, HAPROXY_TLS, METRICS] {
        TcpListener::bind(addr).with_context(|| {
            format!("{addr} is in use; is another bench running? (stop it first)")
        })?;
    }

    util::step("starting nginx (upstream), HAProxy and jitproxy");
    let scratch = Scratch::create("bench")?;
    make_certificate(&scratch)?;
    let nginx = start_nginx(&scratch, options.bulk_gib * GIB, pin)?;
    let haproxy = start_haproxy(&scratch, pin)?;
    let cgroup = Cgroup::create("bench")?;
    let daemon = start_jitproxy(&cgroup, &options.daemon_log, pin)?;
    let jitproxy_pid = daemon
        .pid()
        .context("internal: the daemon reported no pid")?;
    check()?;

    let routes_to = |scheme: &str, upstream: &str, haproxy_addr: &str| {
        [
            Route {
                name: "direct",
                base: format!("{scheme}://{upstream}"),
                cgroup: None,
                proxy: None,
                metrics: None,
                hosts: None,
            },
            Route {
                name: "jitproxy",
                base: format!("{scheme}://{upstream}"),
                cgroup: Some(&cgroup),
                proxy: Some(jitproxy_pid),
                metrics: Some(METRICS),
                hosts: None,
            },
            Route {
                name: "HAProxy",
                base: format!("{scheme}://{haproxy_addr}"),
                cgroup: None,
                proxy: Some(haproxy.pid()),
                metrics: None,
                hosts: None,
            },
        ]
    };
    let routes = routes_to("http", UPSTREAM, HAPROXY);
    let tls_routes = routes_to("https", UPSTREAM_TLS, HAPROXY_TLS);
    let mut report = Report {
        options,
        pin,
        started: Instant::now(),
        load: load_average(),
        versions: versions(),
        sections: Vec::new(),
        daemon_warnings: Vec::new(),
    };

    // Memory first, before any load has grown the allocators' free lists, so
    // "at start" is what an idle daemon holds.
    util::step(&format!(
        "memory: {} idle connections through each proxy",
        options.idle
    ));
    let mut memory = Vec::new();
    for route in &routes[1..] {
        memory.push(idle_memory(route, options.idle)?);
        check()?;
    }

    let d = options.duration;
    let c = options.connections;
    let scenarios = [
        Scenario {
            title: format!("keep-alive, {c} connections (wrk -t1 -c{c} -d{d}s)"),
            connections: c,
            close: false,
            tls: false,
            fsyncs: false,
        },
        Scenario {
            title: format!("new connection per request, {c} at a time (Connection: close)"),
            connections: c,
            close: true,
            tls: false,
            fsyncs: true,
        },
        Scenario {
            title: format!(
                "TLS passthrough, new connection per request, {c} at a time (Connection: close)"
            ),
            connections: c,
            close: true,
            tls: true,
            fsyncs: true,
        },
        Scenario {
            title: format!("single client, keep-alive (wrk -t1 -c1 -d{d}s)"),
            connections: 1,
            close: false,
            tls: false,
            fsyncs: false,
        },
    ];
    let runs = options.runs;
    for scenario in &scenarios {
        util::step(&scenario.title);
        let routes = if scenario.tls { &tls_routes } else { &routes };
        // Runs alternate between the routes, so that a change in the
        // machine's load over the scenario reaches each route alike.
        let mut results: Vec<Vec<Http>> = routes.iter().map(|_| Vec::new()).collect();
        for n in 1..=runs {
            for (route, runs_of_route) in routes.iter().zip(&mut results) {
                eprintln!("  {} (run {n} of {runs})", route.name);
                runs_of_route.push(wrk(route, scenario, d)?);
                check()?;
            }
        }
        report.sections.push(Section::Http {
            title: scenario.title.clone(),
            results,
        });
    }

    util::step(&format!(
        "bulk: {} GiB through one connection (curl)",
        options.bulk_gib
    ));
    let mut bulk_results = Vec::new();
    for route in &routes {
        eprintln!("  {}", route.name);
        bulk_results.push(bulk(route, options.bulk_gib * GIB)?);
        check()?;
    }
    report.sections.push(Section::Bulk(bulk_results));
    report.sections.push(Section::Memory {
        peak: rss_kib(jitproxy_pid, "VmHWM:").ok(),
        results: memory,
    });

    report.daemon_warnings = daemon_warnings(&daemon);

    util::step("stopping jitproxy, HAProxy and nginx");
    drop(daemon);
    drop(cgroup);
    drop(haproxy);
    drop(nginx);
    drop(scratch);
    print!("{}", report.render());
    Ok(())
}

/// The decision's grant lookup with 100k grants, and durable audit appends
/// on the disk under /var/tmp (where a state directory would live).
fn micro_benchmarks(bin: &Path) -> Result<()> {
    println!("\nmicro-benchmarks (jitproxy debug ...)");
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new(bin)
            .args(args)
            .output()
            .with_context(|| format!("cannot run jitproxy {args:?}"))?;
        if !out.status.success() {
            bail!(
                "jitproxy {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        print!("  {}", String::from_utf8_lossy(&out.stdout));
        Ok(())
    };
    run(&["debug", "bench-decision", "--grants", "100000"])?;
    let dir = tempfile::Builder::new()
        .prefix("jitproxy-bench-audit-")
        .tempdir_in("/var/tmp")
        .context("cannot make a directory in /var/tmp")?;
    let dir_arg = dir.path().to_string_lossy().into_owned();
    run(&[
        "debug",
        "bench-audit",
        "--dir",
        &dir_arg,
        "--events",
        "20000",
        "--concurrency",
        "64",
    ])
}

/// Starts jitproxy on `cgroup` with its metrics endpoint on [`METRICS`],
/// grants the bench's clients access, and checks that one request of each
/// kind (plain, TLS) goes through and that the endpoint answers.
fn start_jitproxy(cgroup: &Cgroup, log: &str, pin: bool) -> Result<Daemon> {
    let daemon = spawn_daemon(cgroup, TARGET_CONFIG, log, pin)?;
    grant(&daemon, "bench-api")?;
    // A refused request would make every figure meaningless.
    for url in [
        format!("http://{UPSTREAM}/"),
        format!("https://{UPSTREAM_TLS}/"),
    ] {
        let probe = cgroup
            .command("curl")
            // -k: nginx's certificate is the bench's own, self-signed.
            .args(["-sS", "-k", "--noproxy", "*", "-m", "5"])
            .arg(&url)
            .stdin(Stdio::null())
            .output()
            .context("cannot run curl")?;
        if !probe.status.success() {
            let (_, why, _) = daemon.client_as(0, 0, None, &["why"]);
            bail!(
                "a request to {url} through jitproxy failed: {}\n$ jitproxy why\n{why}",
                String::from_utf8_lossy(&probe.stderr).trim()
            );
        }
    }
    fsync_count(METRICS).context("jitproxy's metrics endpoint did not answer as expected")?;
    Ok(daemon)
}

/// Starts jitproxy on `cgroup` with the bench's settings (listener, metrics
/// endpoint on [`METRICS`], one worker when pinned) and `targets` (TOML), its
/// threads pinned to CPU 0 when `pin`.
fn spawn_daemon(cgroup: &Cgroup, targets: &str, log: &str, pin: bool) -> Result<Daemon> {
    // One worker thread when pinned to one CPU, as HAProxy runs one thread.
    let threads = if pin { "worker_threads = 1\n" } else { "" };
    let config =
        format!("listen_port = {JITPROXY_PORT}\n{threads}metrics = \"{METRICS}\"\n{targets}");
    let daemon = Daemon::start_with_env(cgroup, Some(&config), &[("JITPROXY_LOG", log)])
        .context("jitproxy did not start")?;
    if pin {
        let pid = daemon
            .pid()
            .context("internal: the daemon reported no pid")?;
        // Every thread now; threads started later inherit it from theirs.
        util::run(
            Command::new("taskset")
                .args(["-a", "-p", "-c", "0"])
                .arg(pid.to_string())
                .stdout(Stdio::null()),
        )?;
    }
    Ok(daemon)
}

/// The audit writer's fsyncs so far: the count of jitproxy's fsync
/// histogram, read from its metrics endpoint at `addr`.
fn fsync_count(addr: &str) -> Result<u64> {
    let body = http_get(addr, "/metrics")
        .with_context(|| format!("cannot read jitproxy's metrics endpoint {addr}"))?;
    // `name value`, no labels: the histogram has none.
    body.lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(FSYNC_COUNT_METRIC)).then(|| words.next())?
        })
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .with_context(|| format!("no {FSYNC_COUNT_METRIC} in http://{addr}/metrics"))
}

/// The body of `http://addr/path`, with one HTTP/1.0 request (the server
/// closes the connection after its answer); an error unless it is a 200.
fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let timeout = Duration::from_secs(10);
    let mut stream = TcpStream::connect_timeout(&addr.parse()?, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .with_context(|| format!("cannot read the answer of http://{addr}{path}"))?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("http://{addr}{path} answered `{status}`");
    }
    Ok(body.to_owned())
}

/// Grants the bench's clients (whoever started it: their login uid, else
/// root) access to `target` for the length of a run.
fn grant(daemon: &Daemon, target: &str) -> Result<()> {
    let login_uid = fs::read_to_string("/proc/self/loginuid")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|uid| *uid != u32::MAX);
    let who = login_uid.unwrap_or(0).to_string();
    // Nobody may grant access to themselves: the harness's operator, an
    // approver in every test config, grants it.
    let operator = jitproxy_e2e::OPERATOR;
    let (code, out, err) = daemon.client_as(
        operator,
        operator,
        None,
        &[
            "grant",
            &who,
            target,
            "--for",
            "1h",
            "--reason",
            "cargo xtask bench",
        ],
    );
    if code != 0 {
        bail!("jitproxy grant {who} {target} failed ({code}): {out}{err}");
    }
    Ok(())
}

/// One way to reach the upstream.
struct Route<'a> {
    name: &'static str,
    /// `http://host:port` the client asks for.
    base: String,
    /// The watched cgroup the client runs in, for jitproxy.
    cgroup: Option<&'a Cgroup>,
    /// The proxy process whose CPU time and memory are measured.
    proxy: Option<u32>,
    /// The proxy's metrics endpoint, for its audit fsyncs (jitproxy).
    metrics: Option<&'static str>,
    /// A hosts file the client sees as /etc/hosts (bound over it in a mount
    /// namespace of its own), so that a name in `base` resolves to this
    /// route's address for the client only.
    hosts: Option<&'a Path>,
}

impl Route<'_> {
    fn command(&self, program: &str) -> Command {
        let in_cgroup = |program: &str| match self.cgroup {
            Some(cgroup) => cgroup.command(program),
            None => Command::new(program),
        };
        let Some(hosts) = self.hosts else {
            return in_cgroup(program);
        };
        // The namespace, and the bind mount with it, ends with the client;
        // unshare makes its mounts private, so the host never sees it.
        let mut cmd = in_cgroup("unshare");
        cmd.args([
            "-m",
            "sh",
            "-c",
            r#"mount --bind "$0" /etc/hosts && exec "$@""#,
        ])
        .arg(hosts)
        .arg(program);
        cmd
    }

    fn cpu(&self) -> Result<Option<Duration>> {
        self.proxy.map(cpu_time).transpose()
    }

    /// Fails when a proxy did no work for a run that should have gone through
    /// it: wrk inside the cgroup then reached nginx directly.
    fn check_used(&self, cpu: Option<Duration>, work: &str) -> Result<()> {
        if cpu == Some(Duration::ZERO) {
            bail!(
                "{} used no CPU while carrying {work}: the clients did not go through it",
                self.name
            );
        }
        Ok(())
    }
}

struct Scenario {
    title: String,
    connections: u32,
    /// `Connection: close`: a new connection per request.
    close: bool,
    /// The routes to nginx's TLS listener (wrk speaks https).
    tls: bool,
    /// Count jitproxy's audit fsyncs over each run (where it writes more
    /// than one record per connection, or one connection per request).
    fsyncs: bool,
}

/// What one wrk run reported, with the proxy's CPU time over it.
struct Http {
    requests: u64,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
    cpu: Option<Duration>,
    /// The audit writer's fsyncs over the run (jitproxy, where the scenario
    /// counts them).
    fsyncs: Option<u64>,
}

struct Bulk {
    bytes: u64,
    seconds: f64,
    cpu: Option<Duration>,
}

struct Memory {
    name: &'static str,
    start_kib: u64,
    idle_kib: u64,
}

enum Section {
    Http {
        title: String,
        /// Per route (direct, jitproxy, HAProxy), each of its runs.
        results: Vec<Vec<Http>>,
    },
    Bulk(Vec<Bulk>),
    Memory {
        peak: Option<u64>,
        results: Vec<Memory>,
    },
}

fn wrk(route: &Route<'_>, scenario: &Scenario, seconds: u64) -> Result<Http> {
    let mut cmd = route.command("wrk");
    cmd.args(["-t1", "--latency"])
        .arg(format!("-c{}", scenario.connections))
        .arg(format!("-d{seconds}s"));
    if scenario.close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("{}/", route.base));
    // Scraped outside the CPU window: the scrape's own work is not counted.
    let metrics = route.metrics.filter(|_| scenario.fsyncs);
    let fsyncs_before = metrics.map(fsync_count).transpose()?;
    let before = route.cpu()?;
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("cannot run wrk (cargo xtask setup --bench installs it)")?;
    let after = route.cpu()?;
    let fsyncs_after = match metrics {
        Some(addr) => {
            // The last connections' closes are fsynced within 100 ms.
            thread::sleep(Duration::from_millis(250));
            Some(fsync_count(addr)?)
        }
        None => None,
    };
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk via {} failed ({}):\n{text}{}",
            route.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut http = parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))?;
    http.cpu = after.zip(before).map(|(a, b)| a.saturating_sub(b));
    http.fsyncs = fsyncs_after
        .zip(fsyncs_before)
        .map(|(a, b)| a.saturating_sub(b));
    route.check_used(http.cpu, &format!("{} requests", http.requests))?;
    Ok(http)
}

/// Reads requests, requests/s, the 50th and 99th percentiles and the error
/// counts from `wrk --latency` output.
fn parse_wrk(text: &str) -> Result<Http> {
    let mut http = Http {
        requests: 0,
        per_second: f64::NAN,
        p50: Duration::ZERO,
        p99: Duration::ZERO,
        errors: 0,
        cpu: None,
        fsyncs: None,
    };
    let (mut p50, mut p99) = (None, None);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["50%", value] => p50 = Some(parse_wrk_duration(value)?),
            ["99%", value] => p99 = Some(parse_wrk_duration(value)?),
            ["Requests/sec:", value] => http.per_second = value.parse()?,
            [count, "requests", "in", ..] => http.requests = count.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", count] => http.errors += count.parse::<u64>()?,
            ["Socket", "errors:", ..] => {
                // connect N, read N, write N, timeout N
                for count in line.split([',', ' ']).filter_map(|w| w.parse::<u64>().ok()) {
                    http.errors += count;
                }
            }
            _ => {}
        }
    }
    http.p50 = p50.context("no 50% line")?;
    http.p99 = p99.context("no 99% line")?;
    if http.per_second.is_nan() || http.requests == 0 {
        bail!("no requests counted");
    }
    Ok(http)
}

/// `123.45us`, `1.20ms`, `2.00s`, `1.50m` as wrk prints them.
fn parse_wrk_duration(text: &str) -> Result<Duration> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in `{text}`"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("bad number in `{text}`"))?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => bail!("unknown unit in `{text}`"),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// Downloads the bulk file through one connection with curl; curl times
/// the transfer itself.
fn bulk(route: &Route<'_>, size: u64) -> Result<Bulk> {
    let before = route.cpu()?;
    let out = route
        .command("curl")
        .args(["-sS", "--noproxy", "*", "-o", "/dev/null", "-w"])
        .arg("%{size_download} %{time_total}")
        .arg(format!("{}/{BULK_FILE}", route.base))
        .stdin(Stdio::null())
        .output()
        .context("cannot run curl")?;
    let after = route.cpu()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "curl via {} failed ({}): {}",
            route.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (bytes, seconds) = text
        .split_once(' ')
        .and_then(|(b, s)| Some((b.parse::<u64>().ok()?, s.trim().parse::<f64>().ok()?)))
        .with_context(|| format!("unexpected curl output `{text}`"))?;
    if bytes != size {
        bail!("curl via {} received {bytes} bytes of {size}", route.name);
    }
    let cpu = after.zip(before).map(|(a, b)| a.saturating_sub(b));
    route.check_used(cpu, "the bulk download")?;
    Ok(Bulk {
        bytes,
        seconds,
        cpu,
    })
}

/// The proxy's RSS at rest and with `n` idle connections open through it.
/// The clients are one python3 process (inside the watched cgroup for
/// jitproxy) that connects `n` times and waits.
fn idle_memory(route: &Route<'_>, n: usize) -> Result<Memory> {
    const SCRIPT: &str = r#"
import resource, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n + 64)), hard))
held = [socket.create_connection((host, port), timeout=10) for _ in range(n)]
print("ready", flush=True)
sys.stdin.read()
"#;
    let pid = route
        .proxy
        .context("internal: memory of a route without proxy")?;
    let start_kib = rss_kib(pid, "VmRSS:")?;
    let fds_before = open_fds(pid)?;
    let (host, port) = route
        .base
        .trim_start_matches("http://")
        .rsplit_once(':')
        .context("internal: route base without port")?;
    let mut child = route
        .command(PYTHON)
        .args(["-c", SCRIPT, host, port, &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {PYTHON}"))?;
    let client = KillOnDrop(&mut child);
    let mut line = String::new();
    if let Some(stdout) = client.0.stdout.take() {
        BufReader::new(stdout).read_line(&mut line)?;
    }
    if line.trim() != "ready" {
        bail!(
            "the idle-connection client failed to open {n} connections via {}",
            route.name
        );
    }
    // connect() returns once the kernel queued the connection; wait until
    // the proxy has accepted each and opened its upstream side (2 fds each).
    let deadline = Instant::now() + Duration::from_secs(10);
    let fds = loop {
        let fds = open_fds(pid)?;
        if fds >= fds_before + 2 * n {
            break fds;
        }
        if Instant::now() > deadline {
            bail!(
                "{} holds {fds} descriptors, {fds_before} before {n} idle connections: they did not all go through it",
                route.name
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    thread::sleep(Duration::from_millis(300));
    let idle_kib = rss_kib(pid, "VmRSS:")?;
    drop(client);
    eprintln!(
        "  {}: {fds} descriptors open, RSS {start_kib} KiB -> {idle_kib} KiB",
        route.name
    );
    Ok(Memory {
        name: route.name,
        start_kib,
        idle_kib,
    })
}

/// Kills and reaps a client on every exit path.
struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server this bench started; stopped by pid on drop.
struct Server {
    name: &'static str,
    child: Child,
}

impl Server {
    /// Spawns `cmd` with its output in `log` and waits until each of
    /// `addrs` accepts.
    fn start(name: &'static str, mut cmd: Command, addrs: &[&str], log: &Path) -> Result<Self> {
        let out = fs::File::create(log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        let mut server = Self { name, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        for addr in addrs {
            let addr: SocketAddr = addr.parse()?;
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if let Some(status) = server.child.try_wait()? {
                    bail!(
                        "{name} exited with {status} before it listened on {addr}:\n{}",
                        fs::read_to_string(log).unwrap_or_default()
                    );
                }
                if Instant::now() > deadline {
                    bail!(
                        "{name} did not listen on {addr} within 10 s:\n{}",
                        fs::read_to_string(log).unwrap_or_default()
                    );
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master then stops its worker, which a
        // SIGKILL would leave behind.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} ignored SIGTERM for 5 s; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pinned(cpu: &str, pin: bool, program: &str) -> Command {
    if pin {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", cpu, program]);
        cmd
    } else {
        Command::new(program)
    }
}

fn start_nginx(scratch: &Scratch, bulk_size: u64, pin: bool) -> Result<Server> {
    let dir = scratch.path();
    // Sparse: no disk space or I/O. Read once here so the page cache holds
    // it: the first read of a hole allocates and zeroes pages, which made
    // the first (direct) download a third as fast as the later ones.
    let bulk_path = dir.join(BULK_FILE);
    fs::File::create(&bulk_path)?.set_len(bulk_size)?;
    std::io::copy(&mut fs::File::open(&bulk_path)?, &mut std::io::sink())?;
    let d = dir.display();
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
    sendfile on;
    server {{
        listen {UPSTREAM};
        location = /{BULK_FILE} {{
            root {d};
            default_type application/octet-stream;
        }}
        location / {{
            default_type text/plain;
            return 200 "ok\n";
        }}
    }}
    server {{
        listen {UPSTREAM_TLS} ssl;
        ssl_certificate {d}/{TLS_CERT};
        ssl_certificate_key {d}/{TLS_KEY};
        location / {{
            default_type text/plain;
            return 200 "ok\n";
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
        &[UPSTREAM, UPSTREAM_TLS],
        &dir.join("nginx.out"),
    )
}

fn start_haproxy(scratch: &Scratch, pin: bool) -> Result<Server> {
    let dir = scratch.path();
    let conf = format!(
        r"global
    nbthread 1
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend bench
    bind {HAPROXY}
    default_backend nginx
backend nginx
    server nginx {UPSTREAM}
frontend bench_tls
    bind {HAPROXY_TLS}
    default_backend nginx_tls
backend nginx_tls
    server nginx_tls {UPSTREAM_TLS}
"
    );
    let conf_path = dir.join("haproxy.cfg");
    fs::write(&conf_path, conf)?;
    let mut cmd = pinned("0", pin, "/usr/sbin/haproxy");
    // -db: foreground, no master process: the pid we hold is the proxy.
    cmd.arg("-db").arg("-f").arg(&conf_path);
    Server::start(
        "haproxy",
        cmd,
        &[HAPROXY, HAPROXY_TLS],
        &dir.join("haproxy.out"),
    )
}

/// nginx's TLS certificate: self-signed for 127.0.0.2 (P-256), valid for a
/// day, made with the openssl CLI into the scratch directory. wrk does not
/// verify it; the probe through jitproxy uses `curl -k`.
fn make_certificate(scratch: &Scratch) -> Result<()> {
    let dir = scratch.path();
    let host = UPSTREAM_TLS
        .rsplit_once(':')
        .map_or(UPSTREAM_TLS, |(host, _)| host);
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-nodes", "-days", "1"])
        .arg("-subj")
        .arg(format!("/CN={host}"))
        .arg("-addext")
        .arg(format!("subjectAltName=IP:{host}"))
        .arg("-keyout")
        .arg(dir.join(TLS_KEY))
        .arg("-out")
        .arg(dir.join(TLS_CERT))
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "the TLS scenario needs the openssl command to make nginx's certificate, \
             and it is not installed: apt-get install openssl"
        ),
        Err(e) => return Err(e).context("cannot run openssl"),
    };
    if !out.status.success() {
        bail!(
            "openssl could not make nginx's certificate ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A directory for the servers' configs, logs and the bulk file.
struct Scratch(PathBuf);

impl Scratch {
    /// `/tmp/jitproxy-<name>-<pid>`, one per section.
    fn create(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("jitproxy-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// jitproxy's warnings and errors, counted by event, each with its first
/// message: more than a few denials mean some load did not measure the data
/// path.
fn daemon_warnings(daemon: &Daemon) -> Vec<String> {
    let mut counts: Vec<(String, usize, String)> = Vec::new();
    for event in daemon.events() {
        let level = event["level"].as_str().unwrap_or("");
        if level != "WARN" && level != "ERROR" {
            continue;
        }
        let kind = event["event"].as_str().unwrap_or(level).to_owned();
        match counts.iter_mut().find(|(k, _, _)| *k == kind) {
            Some((_, n, _)) => *n += 1,
            None => {
                let message = event["message"].as_str().unwrap_or("").to_owned();
                counts.push((kind, 1, message));
            }
        }
    }
    counts
        .into_iter()
        .map(|(kind, n, message)| format!("{n}× {kind} (first: {message})"))
        .collect()
}

/// utime + stime of a process (all its threads).
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat; did the proxy exit?"))?;
    // The command name may hold spaces; the fields after it do not.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields 14 and 15 of proc(5); the slice starts at field 3.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("unexpected /proc/{pid}/stat: {stat}"))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_millis(total * 1000 / USER_HZ))
}

/// A `Vm*:` line of /proc/PID/status, in KiB.
fn rss_kib(pid: u32, key: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

fn open_fds(pid: u32) -> Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// The soft open-files limit, which the servers inherit.
fn open_files_limit() -> Result<usize> {
    let limits = fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no open-files limit in /proc/self/limits")?;
    Ok(line
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX))
}

/// The one-minute load average.
fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// First line of each tool's version output.
fn versions() -> String {
    let first_line = |program: &str, arg: &str| -> String {
        Command::new(program)
            .arg(arg)
            .output()
            .map(|o| {
                // nginx prints its version on stderr, wrk exits 1.
                let text = [o.stdout, o.stderr].concat();
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_default()
    };
    let nginx = first_line("/usr/sbin/nginx", "-v");
    let haproxy = first_line("/usr/sbin/haproxy", "-v");
    let wrk = first_line("wrk", "-v");
    let word = |s: &str, n: usize| s.split_whitespace().nth(n).unwrap_or("?").to_owned();
    format!(
        "{}, HAProxy {}, wrk {}",
        word(&nginx, 2).replace('/', " "),
        word(&haproxy, 2),
        word(&wrk, 1).trim_start_matches("debian/")
    )
}

/// Everything measured, rendered as one table at the end.
struct Report<'a> {
    options: &'a Options,
    pin: bool,
    started: Instant,
    /// Load average just before the first measurement: other work on the
    /// machine shows up as noise in every figure.
    load: Option<f64>,
    versions: String,
    sections: Vec<Section>,
    /// What jitproxy logged at warn or above, counted by event.
    daemon_warnings: Vec<String>,
}

impl Report<'_> {
    fn render(&self) -> String {
        let mut out = String::new();
        let o = self.options;
        let _ = writeln!(
            out,
            "\njitproxy bench ({} s)",
            self.started.elapsed().as_secs()
        );
        if let Some(bin) = &o.jitproxy_bin {
            let _ = writeln!(out, "jitproxy binary: {} (--jitproxy-bin)", bin.display());
        }
        let _ = writeln!(
            out,
            "upstream {} on {UPSTREAM} (TLS on {UPSTREAM_TLS}, P-256 self-signed, passed through by both proxies); \
             HAProxy: mode tcp, nbthread 1; loopback only",
            self.versions
        );
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
            "jitproxy: one grant covers the clients; the target's connection limits are set above any rate reached"
        );
        let _ = writeln!(
            out,
            "jitproxy runs with JITPROXY_LOG={}{}",
            o.daemon_log,
            if o.daemon_log == DEFAULT_DAEMON_LOG {
                ": per-connection log lines (info) are not written, the audit log is; --daemon-log info writes both"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "each wrk cell is the median of {} runs of {} s per route, the routes' runs alternating \
             (CPU per request and fsyncs per connection are computed per run, then the median); \
             bulk and memory are single runs",
            o.runs, o.duration
        );
        // Checked with nginx's $ssl_session_reused (wrk 4.1, OpenSSL 3.0):
        // wrk's reconnect keeps its SSL object's session.
        let _ = writeln!(
            out,
            "TLS: wrk negotiates TLS 1.2 and resumes its session on each new connection \
             (abbreviated handshakes); the proxies only pass the bytes through"
        );
        let _ = writeln!(
            out,
            "audit fsyncs per connection: jitproxy's {FSYNC_COUNT_METRIC} (from {METRICS}) over the run / requests"
        );
        let _ = writeln!(
            out,
            "ratios: value / direct, and jitproxy / HAProxy; CPU is the proxy process's utime+stime (10 ms ticks)\n"
        );
        let _ = writeln!(
            out,
            "{:<34}{:>12}{:>12}{:>12}{:>10}{:>10}{:>10}",
            "", "direct", "jitproxy", "HAProxy", "jit/dir", "HAP/dir", "jit/HAP"
        );
        let mut notes = Vec::new();
        for section in &self.sections {
            match section {
                Section::Http { title, results } => {
                    let _ = writeln!(out, "{title}");
                    let results: Vec<HttpMedians> =
                        results.iter().map(|runs| HttpMedians::of(runs)).collect();
                    row(&mut out, "  requests/s", &results, |r| {
                        Some((r.per_second, format_count(r.per_second)))
                    });
                    row(&mut out, "  latency p50", &results, |r| {
                        Some((r.p50, format_duration(Duration::from_secs_f64(r.p50))))
                    });
                    row(&mut out, "  latency p99", &results, |r| {
                        Some((r.p99, format_duration(Duration::from_secs_f64(r.p99))))
                    });
                    row(&mut out, "  proxy CPU per request", &results, |r| {
                        let per = r.cpu_per_request?;
                        Some((per, format_duration(Duration::from_secs_f64(per))))
                    });
                    if results.iter().any(|r| r.fsyncs_per_connection.is_some()) {
                        row(&mut out, "  audit fsyncs per connection", &results, |r| {
                            let per = r.fsyncs_per_connection?;
                            Some((per, format!("{per:.3}")))
                        });
                    }
                    for (name, r) in ["direct", "jitproxy", "HAProxy"].iter().zip(&results) {
                        if r.errors > 0 {
                            notes.push(format!(
                                "{title}: {name}: {} socket errors or non-2xx responses in {} requests ({} runs)",
                                r.errors, r.requests, r.runs
                            ));
                        }
                    }
                }
                Section::Bulk(results) => {
                    let gib = o.bulk_gib;
                    let _ = writeln!(out, "bulk, {gib} GiB through one connection (curl)");
                    row(&mut out, "  throughput", results, |r| {
                        let rate = r.bytes as f64 / r.seconds;
                        Some((rate, format!("{:.2} GiB/s", rate / GIB as f64)))
                    });
                    row(&mut out, "  proxy CPU per GiB", results, |r| {
                        let per = r.cpu?.as_secs_f64() / (r.bytes as f64 / GIB as f64);
                        Some((per, format!("{:.0} ms", per * 1e3)))
                    });
                }
                Section::Memory { peak, results } => {
                    let n = o.idle;
                    let _ = writeln!(out, "proxy memory (RSS), {n} idle connections");
                    // Memory has no direct figure: columns are jitproxy, HAProxy.
                    let by_name = |name: &str| results.iter().find(|m| m.name == name);
                    let mem_row = |out: &mut String, label: &str, f: &dyn Fn(&Memory) -> f64| {
                        let jit = by_name("jitproxy").map(f);
                        let hap = by_name("HAProxy").map(f);
                        let cell = |v: Option<f64>| v.map_or("-".to_owned(), format_kib);
                        let ratio = jit.zip(hap).map_or(String::new(), |(j, h)| ratio(j, h));
                        let _ = writeln!(
                            out,
                            "{label:<34}{:>12}{:>12}{:>12}{:>10}{:>10}{:>10}",
                            "-",
                            cell(jit),
                            cell(hap),
                            "",
                            "",
                            ratio
                        );
                    };
                    mem_row(&mut out, "  at start", &|m| m.start_kib as f64);
                    mem_row(&mut out, &format!("  with {n} idle"), &|m| {
                        m.idle_kib as f64
                    });
                    let _ = writeln!(
                        out,
                        "{:<34}{:>12}{:>12}{:>12}{:>10}{:>10}{:>10}",
                        "  per idle connection",
                        "-",
                        by_name("jitproxy").map_or("-".to_owned(), |m| per_conn(m, n)),
                        by_name("HAProxy").map_or("-".to_owned(), |m| per_conn(m, n)),
                        "",
                        "",
                        ""
                    );
                    if let Some(peak) = peak {
                        let _ = writeln!(
                            out,
                            "{:<34}{:>12}{:>12}",
                            "  jitproxy peak (VmHWM), whole run",
                            "-",
                            format_kib(*peak as f64)
                        );
                    }
                }
            }
        }
        for warning in &self.daemon_warnings {
            notes.push(format!("jitproxy logged {warning}"));
        }
        if !self.daemon_warnings.is_empty() {
            notes.push(
                "expected: a few connection.denied, for connections wrk closes before the \
                 proxy accepts them (its record goes with it): wrk's test connection at the \
                 start of a run, and in the connection-per-request runs those still waiting \
                 to be accepted when wrk stops"
                    .to_owned(),
            );
        }
        if let Some(load) = self.load.filter(|l| *l >= 1.0) {
            notes.push(format!(
                "the load average was {load:.2} before the first run (a build just before adds to it): \
                 other work shared the CPUs, so expect noise; run again on an idle machine"
            ));
        }
        for note in notes {
            let _ = writeln!(out, "note: {note}");
        }
        // Empty ratio columns leave trailing blanks.
        out.lines().map(|l| format!("{}\n", l.trim_end())).collect()
    }
}

/// A route's wrk runs: the median of each figure over the runs, and the
/// errors and requests summed.
struct HttpMedians {
    runs: usize,
    requests: u64,
    errors: u64,
    per_second: f64,
    /// Seconds.
    p50: f64,
    p99: f64,
    /// Seconds of proxy CPU per request.
    cpu_per_request: Option<f64>,
    fsyncs_per_connection: Option<f64>,
}

impl HttpMedians {
    fn of(runs: &[Http]) -> Self {
        let of = |f: &dyn Fn(&Http) -> Option<f64>| median(runs.iter().filter_map(f).collect());
        // Each request had its own connection where fsyncs are counted.
        let per_request = |n: f64, r: &Http| n / r.requests as f64;
        Self {
            runs: runs.len(),
            requests: runs.iter().map(|r| r.requests).sum(),
            errors: runs.iter().map(|r| r.errors).sum(),
            per_second: of(&|r| Some(r.per_second)).unwrap_or(f64::NAN),
            p50: of(&|r| Some(r.p50.as_secs_f64())).unwrap_or(f64::NAN),
            p99: of(&|r| Some(r.p99.as_secs_f64())).unwrap_or(f64::NAN),
            cpu_per_request: of(&|r| Some(per_request(r.cpu?.as_secs_f64(), r))),
            fsyncs_per_connection: of(&|r| Some(per_request(r.fsyncs? as f64, r))),
        }
    }
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// One table row: a value per route (direct, jitproxy, HAProxy) and ratios.
fn row<T>(
    out: &mut String,
    label: &str,
    results: &[T],
    value: impl Fn(&T) -> Option<(f64, String)>,
) {
    let values: Vec<Option<(f64, String)>> = results.iter().map(value).collect();
    let cell = |i: usize| {
        values
            .get(i)
            .and_then(Option::as_ref)
            .map_or("-".to_owned(), |(_, s)| s.clone())
    };
    let num = |i: usize| values.get(i).and_then(Option::as_ref).map(|(v, _)| *v);
    let r = |a: usize, b: usize| {
        num(a)
            .zip(num(b))
            .map_or(String::new(), |(x, y)| ratio(x, y))
    };
    let _ = writeln!(
        out,
        "{label:<34}{:>12}{:>12}{:>12}{:>10}{:>10}{:>10}",
        cell(0),
        cell(1),
        cell(2),
        r(1, 0),
        r(2, 0),
        r(1, 2)
    );
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "-".to_owned()
    }
}

fn per_conn(m: &Memory, n: usize) -> String {
    let kib = (m.idle_kib.saturating_sub(m.start_kib)) as f64 / n as f64;
    format!("{kib:.1} KiB")
}

fn format_count(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn format_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn format_kib(kib: f64) -> String {
    if kib < 10240.0 {
        format!("{kib:.0} KiB")
    } else {
        format!("{:.1} MiB", kib / 1024.0)
    }
}

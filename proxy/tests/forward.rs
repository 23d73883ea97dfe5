//! The data path in process, without eBPF or privileges: a [`Proxy`] on
//! 127.0.0.1:0 whose kernel records come from a fake [`OriginSource`], with a
//! real grant index (in-memory store) and a real audit log (in a temp dir), in
//! front of test upstreams on 127.0.0.1:0. Each test drives real TCP clients
//! and checks what they, the upstream and the audit log see.

use std::{
    collections::BTreeMap,
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use jitproxy::{
    access::{Access, GrantStore as _, NewGrant, Principal, Subject},
    audit::{query, AuditLog, AuditSettings, Record},
    config::Config,
    host::users::Users,
    proxy::{OriginSource, Policy, Proxy, ProxySettings},
    store::SqliteStore,
    time::now_ms,
};
use proxy_common::{ConnectRecord, SockTuple};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, Barrier},
    task::{JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;

/// Failure guard for every wait. Never reached when the proxy works; it only
/// turns a hang into a failure that says what was awaited.
const GUARD: Duration = Duration::from_secs(60);

/// The caller in every fake kernel record; grants are made for this uid.
const CALLER_UID: u32 = 4242;
/// The one configured target; every fake record points at it (index 0).
const TARGET: &str = "test-upstream";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_round_trip() {
    let mut upstream = Upstream::echo().await;
    let proxy = RunningProxy::start(FakeKernel::headed_for(upstream.addr)).await;

    let mut client = proxy.connect().await;
    client
        .write_all(b"GET /health HTTP/1.1\r\n\r\n")
        .await
        .expect("client write");
    let mut echoed = [0u8; 24];
    within("the echo", client.read_exact(&mut echoed))
        .await
        .expect("client read of the echo");
    assert_eq!(&echoed, b"GET /health HTTP/1.1\r\n\r\n");

    client.shutdown().await.expect("client shutdown(SHUT_WR)");
    let rest = read_to_end(&mut client, "the end of the echo").await;
    assert!(
        rest.is_empty(),
        "after the echo the client got {} unexpected bytes",
        rest.len()
    );

    let trail = proxy.stop().await;
    assert_eq!(
        upstream.accepted_so_far(),
        1,
        "one client connection must make exactly one upstream connection"
    );
    let events = trail.only_connection(&["connection.allowed", "connection.closed"]);
    let (allowed, closed) = (&events[0], &events[1]);
    assert_eq!(allowed.target.as_deref(), Some(TARGET), "{allowed:?}");
    assert_eq!(
        allowed.dst.as_deref(),
        Some(upstream.addr.to_string().as_str()),
        "{allowed:?}"
    );
    assert_eq!(allowed.user.as_ref().map(|u| u.uid), Some(CALLER_UID));
    assert!(
        allowed.grant_id.is_some(),
        "allowed without a grant id: {allowed:?}"
    );
    assert_eq!(
        (closed.bytes_up, closed.bytes_down),
        (Some(24), Some(24)),
        "the closing record must count the bytes moved each way: {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_each_way_arrive_intact() {
    const LEN: u64 = 100 * 1024 * 1024;
    const UP_SEED: u64 = 0x7570;
    const DOWN_SEED: u64 = 0x646f_776e;

    let (report, mut upstream_saw) = mpsc::unbounded_channel();
    let upstream = Upstream::start(move |stream| {
        let report = report.clone();
        async move {
            let (mut read, mut write) = stream.into_split();
            let (received, sent) = tokio::join!(
                check_pattern(&mut read, UP_SEED, LEN),
                send_pattern(&mut write, DOWN_SEED, LEN),
            );
            let _ = report.send((received, sent));
        }
    })
    .await;
    let proxy = RunningProxy::start(FakeKernel::headed_for(upstream.addr)).await;

    let client = proxy.connect().await;
    let (mut read, mut write) = client.into_split();
    let (received, sent) = within("100 MiB each way", async {
        tokio::join!(
            check_pattern(&mut read, DOWN_SEED, LEN),
            send_pattern(&mut write, UP_SEED, LEN),
        )
    })
    .await;
    sent.expect("client sending 100 MiB upstream");
    if let Err(e) = received {
        panic!("upstream-to-client stream through the proxy is wrong: {e}");
    }
    let (upstream_received, upstream_sent) = within("the upstream's report", upstream_saw.recv())
        .await
        .expect("upstream handler ended without a report");
    upstream_sent.expect("upstream sending 100 MiB to the client");
    if let Err(e) = upstream_received {
        panic!("client-to-upstream stream through the proxy is wrong: {e}");
    }

    let trail = proxy.stop().await;
    let events = trail.only_connection(&["connection.allowed", "connection.closed"]);
    assert_eq!(
        (events[1].bytes_up, events[1].bytes_down),
        (Some(LEN), Some(LEN)),
        "closing record: {:?}",
        events[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_reaches_upstream_and_reply_still_arrives() {
    let (report, mut upstream_saw) = mpsc::unbounded_channel();
    let upstream = Upstream::start(move |mut stream| {
        let report = report.clone();
        async move {
            // Reads until the client's EOF, and only then answers.
            let mut request = Vec::new();
            let read = stream.read_to_end(&mut request).await.map(|_| request);
            let _ = report.send(read);
            let _ = stream.write_all(b"reply sent after your EOF").await;
            let _ = stream.shutdown().await;
        }
    })
    .await;
    let proxy = RunningProxy::start(FakeKernel::headed_for(upstream.addr)).await;

    let mut client = proxy.connect().await;
    client.write_all(b"request").await.expect("client write");
    client.shutdown().await.expect("client shutdown(SHUT_WR)");

    let request = within("the upstream to see the client's EOF", upstream_saw.recv())
        .await
        .expect("upstream handler ended without a report")
        .expect("upstream read up to EOF");
    assert_eq!(
        request, b"request",
        "upstream must get the request, then EOF"
    );

    let reply = read_to_end(&mut client, "the reply after the half-close").await;
    assert_eq!(
        reply, b"reply sent after your EOF",
        "after a half-close the upstream's reply must still reach the client"
    );

    let trail = proxy.stop().await;
    let events = trail.only_connection(&["connection.allowed", "connection.closed"]);
    assert_eq!(
        (events[1].bytes_up, events[1].bytes_down),
        (Some(7), Some(25)),
        "closing record: {:?}",
        events[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_without_record_is_reset_and_never_forwarded() {
    let mut upstream = Upstream::echo().await;
    let kernel = FakeKernel::without_records();
    let proxy = RunningProxy::start(Arc::clone(&kernel)).await;

    expect_reset(&proxy, b"secret", "a connection with no kernel record").await;
    assert_eq!(
        kernel.lookups.load(Ordering::Relaxed),
        1,
        "the proxy must look the connection up exactly once"
    );

    let trail = proxy.stop().await;
    upstream.assert_never_reached().await;
    let events = trail.only_connection(&["connection.denied"]);
    assert_eq!(
        events[0].code.as_deref(),
        Some("no_record"),
        "{:?}",
        events[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_without_grant_is_reset_and_never_forwarded() {
    let mut upstream = Upstream::echo().await;
    let proxy = RunningProxy::start_with(
        FakeKernel::headed_for(upstream.addr),
        Options {
            grant: false,
            ..Options::default()
        },
    )
    .await;

    expect_reset(&proxy, b"secret", "a caller without a grant").await;

    let trail = proxy.stop().await;
    upstream.assert_never_reached().await;
    let events = trail.only_connection(&["connection.denied"]);
    let denied = &events[0];
    assert_eq!(denied.code.as_deref(), Some("no_grant"), "{denied:?}");
    assert_eq!(denied.target.as_deref(), Some(TARGET), "{denied:?}");
    assert_eq!(denied.user.as_ref().map(|u| u.uid), Some(CALLER_UID));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_resets_the_client() {
    let closed = {
        let listener =
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a port to close");
        listener.local_addr().expect("closed port address")
    };
    // A connect timeout longer than the guard: the reset must come from the
    // refused connect, not from the timeout.
    let proxy = RunningProxy::start_with(
        FakeKernel::headed_for(closed),
        Options {
            connect_timeout: GUARD * 2,
            ..Options::default()
        },
    )
    .await;

    expect_reset(&proxy, b"hello?", "an unreachable upstream").await;

    let trail = proxy.stop().await;
    let events = trail.only_connection(&["connection.allowed", "connection.failed"]);
    assert_eq!(
        events[1].code.as_deref(),
        Some("upstream_unreachable"),
        "{:?}",
        events[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_live_connections_and_serve_returns() {
    let (report, mut upstream_saw) = mpsc::unbounded_channel();
    let upstream = Upstream::start(move |stream| {
        let report = report.clone();
        async move {
            let (mut read, mut write) = stream.into_split();
            let copied = tokio::io::copy(&mut read, &mut write).await;
            let _ = report.send(copied);
        }
    })
    .await;
    let proxy = RunningProxy::start(FakeKernel::headed_for(upstream.addr)).await;
    let addr = proxy.addr;

    let mut client = proxy.connect().await;
    client.write_all(b"ping").await.expect("client write");
    let mut pong = [0u8; 4];
    within("the echo", client.read_exact(&mut pong))
        .await
        .expect("client read of the echo");
    assert_eq!(
        &pong, b"ping",
        "the connection must be live before shutdown"
    );

    // The client keeps its write side open: only the shutdown can end it.
    let trail = proxy.stop().await;

    let mut buf = [0u8; 16];
    match within("the client to see the cut", client.read(&mut buf)).await {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("after shutdown the client must see EOF or a reset, got {other:?}"),
    }
    let upstream_end = within("the upstream to see the cut", upstream_saw.recv())
        .await
        .expect("upstream handler ended without a report");
    match upstream_end {
        Ok(n) => assert_eq!(n, 4, "upstream copied {n} bytes, expected the 4 of `ping`"),
        Err(e) => assert_eq!(
            e.kind(),
            io::ErrorKind::ConnectionReset,
            "upstream end after shutdown: {e}"
        ),
    }
    match TcpStream::connect(addr).await {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        other => panic!("after serve returned, {addr} must refuse connections, got {other:?}"),
    }
    let events = trail.only_connection(&["connection.allowed", "connection.closed"]);
    assert_eq!(
        events[1].ended_by.as_deref(),
        Some("daemon: daemon shutdown"),
        "the closing record must say the daemon cut it: {:?}",
        events[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connections_are_not_cross_wired() {
    const CONNECTIONS: usize = 200;

    let upstream = Upstream::echo().await;
    let proxy = RunningProxy::start(FakeKernel::headed_for(upstream.addr)).await;

    // Every client connects and sends before any of them closes, so all
    // connections are open through the proxy at the same time.
    let barrier = Arc::new(Barrier::new(CONNECTIONS));
    let mut clients = JoinSet::new();
    for i in 0..CONNECTIONS {
        let barrier = Arc::clone(&barrier);
        let addr = proxy.addr;
        clients.spawn(async move {
            let payload = unique_payload(i);
            let mut client = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("client {i}: connect: {e}"))?;
            client
                .write_all(&payload)
                .await
                .map_err(|e| format!("client {i}: write: {e}"))?;
            barrier.wait().await;
            client
                .shutdown()
                .await
                .map_err(|e| format!("client {i}: shutdown: {e}"))?;
            let mut echoed = Vec::new();
            client
                .read_to_end(&mut echoed)
                .await
                .map_err(|e| format!("client {i}: read: {e}"))?;
            if echoed != payload {
                return Err(format!(
                    "client {i} got back {} bytes starting {:?}, not its own {} bytes starting {:?}",
                    echoed.len(),
                    String::from_utf8_lossy(&echoed[..echoed.len().min(16)]),
                    payload.len(),
                    String::from_utf8_lossy(&payload[..16]),
                ));
            }
            Ok(())
        });
    }
    let mut failures = Vec::new();
    while let Some(joined) = within("the clients", clients.join_next()).await {
        if let Err(e) = joined.expect("client task panicked") {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {CONNECTIONS} connections failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    let trail = proxy.stop().await;
    assert_eq!(
        trail.by_conn.len(),
        CONNECTIONS,
        "one record per connection"
    );
    let mut counted: Vec<u64> = trail
        .by_conn
        .values()
        .map(|events| {
            let closed = match events.as_slice() {
                [allowed, closed]
                    if allowed.kind.as_str() == "connection.allowed"
                        && closed.kind.as_str() == "connection.closed" =>
                {
                    closed
                }
                other => panic!("expected allowed then closed, got {other:?}"),
            };
            assert_eq!(closed.bytes_up, closed.bytes_down, "{closed:?}");
            closed.bytes_up.unwrap_or_default()
        })
        .collect();
    counted.sort_unstable();
    let sent: Vec<u64> = (0..CONNECTIONS)
        .map(|i| unique_payload(i).len() as u64)
        .collect();
    assert_eq!(
        counted, sent,
        "the records' byte counts must match the payloads"
    );
}

/// A `max_connections` larger than tokio's semaphore takes: the config
/// refuses it, and the library, given it anyway, caps it instead of
/// panicking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_max_connections_is_refused_by_config_and_capped_by_serve() {
    let err = Config::parse("max_connections = 2305843009213693952\n", "test.toml")
        .expect_err("a max_connections past any sane limit");
    assert!(
        err.to_string().contains("test.toml:1:19: max_connections"),
        "{err}"
    );
    let proxy = RunningProxy::start_with(
        FakeKernel::without_records(),
        Options {
            max_connections: Some(2_305_843_009_213_693_952),
            ..Options::default()
        },
    )
    .await;
    proxy.shutdown.cancel();
    within("serve to return", proxy.served)
        .await
        .expect("serve panicked on a max_connections that the config accepted");
}

// ---- harness ----

/// Stands in for the eBPF maps: every connection was headed for `dst` (the
/// one target, opened by [`CALLER_UID`]), or, without one, no connection
/// has a record.
struct FakeKernel {
    dst: Option<SocketAddrV4>,
    lookups: AtomicUsize,
}

impl FakeKernel {
    fn headed_for(dst: SocketAddr) -> Arc<Self> {
        let SocketAddr::V4(dst) = dst else {
            panic!("test upstreams are IPv4, got {dst}");
        };
        Arc::new(Self {
            dst: Some(dst),
            lookups: AtomicUsize::new(0),
        })
    }

    fn without_records() -> Arc<Self> {
        Arc::new(Self {
            dst: None,
            lookups: AtomicUsize::new(0),
        })
    }
}

impl OriginSource for FakeKernel {
    fn find(&self, _client: SocketAddr, _local: SocketAddr) -> Option<ConnectRecord> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let dst = self.dst?;
        // Laid out as connect4 stores it: IPv4-mapped words whose bytes are
        // in network order, port in network order.
        Some(ConnectRecord {
            orig_addr: proxy_common::v4_mapped(u32::from_ne_bytes(dst.ip().octets())),
            orig_port_be: dst.port().to_be(),
            family: 4,
            target_id: 0,
            tgid: std::process::id(),
            pid: std::process::id(),
            uid: CALLER_UID,
            gid: CALLER_UID,
            cgroup_id: 0,
            // "Connected" before this process started: /proc is not read.
            boot_ns: 0,
            exe_ino: 0,
            exe_dev: 0,
            login_uid: proxy_common::TaskOffsets::UNSET_LOGIN_UID,
            comm: *b"forward-test\0\0\0\0",
            tuple: SockTuple::default(),
            established: 1,
        })
    }
}

/// How a test's proxy differs from the usual one.
struct Options {
    /// Whether [`CALLER_UID`] holds a live grant on the target.
    grant: bool,
    connect_timeout: Duration,
    /// Overrides the config's `max_connections`.
    max_connections: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            grant: true,
            connect_timeout: Duration::from_secs(10),
            max_connections: None,
        }
    }
}

/// A proxy serving one listener on 127.0.0.1:0, with its state (grant
/// store in memory, audit log) in a temp dir.
struct RunningProxy {
    addr: SocketAddr,
    shutdown: CancellationToken,
    served: JoinHandle<()>,
    audit: AuditLog,
    audit_dir: PathBuf,
    _state: tempfile::TempDir,
}

impl RunningProxy {
    async fn start(kernel: Arc<FakeKernel>) -> Self {
        Self::start_with(kernel, Options::default()).await
    }

    async fn start_with(kernel: Arc<FakeKernel>, options: Options) -> Self {
        let state = tempfile::tempdir().expect("temp state dir");
        let config = Arc::new(test_config(&state));
        let audit_settings = AuditSettings::for_config(&config);
        let audit_dir = audit_settings.dir.clone();
        let audit = AuditLog::open(audit_settings).expect("open the audit log");
        let mut store = SqliteStore::in_memory().expect("in-memory grant store");
        if options.grant {
            let now = now_ms();
            store
                .insert(
                    &NewGrant {
                        subject: Subject::User(CALLER_UID),
                        subject_name: None,
                        target: TARGET.to_owned(),
                        starts_at: now - 60_000,
                        ends_at: now + 3_600_000,
                        reason: "forward integration test".to_owned(),
                        granted_by: Principal {
                            uid: 0,
                            name: Some("root".to_owned()),
                            login_uid: None,
                        },
                        scopes: Vec::new(),
                        request_id: None,
                    },
                    now,
                )
                .expect("store the test grant");
        }
        let users = Users::new();
        let access = Access::new(
            jitproxy::config::share(Arc::clone(&config)),
            store,
            audit.clone(),
            users.clone(),
        )
        .expect("access service");
        let policy = Policy::for_config(access.index(), users.clone(), &config);
        let settings = ProxySettings {
            connect_timeout: options.connect_timeout,
            max_connections: options.max_connections.unwrap_or(config.max_connections),
            // Setting a mark needs CAP_NET_ADMIN; these tests run unprivileged.
            upstream_mark: None,
        };

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind proxy listener on 127.0.0.1:0");
        let addr = listener.local_addr().expect("proxy listener address");
        let shutdown = CancellationToken::new();
        let proxy = Proxy::new(
            kernel,
            policy,
            access,
            users,
            settings,
            jitproxy::proxy::http::Inspectors::default(),
            shutdown.clone(),
        );
        let served = tokio::spawn(proxy.serve(vec![listener]));
        Self {
            addr,
            shutdown,
            served,
            audit,
            audit_dir,
            _state: state,
        }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr)
            .await
            .expect("client connect to the proxy")
    }

    /// Cancels the shutdown token, waits for `serve` to return (it returns
    /// only once every connection task is done), and reads the audit log.
    async fn stop(self) -> AuditTrail {
        self.shutdown.cancel();
        within("serve to return after shutdown", self.served)
            .await
            .expect("serve panicked");
        let audit = self.audit.clone();
        within(
            "the audit log to close",
            tokio::task::spawn_blocking(move || audit.close()),
        )
        .await
        .expect("closing the audit log panicked");
        let records =
            query::read(&self.audit_dir, &query::Filter::default()).expect("read the audit log");
        AuditTrail::new(records)
    }
}

/// A config with one target, limits loose enough for every test, and all
/// state in `state`.
fn test_config(state: &tempfile::TempDir) -> Config {
    let dir = state.path().display();
    let text = format!(
        r#"state_dir = '{dir}'
control_socket = '{dir}/control.sock'

[[target]]
name = "{TARGET}"
# The kernel side is faked: the proxy uses the target's name and limits.
hosts = ["127.0.0.2"]
ports = [9]
limits = {{ connections_per_second = 100000.0, burst = 100000, max_concurrent = 100000 }}
"#
    );
    Config::parse(&text, "forward-test.toml").unwrap_or_else(|e| panic!("test config: {e}"))
}

/// The connection events of an audit log, by connection id, in log order.
struct AuditTrail {
    by_conn: BTreeMap<u64, Vec<jitproxy::audit::Event>>,
}

impl AuditTrail {
    fn new(records: Vec<Record>) -> Self {
        let mut by_conn: BTreeMap<u64, Vec<_>> = BTreeMap::new();
        for record in records {
            if let Some(conn) = record.event.conn {
                by_conn.entry(conn).or_default().push(record.event);
            }
        }
        Self { by_conn }
    }

    /// Checks that the log holds exactly one connection, with events of
    /// `kinds` in that order, and returns them.
    #[track_caller]
    fn only_connection(&self, kinds: &[&str]) -> &[jitproxy::audit::Event] {
        let mut conns = self.by_conn.values();
        let (Some(events), None) = (conns.next(), conns.next()) else {
            panic!(
                "expected the audit log to hold one connection, got {:#?}",
                self.by_conn
            );
        };
        let got: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(got, kinds, "audit events of the connection: {events:#?}");
        events
    }
}

/// A test upstream on 127.0.0.1:0 that runs a handler per connection and
/// reports the peer address of each connection it accepts, in accept order.
struct Upstream {
    addr: SocketAddr,
    peers: mpsc::UnboundedReceiver<SocketAddr>,
}

impl Upstream {
    async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind upstream on 127.0.0.1:0");
        let addr = listener.local_addr().expect("upstream address");
        let (peers_tx, peers) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let _ = peers_tx.send(peer);
                tokio::spawn(handler(stream));
            }
        });
        Self { addr, peers }
    }

    /// Sends back what it reads; half-closes after the client's EOF.
    async fn echo() -> Self {
        Self::start(|stream| async move {
            let (mut read, mut write) = stream.into_split();
            if tokio::io::copy(&mut read, &mut write).await.is_ok() {
                let _ = write.shutdown().await;
            }
        })
        .await
    }

    fn accepted_so_far(&mut self) -> usize {
        let mut n = 0;
        while self.peers.try_recv().is_ok() {
            n += 1;
        }
        n
    }

    /// Checks that no connection ever reached this upstream. Call it after
    /// the proxy stopped: then nothing can still be on its way.
    async fn assert_never_reached(&mut self) {
        // The accept queue is FIFO: had the proxy connected, its connection
        // would be accepted before this probe.
        let probe = TcpStream::connect(self.addr)
            .await
            .expect("probe connect to the upstream");
        let first = within("the probe's accept", self.peers.recv())
            .await
            .expect("upstream accept loop ended");
        assert_eq!(
            first,
            probe.local_addr().expect("probe local address"),
            "the upstream accepted a connection from the proxy for a refused client"
        );
    }
}

/// Awaits `fut`, panicking with `what` if it outlives [`GUARD`].
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {GUARD:?} waiting for {what}"))
}

async fn read_to_end(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut out = Vec::new();
    within(what, stream.read_to_end(&mut out))
        .await
        .unwrap_or_else(|e| panic!("reading {what}: {e}"));
    out
}

/// Connects, writes `data` and reads: the proxy must answer with a reset,
/// seen by whichever call comes first after it arrives (even the connect,
/// when the reset beats tokio to the handshake's completion).
async fn expect_reset(proxy: &RunningProxy, data: &[u8], case: &str) {
    let outcome = within("the reset", async {
        let mut client = TcpStream::connect(proxy.addr).await?;
        client.write_all(data).await?;
        let mut buf = [0u8; 64];
        client.read(&mut buf).await
    })
    .await;
    match outcome {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("{case}: the client must see a reset, got {other:?}"),
    }
}

/// Byte `p` of the test stream with `seed`: depends on its position, so a
/// lost, repeated or reordered byte shows up at the first offset it moves.
fn pattern_byte(seed: u64, p: u64) -> u8 {
    let word = ((p / 8) ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    word.to_le_bytes()[(p % 8) as usize]
}

fn fill_pattern(seed: u64, offset: u64, out: &mut [u8]) {
    for (p, byte) in (offset..).zip(out.iter_mut()) {
        *byte = pattern_byte(seed, p);
    }
}

async fn send_pattern(
    write: &mut (impl AsyncWrite + Unpin),
    seed: u64,
    len: u64,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(buf.len() as u64) as usize;
        fill_pattern(seed, offset, &mut buf[..n]);
        write.write_all(&buf[..n]).await?;
        offset += n as u64;
    }
    write.shutdown().await
}

/// Reads to EOF and checks that exactly the `len` bytes of the pattern came.
async fn check_pattern(
    read: &mut (impl AsyncRead + Unpin),
    seed: u64,
    len: u64,
) -> Result<(), String> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut offset = 0u64;
    loop {
        let n = read
            .read(&mut buf)
            .await
            .map_err(|e| format!("read failed after {offset} of {len} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        if let Some(bad) = (offset..)
            .zip(&buf[..n])
            .find(|&(p, &b)| p >= len || b != pattern_byte(seed, p))
        {
            let (p, &got) = bad;
            return Err(if p >= len {
                format!("got more than the {len} bytes sent")
            } else {
                format!(
                    "byte {p} is {got:#04x}, expected {:#04x}",
                    pattern_byte(seed, p)
                )
            });
        }
        offset += n as u64;
    }
    if offset == len {
        Ok(())
    } else {
        Err(format!("stream ended after {offset} of {len} bytes"))
    }
}

/// Connection `i`'s payload: its number, then a pattern of its own, of a
/// length of its own.
fn unique_payload(i: usize) -> Vec<u8> {
    let mut payload = format!("connection {i:04}\n").into_bytes();
    let mut rest = vec![0u8; 8 * 1024 + i * 97];
    fill_pattern(i as u64, 0, &mut rest);
    payload.extend_from_slice(&rest);
    payload
}

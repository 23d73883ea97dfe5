//! Inspect mode, end to end: the real daemon and eBPF programs, a real
//! nginx upstream over TLS (h2 and HTTP/1.1) with its own CA, and real
//! clients run as `nobody` in the watched cgroup, whose only trust in
//! jitproxy's CA is what `jitproxy ca install` set up.
//!
//! Clients reach the API by name: each runs in its own mount namespace
//! where /etc/hosts maps `api.inspect.test` to the test's address.
//!
//! `ca install` changes the host's trust store, so these tests take turns
//! (one lock for the file) and each uninstalls what it installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{Mutex, MutexGuard},
};

use jitproxy_e2e::{listen_port, output, Cgroup, Daemon, NOBODY};

/// First listen port of these tests.
const INSPECT_PORTS: u16 = 1000;
const NAME: &str = "api.inspect.test";
const SECRET: &str = "s3cr3t-Token-4711";

static TURNS: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    TURNS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One test's world: the upstream's CA and nginx, the daemon, the cgroup.
struct World {
    _turn: MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    api: SocketAddr,
    nginx: Child,
    daemon: Daemon,
    cgroup: Cgroup,
    installed: bool,
}

impl World {
    fn new(index: u8, name: &str, extra: &str) -> Self {
        let turn = turn();
        let dir = tempfile::Builder::new()
            .prefix("jitproxy-inspect-")
            .tempdir()
            .unwrap();
        let api = SocketAddr::from(([127, 0, 60 + index, 2], 8443));
        upstream_pki(dir.path());
        let nginx = start_nginx(dir.path(), api);
        let secret = dir.path().join("secret");
        fs::write(&secret, format!("{SECRET}\n")).unwrap();
        let mut perms = fs::metadata(&secret).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        fs::set_permissions(&secret, perms).unwrap();
        let cgroup = Cgroup::create(&format!("inspect-{name}")).unwrap();
        let config = format!(
            "listen_port = {}\n\n[[target]]\nname = \"payments-api\"\nhosts = [\"{}\"]\nports = [{}]\n\
             mode = \"inspect\"\nserver_names = [\"{NAME}\"]\nupstream_ca = \"{}\"\n{extra}\n\
             [target.credential]\nheader = \"Authorization\"\nvalue = \"Bearer {{secret}}\"\n\
             secret_file = \"{}\"\nplaceholder_query = [\"api_key\"]\n",
            listen_port(INSPECT_PORTS, index),
            api.ip(),
            api.port(),
            dir.path().join("upstream-ca.crt").display(),
            secret.display(),
        );
        let daemon = Daemon::start(&cgroup, Some(&config)).unwrap();
        let mut world = Self {
            _turn: turn,
            dir,
            api,
            nginx,
            daemon,
            cgroup,
            installed: false,
        };
        world.install_ca();
        world
    }

    /// `jitproxy ca SUB` with the daemon's config, as root.
    fn ca(&self, sub: &str) -> std::process::Output {
        Command::new(self.daemon.bin())
            .args(["ca", sub, "--config"])
            .arg(self.daemon.config_path().expect("a config"))
            .output()
            .expect("jitproxy ca")
    }

    fn install_ca(&mut self) {
        let out = self.ca("install");
        assert!(
            out.status.success(),
            "jitproxy ca install failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.installed = true;
    }

    fn url(&self, path: &str) -> String {
        format!("https://{NAME}:{}{path}", self.api.port())
    }

    /// `script` run by `sh` as nobody in the cgroup, with the API's name
    /// mapped and the environment `ca install` wrote sourced (as a login
    /// shell would).
    fn client(&self, script: &str) -> (bool, String, String) {
        let hosts = self.dir.path().join("hosts");
        fs::write(
            &hosts,
            format!(
                "127.0.0.1 localhost\n{} {NAME} other.inspect.test\n",
                self.api.ip()
            ),
        )
        .unwrap();
        let inner = format!(
            "[ -r /etc/profile.d/jitproxy-ca.sh ] && . /etc/profile.d/jitproxy-ca.sh; {script}"
        );
        let mut cmd = self.cgroup.command("unshare");
        cmd.args(["-m", "sh", "-c"])
            .arg(format!(
                "mount --bind {} /etc/hosts && exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups -- env HOME=/tmp sh -c \"$0\"",
                hosts.display()
            ))
            .arg(inner);
        output(&mut cmd)
    }

    /// curl as nobody; returns (ok, body + stderr).
    fn curl(&self, args: &str) -> (bool, String) {
        let (ok, out, err) = self.client(&format!("curl -sS -m 10 {args}"));
        (ok, format!("{out}{err}"))
    }

    fn grant(&self, allow: &[&str]) -> String {
        let mut args = vec![
            "grant",
            "nobody",
            "payments-api",
            "--for",
            "1h",
            "--reason",
            "INC-1",
        ];
        for rule in allow {
            args.push("--allow");
            args.push(rule);
        }
        self.daemon.operator(&args)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if self.installed {
            let _ = self.ca("uninstall");
        }
        let _ = self.nginx.kill();
        let _ = self.nginx.wait();
    }
}

/// The upstream's own CA and its certificate for [`NAME`] (openssl).
fn upstream_pki(dir: &Path) {
    let run = |args: &[&str]| {
        let (ok, out, err) = output(Command::new("openssl").args(args).current_dir(dir));
        assert!(ok, "openssl {args:?}: {out}{err}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "upstream-ca.key",
        "-out",
        "upstream-ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=upstream test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "api.key",
        "-out",
        "api.csr",
        "-subj",
        &format!("/CN={NAME}"),
    ]);
    fs::write(dir.join("ext"), format!("subjectAltName=DNS:{NAME}\n")).unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "api.csr",
        "-CA",
        "upstream-ca.crt",
        "-CAkey",
        "upstream-ca.key",
        "-CAcreateserial",
        "-out",
        "api.crt",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
}

/// nginx on `api` with h2 and HTTP/1.1; it answers with what it received:
/// whether the credential (and the `api_key` query value) was the real one,
/// the path, and the protocol; never the secret itself.
// The child is returned and waited for by `World`'s drop.
#[allow(clippy::zombie_processes)]
fn start_nginx(dir: &Path, api: SocketAddr) -> Child {
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    map $http_authorization $auth {{ "Bearer {SECRET}" "real"; "" "none"; default "other"; }}
    map $arg_api_key $key {{ "{SECRET}" "real"; "" "none"; default "other"; }}
    server {{
        listen {api} ssl http2;
        server_name {NAME};
        ssl_certificate {dir}/api.crt;
        ssl_certificate_key {dir}/api.key;
        location / {{
            default_type text/plain;
            return 200 "auth=$auth key=$key uri=$uri proto=$server_protocol\n";
        }}
    }}
}}
"#,
        dir = dir.display(),
    );
    let path = dir.join("nginx.conf");
    fs::write(&path, conf).unwrap();
    let child = Command::new("/usr/sbin/nginx")
        .args(["-c", path.to_str().unwrap(), "-p"])
        .arg(dir)
        .spawn()
        .expect("nginx");
    // Ready when it accepts.
    for _ in 0..100 {
        if std::net::TcpStream::connect(api).is_ok() {
            return child;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!(
        "nginx did not start: {}",
        fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
    );
}

fn records_of(daemon: &Daemon, kind: &str) -> Vec<serde_json::Value> {
    daemon.events_of(kind)
}

#[test]
fn every_client_gets_the_credential_added_and_never_sees_it() {
    let w = World::new(1, "clients", "");
    w.grant(&[]);
    let url = w.url("/v1/payments/7?api_key=x");
    // The client's own Authorization must not reach the upstream.
    let (ok, body) = w.curl(&format!(
        "--http1.1 -H 'Authorization: Bearer mine' '{url}'"
    ));
    assert!(ok, "{body}\n{}", w.daemon.log_text());
    assert!(body.contains("auth=real"), "{body}");
    assert!(body.contains("proto=HTTP/2.0"), "upstream spoke h2: {body}");
    let (ok, body) = w.curl(&format!("--http2 -H 'Authorization: Bearer mine' '{url}'"));
    assert!(ok && body.contains("auth=real"), "{body}");

    let py = format!(
        "import requests; r = requests.get('{url}', headers={{'Authorization': 'Bearer mine'}}, timeout=10); print(r.status_code, r.text)"
    );
    let (ok, out, err) = w.client(&format!("python3 -c \"{py}\""));
    assert!(
        ok && out.contains("200 auth=real"),
        "python requests: {out}{err}"
    );

    let js = format!(
        "fetch('{url}', {{headers: {{authorization: 'Bearer mine'}}}}).then(r => r.text()).then(t => console.log(t)).catch(e => {{ console.log('failed', e.cause || e); process.exit(1); }})"
    );
    let (ok, out, err) = w.client(&format!("node -e \"{js}\""));
    assert!(ok && out.contains("auth=real"), "node fetch: {out}{err}");

    let records = w.daemon.wait_records("four requests completed", |r| {
        r.iter().filter(|e| e["type"] == "http.completed").count() >= 4
    });
    let completed: Vec<_> = records
        .iter()
        .filter(|e| e["type"] == "http.completed")
        .collect();
    for e in &completed {
        let detail = &e["detail"];
        assert_eq!(detail["credential"], "authorization", "{e}");
        assert_eq!(detail["status"], 200, "{e}");
        assert_eq!(
            detail["query"], "api_key",
            "query values are not recorded: {e}"
        );
    }
    assert!(!records_of(&w.daemon, "http.allowed").is_empty());
}

#[test]
fn scopes_refuse_what_the_grant_does_not_allow_even_when_encoded() {
    let w = World::new(2, "scopes", "");
    let out = w.grant(&["GET /v1/payments/*"]);
    assert!(out.contains("only: GET /v1/payments/*"), "{out}");
    let (ok, body) = w.curl(&format!("'{}'", w.url("/v1/payments/7")));
    assert!(ok && body.contains("auth=real"), "{body}");

    for path in [
        "/v1/refunds",
        "/v1/payments/7/../../admin",
        "/v1/payments/%2e%2e/admin",
        "/v1/payments%2f..%2fadmin",
        "/v1/payments/x%2F..%2F..%2Fadmin",
        "//v1/payments/7",
        "/v1/payments/7%00",
    ] {
        let (_, body) = w.curl(&format!(
            "--path-as-is -w ' status=%{{http_code}}' '{}'",
            w.url(path)
        ));
        assert!(body.contains("status=403"), "{path}: {body}");
        assert!(
            !body.contains("auth="),
            "{path} reached the upstream: {body}"
        );
    }
    let (_, body) = w.curl(&format!(
        "-X POST -H 'Accept: application/json' '{}'",
        w.url("/v1/payments/7")
    ));
    let json: serde_json::Value =
        serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(json["error"], "scope", "{json}");
    assert_eq!(json["user"], "nobody", "{json}");
    assert!(
        json["ask"]
            .as_str()
            .unwrap()
            .contains("jitproxy request payments-api"),
        "{json}"
    );
    let denied = records_of(&w.daemon, "http.denied");
    assert!(denied.len() >= 8, "{denied:?}");
}

#[test]
fn host_sni_placeholder_and_rate_refusals_are_explained() {
    let w = World::new(
        3,
        "refusals",
        "requests_per_second = 1.0\nrequests_burst = 5\n",
    );
    w.grant(&[]);
    // Host that is not the target's.
    let (_, body) = w.curl(&format!(
        "-w ' status=%{{http_code}}' -H 'Host: evil.example' '{}'",
        w.url("/")
    ));
    assert!(
        body.contains("status=403") && body.contains("Host"),
        "{body}"
    );
    // A foreign server name: the TLS handshake is refused.
    let (ok, body) = w.curl(&format!(
        "--connect-to other.inspect.test:{0}:{NAME}:{0} 'https://other.inspect.test:{0}/'",
        w.api.port()
    ));
    assert!(!ok && !body.contains("auth="), "{body}");
    // A placeholder for another target is refused, never sent.
    let (_, body) = w.curl(&format!(
        "-w ' status=%{{http_code}}' -H 'X-Key: jitproxy:other-api' '{}'",
        w.url("/")
    ));
    assert!(
        body.contains("status=403") && body.contains("placeholder"),
        "{body}"
    );
    // A placeholder in the configured query parameter is swapped.
    let (_, body) = w.curl(&format!("'{}'", w.url("/q?api_key=jitproxy:payments-api")));
    assert!(
        body.contains("auth=real key=real") && !body.contains(SECRET),
        "{body}"
    );
    // Over the rate: 429 with Retry-After.
    let (_, out, _) = w.client(&format!(
        "for i in 1 2 3 4 5 6 7 8; do curl -s -o /dev/null -D - '{}' | head -1; done; curl -s -D - -o /dev/null '{}'",
        w.url("/r"),
        w.url("/r")
    ));
    assert!(out.contains("429"), "{out}");
    assert!(!records_of(&w.daemon, "http.rate_limited").is_empty());
    // A client that trusts only the upstream's own CA (as a client that
    // pins it does) rejects jitproxy's certificate: closed and recorded,
    // never passed to an uninspected tunnel. (Python, because curl adds
    // the system store to --cacert.)
    let py = format!(
        "import socket, ssl\nctx = ssl.create_default_context(cafile='{}/upstream-ca.crt')\n\
         s = socket.create_connection(('{NAME}', {}))\n\
         try:\n    ctx.wrap_socket(s, server_hostname='{NAME}')\n    print('handshake ok')\n\
         except ssl.SSLError as e:\n    print('rejected', e.reason)\n",
        w.dir.path().display(),
        w.api.port()
    );
    let script = w.dir.path().join("pinned.py");
    fs::write(&script, py).unwrap();
    let (_, out, err) = w.client(&format!("python3 {}", script.display()));
    assert!(out.contains("rejected"), "{out}{err}");
    w.daemon
        .wait_event("the rejected certificate is recorded", |e| {
            e["event"] == "connection.closed" && e["code"] == "client_rejected_certificate"
        });
    w.daemon.wait_event("the foreign name is recorded", |e| {
        e["event"] == "connection.closed" && e["code"] == "foreign_sni"
    });
}

#[test]
fn the_secret_is_in_nothing_jitproxy_writes_or_says() {
    let w = World::new(4, "secret", "");
    let grant = w.grant(&["GET /v1/**"]);
    let mut said = vec![grant];
    for args in [
        "'URL/v1/a'",
        "-H 'Authorization: jitproxy:payments-api' 'URL/v1/b'",
        "'URL/v2/refused'",
        "-H 'X: jitproxy:nope' 'URL/v1/c'",
        "'URL/v1/q?api_key=jitproxy:payments-api'",
    ] {
        let (_, body) = w.curl(&args.replace("URL", w.url("").trim_end_matches('/')));
        said.push(body);
    }
    for args in [
        vec!["status"],
        vec!["grants", "--all"],
        vec!["audit", "--user", "nobody"],
        vec!["audit", "summary"],
    ] {
        let (_, out, err) = w.daemon.client_as(0, 0, None, &args);
        said.push(out + &err);
    }
    let (_, out, err) = w.daemon.client_as(NOBODY, NOBODY, None, &["why"]);
    said.push(out + &err);
    w.daemon.wait_records("requests recorded", |r| {
        r.iter().filter(|e| e["type"] == "http.completed").count() >= 3
    });
    let b64 = base64(SECRET.as_bytes());
    for text in &said {
        assert!(
            !text.contains(SECRET) && !text.contains(&b64),
            "said: {text}"
        );
    }
    let mut files = Vec::new();
    walk(w.daemon.dir(), &mut files);
    for file in files {
        if file.ends_with("secret") {
            continue;
        }
        let bytes = fs::read(&file).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(SECRET) && !text.contains(&b64),
            "{} holds the secret",
            file.display()
        );
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.is_file() {
            out.push(path);
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

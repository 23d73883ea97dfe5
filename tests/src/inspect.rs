//! What the inspect-mode tests share (tests/tests/inspect*.rs): a world of
//! a real nginx upstream over TLS with its own CA, a daemon with one
//! inspect target, and clients run as `nobody` in the watched cgroup, whose
//! only trust in jitproxy's CA is what `jitproxy ca install` set up.
//!
//! Clients reach the API by name: each runs in its own mount namespace
//! where /etc/hosts maps [`NAME`] to the test's address.
//!
//! `ca install` changes the host's trust store, so worlds take turns (one
//! lock per test binary; cargo runs test binaries one after another) and
//! each uninstalls what it installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
};

use crate::{listen_port, output, Cgroup, Daemon, NOBODY};

/// First listen port of these tests. Listen ports stay below 1024, so
/// indexes end at 23: inspect.rs (and the demo) have 1 to 11,
/// inspect_protocols.rs 12 to 23.
pub const INSPECT_PORTS: u16 = 1000;
pub const NAME: &str = "api.inspect.test";
pub const SECRET: &str = "s3cr3t-Token-4711";

static TURNS: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    TURNS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One test's world: the upstream's CA and nginx, the daemon, the cgroup.
pub struct World {
    _turn: MutexGuard<'static, ()>,
    pub dir: tempfile::TempDir,
    pub api: SocketAddr,
    /// `None` when the test serves the API itself ([`World::without_nginx`]).
    pub nginx: Option<Child>,
    pub daemon: Daemon,
    pub cgroup: Cgroup,
    installed: bool,
}

impl World {
    pub fn new(index: u8, name: &str, extra: &str) -> Self {
        Self::build(index, name, extra, true)
    }

    /// A world whose API address has nothing listening: the test starts its
    /// own upstream there ([`Server`]), or none.
    pub fn without_nginx(index: u8, name: &str, extra: &str) -> Self {
        Self::build(index, name, extra, false)
    }

    fn build(index: u8, name: &str, extra: &str, nginx: bool) -> Self {
        let turn = turn();
        let dir = tempfile::Builder::new()
            .prefix("jitproxy-inspect-")
            .tempdir()
            .unwrap();
        let api = SocketAddr::from(([127, 0, 60 + index, 2], 8443));
        upstream_pki(dir.path());
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
        // Started last, so that nothing after it can fail before `World`
        // (whose drop stops it) exists.
        let nginx = nginx.then(|| start_nginx(dir.path(), api));
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
    pub fn ca(&self, sub: &str) -> std::process::Output {
        Command::new(self.daemon.bin())
            .args(["ca", sub, "--config"])
            .arg(self.daemon.config_path().expect("a config"))
            .output()
            .expect("jitproxy ca")
    }

    pub fn install_ca(&mut self) {
        remove_stale_test_install();
        let out = self.ca("install");
        assert!(
            out.status.success(),
            "jitproxy ca install failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.installed = true;
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{NAME}:{}{path}", self.api.port())
    }

    /// `script` run by `sh` as nobody in the cgroup, with the API's name
    /// mapped and the environment `ca install` wrote sourced (as a login
    /// shell would).
    pub fn client(&self, script: &str) -> (bool, String, String) {
        output(&mut self.client_command(script))
    }

    /// The command [`World::client`] runs, to start and wait for as one
    /// likes (e.g. as a [`crate::Held`] client).
    pub fn client_command(&self, script: &str) -> Command {
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
        cmd
    }

    /// curl as nobody; returns (ok, body + stderr).
    pub fn curl(&self, args: &str) -> (bool, String) {
        let (ok, out, err) = self.client(&format!("curl -sS -m 10 {args}"));
        (ok, format!("{out}{err}"))
    }

    pub fn grant(&self, allow: &[&str]) -> String {
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

    /// [`World::grant`], returning the grant's id.
    pub fn grant_id(&self, allow: &[&str]) -> i64 {
        let mut args = vec![
            "grant",
            "nobody",
            "payments-api",
            "--for",
            "1h",
            "--reason",
            "INC-1",
            "--json",
        ];
        for rule in allow {
            args.push("--allow");
            args.push(rule);
        }
        let out = self.daemon.operator(&args);
        let grant: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("grant JSON: {e}: {out}"));
        grant["id"].as_i64().expect("grant id")
    }

    /// Writes `text` to `world.dir/name` (readable by the clients) and
    /// returns its path.
    pub fn script(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, text).unwrap();
        path
    }

    /// Lines of nginx's access log that hold `needle` (a path).
    pub fn upstream_saw(&self, needle: &str) -> usize {
        fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// A CA an earlier test run installed and could not take out (it was
/// killed): its state dir, a test's temporary directory, is gone, so no
/// `ca uninstall` can read what it did. Only such leftovers are removed.
fn remove_stale_test_install() {
    let profile = Path::new("/etc/profile.d/jitproxy-ca.sh");
    let Ok(text) = fs::read_to_string(profile) else {
        return;
    };
    let owner = text
        .lines()
        .find_map(|l| l.strip_prefix("# State dir: "))
        .map(|o| o.trim_matches('"').to_owned());
    let Some(owner) = owner.filter(|o| o.starts_with("/tmp/jitproxy-test-")) else {
        return;
    };
    if Path::new(&owner).exists() {
        return;
    }
    eprintln!("removing the CA a killed test run left installed (state dir {owner} is gone)");
    let _ = fs::remove_file("/usr/local/share/ca-certificates/jitproxy-local-ca.crt");
    let _ = fs::remove_file(profile);
    let _ = Command::new("update-ca-certificates")
        .arg("--fresh")
        .output();
}

impl Drop for World {
    fn drop(&mut self) {
        if self.installed {
            let out = self.ca("uninstall");
            if !out.status.success() {
                eprintln!(
                    "jitproxy ca uninstall failed; the next test's install may be refused:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        if let Some(nginx) = self.nginx.as_mut() {
            let _ = nginx.kill();
            let _ = nginx.wait();
        }
    }
}

/// An upstream a test runs on the world's API address instead of nginx: a
/// Python script run as root outside the cgroup (so its own connections are
/// never redirected), its output in `world.dir/<script>.log`. Killed and
/// waited for on drop.
pub struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    /// Writes `text` to `world.dir/name`, runs it with `args` and waits
    /// until the API address accepts connections.
    pub fn python(world: &World, name: &str, text: &str, args: &[&str]) -> Self {
        let script = world.script(name, text);
        let log = world.dir.path().join(format!("{name}.log"));
        let out = fs::File::create(&log).unwrap();
        let child = Command::new(crate::PYTHON)
            .arg(&script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut server = Self { child, log };
        for _ in 0..200 {
            if std::net::TcpStream::connect(world.api).is_ok() {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("{name} exited with {status}:\n{}", server.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "{name} did not listen on {} in 10 s:\n{}",
            world.api,
            server.log()
        );
    }

    /// What it printed so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The upstream's own CA and its certificate for [`NAME`] (openssl).
pub fn upstream_pki(dir: &Path) {
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

/// nginx on `api` with h2 and HTTP/1.1, each request in `access.log`; it
/// answers with what it received: whether the credential (and the `api_key`
/// query value) was the real one, the path, and the protocol; never the
/// secret itself.
// The child is returned and waited for by `World`'s drop.
#[allow(clippy::zombie_processes)]
pub fn start_nginx(dir: &Path, api: SocketAddr) -> Child {
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
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
    let mut child = Command::new("/usr/sbin/nginx")
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
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "nginx did not start: {}",
        fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
    );
}

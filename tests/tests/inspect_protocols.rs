//! Inspect mode with the protocols engineers (and attackers) really use,
//! end to end: gRPC over h2, WebSocket upgrades, kept-alive HTTP/1.1 and h2
//! connections when access ends, and upstreams that refuse or cannot be
//! trusted. Clients run as `nobody` in the watched cgroup (see
//! `jitproxy_e2e::inspect`); the upstreams are nginx or small Python
//! servers on the world's API address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{fs, path::PathBuf, process::Stdio};

use jitproxy_e2e::{
    inspect::{Server, World, NAME, SECRET},
    Held, PYTHON,
};
use serde_json::Value;

#[test]
fn grpc_over_h2_gets_the_credential_streams_and_statuses() {
    let w = World::without_nginx(12, "grpc", "");
    let server = Server::python(
        &w,
        "grpc_server.py",
        GRPC_SERVER,
        &[
            &w.api.to_string(),
            &dir_file(&w, "api.crt"),
            &dir_file(&w, "api.key"),
            &dir_file(&w, "secret"),
        ],
    );
    w.grant(&[]);
    let client = w.script("grpc_client.py", GRPC_CLIENT);
    let (ok, out, err) = w.client(&format!(
        "{PYTHON} {} {NAME}:{}",
        client.display(),
        w.api.port()
    ));
    let said = format!("{out}{err}\nserver:\n{}", server.log());
    assert!(ok, "the gRPC client failed: {said}");
    assert!(
        out.contains("who auth=real"),
        "the upstream did not get the real credential (and only it): {said}"
    );
    assert!(out.contains("stream 1,2,3"), "streamed replies: {said}");
    assert!(
        out.contains("stream-trailer 3"),
        "the stream's trailers: {said}"
    );
    assert!(
        out.contains("stream-code OK"),
        "the stream's status: {said}"
    );
    assert!(
        out.contains("fail PERMISSION_DENIED not for you"),
        "a handler's non-OK status reaches the client as it was: {said}"
    );
    assert!(!said.contains(SECRET), "the secret was shown: {said}");

    let records = w
        .daemon
        .wait_records("three gRPC calls completed", |r| completed(r).count() >= 3);
    for path in ["/test.Api/Who", "/test.Api/Count", "/test.Api/Fail"] {
        let record = completed(&records)
            .find(|e| e["detail"]["path"] == path)
            .unwrap_or_else(|| panic!("no http.completed for {path}: {records:?}"));
        assert_eq!(record["detail"]["version"], "HTTP/2.0", "{record}");
        assert_eq!(record["detail"]["status"], 200, "{record}");
        assert_eq!(record["detail"]["credential"], "authorization", "{record}");
    }
}

#[test]
fn a_websocket_echoes_with_the_credential_and_is_cut_when_access_ends() {
    let w = World::without_nginx(13, "websocket", "");
    let server = Server::python(
        &w,
        "ws_server.py",
        WS_SERVER,
        &[
            &w.api.ip().to_string(),
            &w.api.port().to_string(),
            &dir_file(&w, "api.crt"),
            &dir_file(&w, "api.key"),
            &dir_file(&w, "secret"),
        ],
    );
    let id = w.grant_id(&[]);
    let url = format!("wss://{NAME}:{}/ws", w.api.port());
    let (mut client, err) = held(&w, "ws_client.py", WS_CLIENT, &url);
    let said = |client_lines: &[String]| {
        format!(
            "client: {client_lines:?} {}\nserver:\n{}",
            fs::read_to_string(&err).unwrap_or_default(),
            server.log()
        )
    };
    let mut lines = Vec::new();
    while !lines
        .last()
        .is_some_and(|l: &String| l == "ready" || l.is_empty())
    {
        lines.push(client.line());
        if lines.last().is_some_and(|l| l.starts_with("failed")) {
            break;
        }
    }
    assert!(
        lines.iter().any(|l| l == "greeting auth=real"),
        "the upgrade request did not carry the real credential (and only it): {}",
        said(&lines)
    );
    assert!(
        lines.iter().any(|l| l == "echo echo:hello"),
        "no echo: {}",
        said(&lines)
    );

    w.daemon.operator(&["revoke", &id.to_string()]);
    // The client waits up to 5 s for the close.
    client.go_on();
    let after = client.line();
    assert!(
        after == "closed",
        "the socket was not closed when access ended: {after}; {}",
        said(&lines)
    );
    let again = client.line();
    assert!(
        again.starts_with("reconnect refused"),
        "a new socket after the revoke: {again}; {}",
        said(&lines)
    );
    drop(client);

    let records = w.daemon.wait_records("the upgrade's http.completed", |r| {
        completed(r).any(|e| e["detail"]["path"] == "/ws")
    });
    let record = completed(&records)
        .find(|e| e["detail"]["path"] == "/ws")
        .unwrap();
    assert_eq!(record["detail"]["status"], 101, "{record}");
    assert_eq!(record["grant_id"], id, "{record}");
    // The upgraded connection is still the connection its grant let
    // through: its record says access ended it.
    let records = w.daemon.wait_records("the connection's end", |r| {
        r.iter()
            .any(|e| e["type"] == "connection.closed" && e["conn"] == record["conn"])
    });
    let closed = records
        .iter()
        .find(|e| e["type"] == "connection.closed" && e["conn"] == record["conn"])
        .unwrap();
    assert!(
        closed["ended_by"]
            .as_str()
            .is_some_and(|by| by.starts_with("daemon")),
        "{closed}"
    );
}

/// An upgrade needs HTTP/1.1 upstream even when the upstream offers h2 in
/// ALPN (as nginx, envoy and Go servers do): the upgrade request is HTTP/1.1
/// text, which an h2 connection cannot carry.
#[test]
fn an_upgrade_to_an_upstream_that_offers_h2_goes_over_http1() {
    let w = World::new(14, "upgrade-h2", "");
    w.grant(&[]);
    // nginx's `return 200` answers an upgrade request like any other.
    let (ok, body) = w.curl(&format!(
        "--http1.1 -w ' status=%{{http_code}}' -H 'Connection: Upgrade' -H 'Upgrade: websocket' \
         -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' '{}'",
        w.url("/ws")
    ));
    assert!(
        ok && body.contains("auth=real") && body.contains("status=200"),
        "the upgrade request did not reach nginx: {body}\n{}",
        records_text(&w)
    );
}

#[test]
fn a_kept_alive_http1_connection_gets_nothing_after_access_ends() {
    let w = World::new(15, "h1-keepalive", "");
    let id = w.grant_id(&[]);
    let (mut client, err) = held(&w, "h1_client.py", H1_CLIENT, &w.api.port().to_string());
    let one = client.line();
    assert!(
        one.starts_with("one 200 auth=real"),
        "first request: {one} {}",
        fs::read_to_string(&err).unwrap_or_default()
    );
    assert_eq!(client.line(), "ready");

    w.daemon.operator(&["revoke", &id.to_string()]);
    client.go_on();
    // Idle when access ends: closed, without waiting for a request.
    let idle = client.line();
    assert!(
        idle.starts_with("eof"),
        "the idle connection was not closed when access ended: {idle}"
    );
    let two = client.line();
    assert!(
        two.starts_with("two 403") || two.starts_with("two closed"),
        "a request after the revoke, on the same connection: {two}"
    );
    drop(client);
    assert_eq!(w.upstream_saw("GET /one "), 1, "the first request");
    assert_eq!(
        w.upstream_saw("GET /two "),
        0,
        "a request after the revoke reached the upstream"
    );
}

#[test]
fn an_h2_connection_gets_goaway_and_is_closed_when_access_ends() {
    let w = World::new(16, "h2-goaway", "");
    let id = w.grant_id(&[]);
    let (mut client, err) = held_node(&w, "h2_client.js", H2_CLIENT, &w.api.port().to_string());
    let one = client.line();
    assert!(
        one.starts_with("one 200 auth=real") && one.contains("proto=HTTP/2.0"),
        "first request: {one} {}",
        fs::read_to_string(&err).unwrap_or_default()
    );
    assert_eq!(client.line(), "ready");

    w.daemon.operator(&["revoke", &id.to_string()]);
    // The client reports the GOAWAY and the close as they come (it gives
    // up after 30 s).
    let mut lines = Vec::new();
    while !lines
        .last()
        .is_some_and(|l: &String| l == "closed" || l == "timeout" || l.is_empty())
    {
        lines.push(client.line());
    }
    assert!(
        lines.iter().any(|l| l.starts_with("goaway")),
        "no GOAWAY when access ended: {lines:?}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("closed"),
        "the connection was not closed: {lines:?}"
    );
    client.go_on();
    let two = client.line();
    assert!(
        two.starts_with("two ") && !two.starts_with("two 200"),
        "a request after the revoke, on the old session: {two}"
    );
    let fresh = client.line();
    assert!(
        fresh.starts_with("fresh ") && !fresh.starts_with("fresh 200"),
        "a request after the revoke, on a new session: {fresh}"
    );
    drop(client);
    assert_eq!(w.upstream_saw("GET /one "), 1, "the first request");
    assert_eq!(
        w.upstream_saw("GET /two "),
        0,
        "a request after the revoke reached the upstream"
    );
}

#[test]
fn an_unreachable_upstream_is_a_502_and_recorded() {
    let w = World::without_nginx(17, "unreachable", "");
    w.grant(&[]);
    let (_, body) = w.curl(&format!("-w ' status=%{{http_code}}' '{}'", w.url("/down")));
    assert!(body.contains("status=502"), "{body}");
    let records = w
        .daemon
        .wait_records("the failed request's http.completed", |r| {
            completed(r).any(|e| e["detail"]["path"] == "/down")
        });
    let record = completed(&records)
        .find(|e| e["detail"]["path"] == "/down")
        .unwrap();
    assert_eq!(record["code"], "upstream_unreachable", "{record}");
    assert_eq!(record["detail"]["status"], 502, "{record}");
}

#[test]
fn an_upstream_whose_certificate_does_not_verify_is_sent_nothing() {
    let w = World::without_nginx(18, "bad-cert", "");
    let (ok, out, err) = jitproxy_e2e::output(
        std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "self.key",
                "-out",
                "self.crt",
                "-days",
                "2",
                "-subj",
                &format!("/CN={NAME}"),
                "-addext",
                &format!("subjectAltName=DNS:{NAME}"),
            ])
            .current_dir(w.dir.path()),
    );
    assert!(ok, "openssl: {out}{err}");
    let server = Server::python(
        &w,
        "tls_server.py",
        TLS_SERVER,
        &[
            &w.api.ip().to_string(),
            &w.api.port().to_string(),
            &dir_file(&w, "self.crt"),
            &dir_file(&w, "self.key"),
        ],
    );
    w.grant(&[]);
    let (_, body) = w.curl(&format!(
        "-w ' status=%{{http_code}}' -H 'Authorization: Bearer mine' '{}'",
        w.url("/pay")
    ));
    assert!(body.contains("status=502"), "{body}");
    let records = w
        .daemon
        .wait_records("the refused request's http.completed", |r| {
            completed(r).any(|e| e["detail"]["path"] == "/pay")
        });
    let record = completed(&records)
        .find(|e| e["detail"]["path"] == "/pay")
        .unwrap();
    assert_eq!(record["code"], "upstream_certificate", "{record}");
    // The server saw handshakes (the readiness probe's, jitproxy's), never
    // a byte of HTTP.
    let log = server.log();
    assert!(log.contains("handshake failed"), "{log}");
    assert!(
        !log.contains("got bytes"),
        "the upstream whose certificate does not verify got bytes: {log}"
    );
}

#[test]
fn a_client_without_sni_is_refused_and_recorded() {
    let w = World::without_nginx(19, "no-sni", "");
    w.grant(&[]);
    let script = w.script("no_sni.py", NO_SNI_CLIENT);
    let (_, out, err) = w.client(&format!(
        "{PYTHON} {} {NAME} {}",
        script.display(),
        w.api.port()
    ));
    assert!(out.starts_with("refused"), "{out}{err}");
    let closed = w.daemon.wait_event("the refusal without SNI", |e| {
        e["event"] == "connection.closed" && e["code"] == "missing_sni"
    });
    assert_eq!(closed["target_name"], "payments-api", "{closed}");
}

/// The `http.completed` records among `records`.
fn completed(records: &[Value]) -> impl Iterator<Item = &Value> {
    records.iter().filter(|e| e["type"] == "http.completed")
}

fn records_text(w: &World) -> String {
    w.daemon
        .records()
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn dir_file(w: &World, name: &str) -> String {
    w.dir.path().join(name).display().to_string()
}

/// Python script `name` run as nobody in the cgroup with `arg`, held open;
/// its stderr goes to a file, whose path is returned.
fn held(w: &World, name: &str, text: &str, arg: &str) -> (Held, PathBuf) {
    let script = w.script(name, text);
    start_held(w, name, &format!("{PYTHON} {} {arg}", script.display()))
}

/// [`held`], for a Node script.
fn held_node(w: &World, name: &str, text: &str, arg: &str) -> (Held, PathBuf) {
    let script = w.script(name, text);
    start_held(w, name, &format!("node {} {arg}", script.display()))
}

fn start_held(w: &World, name: &str, command: &str) -> (Held, PathBuf) {
    let err = w.dir.path().join(format!("{name}.err"));
    let file = fs::File::create(&err).unwrap();
    let mut cmd = w.client_command(command);
    cmd.stderr(Stdio::from(file));
    (Held::start(&mut cmd), err)
}

/// A gRPC service without codegen (raw bytes): `Who` says whether the
/// `authorization` metadata was exactly the real credential (never echoing
/// it), `Count` streams 1..n with a trailer, `Fail` ends with a status.
const GRPC_SERVER: &str = r#"
import sys
from concurrent import futures
import grpc

addr, cert, key, secret_file = sys.argv[1:5]
SECRET = open(secret_file).read().strip()

def say(*a):
    print(*a, flush=True)

def who(request, context):
    say('call Who')
    values = [v for k, v in context.invocation_metadata() if k == 'authorization']
    if values == ['Bearer ' + SECRET]:
        return b'auth=real'
    return b'auth=none' if not values else b'auth=other'

def count(request, context):
    say('call Count')
    n = int(request)
    context.set_trailing_metadata((('x-counted', str(n)),))
    for i in range(1, n + 1):
        yield str(i).encode()

def fail(request, context):
    say('call Fail')
    context.abort(grpc.StatusCode.PERMISSION_DENIED, 'not for you')

handler = grpc.method_handlers_generic_handler('test.Api', {
    'Who': grpc.unary_unary_rpc_method_handler(who),
    'Count': grpc.unary_stream_rpc_method_handler(count),
    'Fail': grpc.unary_unary_rpc_method_handler(fail),
})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
creds = grpc.ssl_server_credentials([(open(key, 'rb').read(), open(cert, 'rb').read())])
server.add_secure_port(addr, creds)
server.start()
say('listening')
server.wait_for_termination()
"#;

/// A gRPC client trusting the system roots (what `ca install` set up),
/// sending its own `authorization`.
const GRPC_CLIENT: &str = r#"
import os, sys
# getaddrinfo, so the test's /etc/hosts is used.
os.environ['GRPC_DNS_RESOLVER'] = 'native'
import grpc

md = (('authorization', 'Bearer mine'),)
with grpc.secure_channel(sys.argv[1], grpc.ssl_channel_credentials()) as channel:
    who = channel.unary_unary('/test.Api/Who')(b'', metadata=md, timeout=10)
    print('who', who.decode())
    call = channel.unary_stream('/test.Api/Count')(b'3', metadata=md, timeout=10)
    print('stream', ','.join(m.decode() for m in call))
    print('stream-trailer', dict(call.trailing_metadata()).get('x-counted'))
    print('stream-code', call.code().name)
    try:
        channel.unary_unary('/test.Api/Fail')(b'', metadata=md, timeout=10)
        print('fail none')
    except grpc.RpcError as e:
        print('fail', e.code().name, e.details())
"#;

/// A WebSocket echo server that first says whether the upgrade request had
/// exactly the real credential.
const WS_SERVER: &str = r#"
import asyncio, ssl, sys
import websockets

host, port, cert, key, secret_file = sys.argv[1:6]
SECRET = open(secret_file).read().strip()

def say(*a):
    print(*a, flush=True)

async def handler(ws, path=None):
    values = ws.request_headers.get_all('Authorization')
    auth = 'real' if values == ['Bearer ' + SECRET] else 'none' if not values else 'other'
    say('connect', ws.path, auth)
    await ws.send('auth=' + auth)
    async for message in ws:
        say('message', message)
        await ws.send('echo:' + message)

async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    async with websockets.serve(handler, host, int(port), ssl=ctx):
        say('listening')
        await asyncio.Future()

asyncio.run(main())
"#;

/// A WebSocket client on the system trust: greeting, one echo, `ready`;
/// on a line from stdin, up to 5 s for the server to close, then a new
/// connection.
const WS_CLIENT: &str = r#"
import asyncio, signal, ssl, sys
import websockets

signal.alarm(30)
url = sys.argv[1]

def say(*a):
    print(*a, flush=True)

async def main():
    ctx = ssl.create_default_context()
    async with websockets.connect(url, ssl=ctx, open_timeout=10, ping_interval=None,
                                  extra_headers={'Authorization': 'Bearer mine'}) as ws:
        say('greeting', await ws.recv())
        await ws.send('hello')
        say('echo', await ws.recv())
        say('ready')
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        try:
            say('unexpected', await asyncio.wait_for(ws.recv(), 5))
        except asyncio.TimeoutError:
            say('still open')
        except websockets.ConnectionClosed:
            say('closed')
    try:
        async with websockets.connect(url, ssl=ctx, open_timeout=5) as ws:
            say('reconnected', await ws.recv())
    except Exception as e:
        say('reconnect refused', type(e).__name__)

try:
    asyncio.run(main())
except Exception as e:
    say('failed', repr(e))
"#;

/// HTTP/1.1 with keep-alive: a request, `ready`; on a line from stdin, up
/// to 5 s for the connection to close, then a second request on it.
const H1_CLIENT: &str = r#"
import http.client, select, signal, ssl, sys

signal.alarm(30)

def say(*a):
    print(*a, flush=True)

conn = http.client.HTTPSConnection('api.inspect.test', int(sys.argv[1]),
                                   context=ssl.create_default_context(), timeout=10)
conn.request('GET', '/one', headers={'Authorization': 'Bearer mine'})
r = conn.getresponse()
say('one', r.status, r.read().decode().strip())
say('ready')
sys.stdin.readline()
readable, _, _ = select.select([conn.sock], [], [], 5)
if not readable:
    say('open')
else:
    try:
        data = conn.sock.recv(1)
        say('eof' if not data else 'data')
    except (ssl.SSLError, OSError) as e:
        say('eof', type(e).__name__)
try:
    conn.request('GET', '/two')
    r = conn.getresponse()
    say('two', r.status, r.read().decode().strip())
except Exception as e:
    say('two closed', type(e).__name__)
"#;

/// Node's http2 client (trusting NODE_EXTRA_CA_CERTS): a request, `ready`,
/// then the session's GOAWAY and close as they come; on a line from stdin,
/// a request on the old session and one on a new session.
const H2_CLIENT: &str = r#"
const http2 = require('http2');
const url = 'https://api.inspect.test:' + process.argv[2];
const say = (...a) => console.log(...a);
setTimeout(() => { say('timeout'); process.exit(3); }, 30000).unref();

function get(session, path, done) {
  let req;
  try {
    req = session.request({ ':path': path, authorization: 'Bearer mine' });
  } catch (e) {
    return done('refused ' + e.code);
  }
  let status = 0, body = '';
  req.setEncoding('utf8');
  req.on('response', (h) => { status = h[':status']; });
  req.on('data', (d) => { body += d; });
  req.on('end', () => done(status + ' ' + body.trim()));
  req.on('error', (e) => done('error ' + e.code));
  req.end();
}

const session = http2.connect(url);
session.on('error', (e) => say('error', e.code));
session.on('goaway', (code) => say('goaway', code));
session.on('close', () => say('closed'));
get(session, '/one', (r) => {
  say('one', r);
  say('ready');
  process.stdin.once('data', () => {
    get(session, '/two', (r) => {
      say('two', r);
      const fresh = http2.connect(url);
      fresh.on('error', () => {});
      get(fresh, '/two', (r) => { say('fresh', r); process.exit(0); });
    });
  });
});
"#;

/// A TLS server that says what each connection did: the handshake failed,
/// or the first bytes of what it was sent.
const TLS_SERVER: &str = r#"
import socket, ssl, sys, threading

host, port, cert, key = sys.argv[1:5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(['h2', 'http/1.1'])

def say(*a):
    print(*a, flush=True)

def serve(conn):
    with conn:
        conn.settimeout(5)
        try:
            tls = ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as e:
            say('handshake failed', type(e).__name__)
            return
        try:
            data = tls.recv(65536)
        except (ssl.SSLError, OSError) as e:
            say('closed', type(e).__name__)
            return
        if data:
            say('got bytes', data[:40])
        else:
            say('eof')

server = socket.create_server((host, int(port)))
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// A TLS client that sends no server name (no `server_hostname`).
const NO_SNI_CLIENT: &str = r#"
import socket, ssl, sys

ctx = ssl.create_default_context()
ctx.check_hostname = False
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
try:
    tls = ctx.wrap_socket(sock)
    print('handshake ok', tls.version())
except (ssl.SSLError, OSError) as e:
    print('refused', type(e).__name__)
"#;

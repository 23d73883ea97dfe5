//! Inspect mode, end to end: the real daemon and eBPF programs, a real
//! nginx upstream over TLS (h2 and HTTP/1.1) with its own CA, and real
//! clients run as `nobody` in the watched cgroup, whose only trust in
//! jitproxy's CA is what `jitproxy ca install` set up (see
//! `jitproxy_e2e::inspect`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fs,
    path::{Path, PathBuf},
};

use jitproxy_e2e::{
    inspect::{World, NAME, SECRET},
    NOBODY,
};

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
    assert!(!w.daemon.events_of("http.allowed").is_empty());
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
    let denied = w.daemon.events_of("http.denied");
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
    assert!(!w.daemon.events_of("http.rate_limited").is_empty());
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

#[test]
fn the_ca_is_name_constrained_and_a_forged_leaf_does_not_verify() {
    let w = World::new(5, "ca", "");
    let ca_dir = w.daemon.state_dir().join("ca");
    let ca_crt = ca_dir.join("ca.crt");
    let text = openssl(
        &["x509", "-noout", "-text", "-in", ca_crt.to_str().unwrap()],
        w.dir.path(),
    )
    .1;
    assert!(text.contains("X509v3 Name Constraints: critical"), "{text}");
    assert!(text.contains(&format!("DNS:{NAME}")), "{text}");
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");

    // What a stolen key could mint: a leaf for another site, signed by the
    // CA's own key. openssl refuses it; so does rustls (unit test in
    // proxy/src/proxy/http/ca.rs).
    let dir = w.dir.path();
    fs::write(dir.join("forged.ext"), "subjectAltName=DNS:bank.example\n").unwrap();
    let ok = |args: &[&str]| {
        let (ok, out) = openssl(args, dir);
        assert!(ok, "openssl {args:?}: {out}");
    };
    ok(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "forged.key",
        "-out",
        "forged.csr",
        "-subj",
        "/CN=bank.example",
    ]);
    ok(&[
        "x509",
        "-req",
        "-in",
        "forged.csr",
        "-CA",
        ca_crt.to_str().unwrap(),
        "-CAkey",
        ca_dir.join("ca.key").to_str().unwrap(),
        "-CAcreateserial",
        "-out",
        "forged.crt",
        "-days",
        "1",
        "-extfile",
        "forged.ext",
    ]);
    let (verified, out) = openssl(
        &["verify", "-CAfile", ca_crt.to_str().unwrap(), "forged.crt"],
        dir,
    );
    assert!(!verified, "{out}");
    assert!(out.contains("permitted subtree violation"), "{out}");

    // And the CA's own leaf for the target's name does verify, in openssl,
    // with the copy `ca install` put in the system store.
    w.grant(&[]);
    let (_, out, _) = w.client(&format!(
        "echo | openssl s_client -connect {NAME}:{} -servername {NAME} -verify_return_error -CAfile {} 2>&1 | grep -E 'Verify return code|subject='",
        w.api.port(),
        "/usr/local/share/ca-certificates/jitproxy-local-ca.crt"
    ));
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains(NAME), "{out}");
}

fn openssl(args: &[&str], dir: &Path) -> (bool, String) {
    let (ok, out, err) = jitproxy_e2e::output(
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir),
    );
    (ok, out + &err)
}

#[test]
fn request_shapes_that_would_escape_the_decision_are_refused() {
    let w = World::new(6, "shapes", "");
    w.grant(&["GET /v1/payments/*", "POST /v1/payments/*"]);
    let url = w.url("/v1/payments/7");
    for (what, args) in [
        // TRACE would echo the injected credential back.
        ("trace", format!("-X TRACE '{url}'")),
        ("method override", format!("-X POST -H 'X-HTTP-Method-Override: DELETE' '{url}'")),
        ("url override", format!("-H 'X-Original-URL: /v1/admin' '{url}'")),
        // A Host whose text starts with the target's name.
        ("user info", format!("--http1.1 -H 'Host: {NAME}@evil.example' '{url}'")),
        // h2c would carry requests past the scopes after the 101.
        ("h2c", format!("--http1.1 -H 'Connection: Upgrade, HTTP2-Settings' -H 'Upgrade: h2c' -H 'HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA' '{url}'")),
        // A placeholder in a header the API might echo (Origin into CORS).
        ("echoed header", format!("-H 'Origin: jitproxy:payments-api' '{url}'")),
    ] {
        let (_, body) = w.curl(&format!("-w ' status=%{{http_code}}' {args}"));
        assert!(body.contains("status=403"), "{what}: {body}");
        assert!(!body.contains("auth="), "{what} reached the upstream: {body}");
        assert!(!body.contains(SECRET), "{what}: {body}");
    }
    // And a plain request still goes.
    let (ok, body) = w.curl(&format!("'{url}'"));
    assert!(ok && body.contains("auth=real"), "{body}");
}

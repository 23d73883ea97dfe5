#![allow(clippy::unwrap_used, clippy::expect_used)]
use jitproxy_e2e::inspect::World;

#[test]
fn print_outputs() {
    let w = World::new(9, "demo", "");
    let out = w.ca("show");
    println!(
        "== ca show\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = w.ca("uninstall");
    println!(
        "== ca uninstall\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = w.ca("install");
    println!(
        "== ca install\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "== grant\n{}",
        w.grant(&["GET /v1/payments/*", "POST /v1/refunds"])
    );
    println!(
        "== ok\n{}",
        w.curl(&format!(
            "-H 'Authorization: Bearer mine' {}",
            w.url("/v1/payments/7")
        ))
        .1
    );
    println!(
        "== refused\n{}",
        w.curl(&format!("-i -X DELETE {}", w.url("/v1/payments/7")))
            .1
    );
    println!(
        "== refused json\n{}",
        w.curl(&format!(
            "-H 'Accept: application/json' {}",
            w.url("/v1/admin")
        ))
        .1
    );
    let (_, out, err) = w.daemon.client_as(65534, 65534, None, &["why"]);
    println!("== why\n{out}{err}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    println!(
        "== audit --user nobody\n{}",
        w.daemon.client(&["audit", "--user", "nobody"])
    );
    println!(
        "== audit --grant 1\n{}",
        w.daemon.client(&["audit", "--grant", "1"])
    );
    println!(
        "== audit summary\n{}",
        w.daemon.client(&["audit", "summary"])
    );
}

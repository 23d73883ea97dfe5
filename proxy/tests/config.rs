//! Config errors as the operator reads them: every invalid config is refused
//! with `file:line:column: key: message`, pointing at the line to fix and
//! naming the key by its path; the shipped configs parse.

use std::{path::Path, process::Command};

use jitproxy::config::{Config, HostSpec, UnprivilegedPorts, DEFAULT_CONFIG, DEFAULT_CONFIG_NAME};

#[test]
fn unknown_top_level_key_is_named() {
    let text = "# jitproxy\nlisten_port = 971\nlisten_prot = 972\n";
    let message = assert_refused(text, 3, "listen_prot");
    assert!(
        message.contains("unknown field `listen_prot`") && message.contains("`listen_port`"),
        "the message should name the unknown key and list the valid ones: {message}"
    );
}

#[test]
fn unknown_key_in_target_is_named_with_its_target() {
    let text = r#"listen_port = 971

[[target]]
name = "a"
hosts = ["10.0.0.1"]
ports = [443]

[[target]]
name = "b"
hosts = ["10.0.0.2"]
port = [443]
"#;
    let message = assert_refused(text, 11, "target[1].port");
    assert!(
        message.contains("unknown field `port`") && message.contains("`ports`"),
        "the message should name the unknown key and list the valid ones: {message}"
    );
}

#[test]
fn bad_duration_is_refused_with_an_example() {
    let text = "listen_port = 971\nresolve_interval = \"soon\"\n";
    let message = assert_refused(text, 2, "resolve_interval");
    assert!(
        message.contains("`soon` is not a duration") && message.contains("\"30s\""),
        "the message should quote the value and show a valid one: {message}"
    );
}

#[test]
fn zero_duration_is_refused() {
    let message = assert_refused("\nconnect_timeout = \"0s\"\n", 2, "connect_timeout");
    assert!(message.contains("greater than zero"), "{message}");
}

#[test]
fn port_zero_is_refused() {
    let message = assert_refused("# proxy\nlisten_port = 0\n", 2, "listen_port");
    assert!(message.contains("1 to 65535"), "{message}");

    let text = r#"[[target]]
name = "a"
hosts = ["10.0.0.1"]
ports = [443,
  0]
"#;
    let message = assert_refused(text, 5, "target[0].ports[1]");
    assert!(message.contains("1 to 65535"), "{message}");
}

#[test]
fn a_listen_port_any_user_could_bind_is_refused_with_what_to_pick() {
    // Checked for a host with the kernel's default: ports from 1024 up are
    // anyone's.
    let message = assert_refused("# proxy\nlisten_port = 40000\n", 2, "listen_port");
    assert!(
        message.contains("port 40000 can be bound by any user")
            && message.contains("pick a port below 1024 (ip_unprivileged_port_start)")
            && message.contains("such as the default 971"),
        "{message}"
    );
    let message = assert_refused("# proxy\nlisten_port = 1024\n", 2, "listen_port");
    assert!(message.contains("below 1024"), "{message}");
    Config::parse("listen_port = 1023\n", "test.toml").expect("1023 is privileged");
}

#[test]
fn the_listen_port_is_checked_against_the_hosts_unprivileged_start() {
    let host = |start: u16, assumed: Option<&str>| UnprivilegedPorts {
        start,
        assumed: assumed.map(str::to_owned),
    };
    // A host whose unprivileged ports start lower: the default is anyone's
    // there, even when the file does not set it.
    let shown = Config::parse_for("# c\n", "low.toml", &host(900, None))
        .expect_err("971 is unprivileged from 900 up")
        .to_string();
    assert!(
        shown.starts_with("low.toml:1:1: listen_port: not set, and its default: port 971")
            && shown.contains("pick a port below 900"),
        "{shown}"
    );
    // No privileged ports at all: no port is safe.
    let shown = Config::parse_for("listen_port = 971\n", "open.toml", &host(0, None))
        .expect_err("every port is anyone's")
        .to_string();
    assert!(
        shown.starts_with("open.toml:1:") && shown.contains("raise the sysctl"),
        "{shown}"
    );
    // The sysctl unread: said only when the refusal depends on it.
    let unread = host(
        1024,
        Some("cannot read /proc/sys/net/ipv4/ip_unprivileged_port_start"),
    );
    Config::parse_for("listen_port = 971\n", "ok.toml", &unread).expect("971 is below 1024");
    let shown = Config::parse_for("listen_port = 8080\n", "bad.toml", &unread)
        .expect_err("8080 is at or above 1024")
        .to_string();
    assert!(
        shown.contains(
            "note: cannot read /proc/sys/net/ipv4/ip_unprivileged_port_start; assumed 1024"
        ),
        "{shown}"
    );
    // A host that reserves more ports allows more.
    Config::parse_for("listen_port = 8080\n", "high.toml", &host(10_000, None))
        .expect("8080 is privileged below 10000");
}

#[test]
fn check_config_refuses_an_unprivileged_listen_port_with_file_line_key_and_hint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("jitproxy.toml");
    std::fs::write(
        &path,
        "# proxy\nlisten_port = 40000\n\n[[target]]\nname = \"api\"\nhosts = [\"10.0.0.1\"]\nports = [443]\n",
    )
    .expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_jitproxy"))
        .arg("check-config")
        .arg(&path)
        .env_remove("JITPROXY_LOG_FORMAT")
        .output()
        .expect("run jitproxy check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // check-config reads this host's sysctl, as `run` does.
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    if start > 40_000 {
        assert!(out.status.success(), "40000 is privileged here: {stderr}");
        return;
    }
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let want = format!("{}:2:", path.display());
    let hint = if start > 1 {
        format!("pick a port below {start} (ip_unprivileged_port_start)")
    } else {
        "raise the sysctl".to_owned()
    };
    assert!(
        stderr.contains(&want) && stderr.contains(": listen_port: ") && stderr.contains(&hint),
        "stderr should name `{want}`, the key `listen_port` and `{hint}`:\n{stderr}"
    );
}

#[test]
fn duplicate_target_name_points_at_the_second() {
    let text = r#"[[target]]
name = "api"
hosts = ["10.0.0.1"]
ports = [443]

[[target]]
name = "api"
hosts = ["10.0.0.2"]
ports = [443]
"#;
    let message = assert_refused(text, 7, "target[1].name");
    assert!(message.contains("duplicate target name `api`"), "{message}");
}

#[test]
fn invalid_host_is_named_by_index() {
    let text = r#"[[target]]
name = "api"
hosts = [
  "10.0.0.1",
  "api_host!",
]
ports = [443]
"#;
    let message = assert_refused(text, 5, "target[0].hosts[1]");
    assert!(
        message.contains("`api_host!`")
            && message.contains("neither an IP address, a CIDR range nor a DNS name"),
        "{message}"
    );
}

#[test]
fn cidr_with_host_bits_suggests_the_network() {
    let text = r#"[[target]]
name = "api"
hosts = ["10.20.0.1/16"]
ports = [443]
"#;
    let message = assert_refused(text, 3, "target[0].hosts[0]");
    assert!(
        message.contains("host bits") && message.contains("`10.20.0.0/16`"),
        "the message should suggest the network address: {message}"
    );
}

#[test]
fn missing_hosts_points_at_the_target() {
    let text = r#"listen_port = 971

[[target]]
name = "a"
hosts = ["10.0.0.1"]
ports = [443]

[[target]]
name = "b"
ports = [443]
"#;
    // The key is the table that lacks it; the message names the field.
    let message = assert_refused(text, 8, "target[1]");
    assert!(message.contains("missing field `hosts`"), "{message}");
}

#[test]
fn empty_hosts_is_refused() {
    let text = "[[target]]\nname = \"a\"\nhosts = []\nports = [443]\n";
    let message = assert_refused(text, 3, "target[0].hosts");
    assert!(message.contains("at least one host"), "{message}");
}

#[test]
fn wrong_type_on_a_plain_key_is_named() {
    let message = assert_refused("# c\ncgroup = 5\n", 2, "cgroup");
    assert!(message.contains("invalid type: integer `5`"), "{message}");

    let message = assert_refused("# c\n[target]\nname = \"a\"\n", 2, "target");
    assert!(
        message.contains("expected a sequence"),
        "a single [target] table should be reported as needing [[target]]: {message}"
    );
}

/// Keys read as `toml::Spanned` (for their line numbers) report errors
/// inside their value with serde's private wrapper field in the key path.
#[test]
fn errors_inside_spanned_values_are_named_as_written() {
    let cases = [
        ("# c\n\n[limits]\nburts = 5\n", 4, "limits.burts"),
        ("# c\nlisten_port = \"971\"\n", 2, "listen_port"),
        ("# c\nlisten_port = 70000\n", 2, "listen_port"),
        ("# c\nmax_connections = -1\n", 2, "max_connections"),
        ("# c\nresolve_interval = 30\n", 2, "resolve_interval"),
        (
            "[[target]]\nname = 5\nhosts = [\"10.0.0.1\"]\nports = [443]\n",
            2,
            "target[0].name",
        ),
        (
            "[[target]]\nname = \"a\"\nhosts = \"10.0.0.1\"\nports = [443]\n",
            3,
            "target[0].hosts",
        ),
        (
            "[[target]]\nname = \"a\"\nhosts = [\"10.0.0.1\"]\nports = [443, 70000]\n",
            4,
            "target[0].ports[1]",
        ),
    ];
    assert_all_refused(&cases);
}

#[test]
fn duplicate_key_points_at_the_second() {
    let text = "listen_port = 971\nlisten_port = 972\n";
    let message = assert_refused(text, 2, "(top level)");
    assert!(message.contains("duplicate key `listen_port`"), "{message}");
}

#[test]
fn syntax_error_points_at_its_line() {
    let text = "# c\n\nlisten_port = 971\nresolve_interval = \n";
    assert_refused(text, 4, "(top level)");
}

#[test]
fn crlf_line_endings_count_lines() {
    let text = "# c\r\n\r\nlisten_port = 0\r\n";
    assert_refused(text, 3, "listen_port");
}

#[test]
fn target_covering_the_ipv4_listener_is_refused() {
    let text = r#"listen_port = 971

[[target]]
name = "loop"
hosts = ["127.0.0.0/8"]
ports = [971]
"#;
    let message = assert_refused(text, 5, "target[0].hosts[0]");
    assert!(message.contains("own listener"), "{message}");
}

/// The proxy listens on [::1] too, and IPv4-mapped ranges are matched as IPv4
/// by the kernel; a target covering either listener sends the proxy's own
/// upstream connection back into it.
#[test]
fn target_covering_the_ipv6_or_mapped_listener_is_refused() {
    let cases: Vec<_> = ["::1", "::/0", "::ffff:127.0.0.1", "::ffff:127.0.0.0/104"]
        .iter()
        .map(|host| {
            let text = format!(
                "listen_port = 971\n\n[[target]]\nname = \"loop\"\nhosts = [\"{host}\"]\nports = [971]\n"
            );
            (text, 5, "target[0].hosts[0]")
        })
        .collect();
    assert_all_refused(&cases);
}

#[test]
fn bad_approver_is_named_by_index() {
    let text = "# c\napprovers = [\"group:sre\", \"bob\"]\n";
    let message = assert_refused(text, 2, "approvers[1]");
    assert!(
        message.contains("`bob`") && message.contains("`user:NAME` or `group:NAME`"),
        "{message}"
    );
}

#[test]
fn bad_target_limit_is_named() {
    let text = r#"[[target]]
name = "api"
hosts = ["10.0.0.1"]
ports = [443]
limits = { connections_per_second = 5.0, burst = 0, max_concurrent = 4 }
"#;
    let message = assert_refused(text, 5, "target[0].limits.burst");
    assert!(message.contains("at least 1"), "{message}");
}

#[test]
fn bad_default_limit_is_named() {
    let text = "# c\n\n[limits]\nconnections_per_second = 0.0\n";
    let message = assert_refused(text, 3, "limits.connections_per_second");
    assert!(message.contains("greater than 0"), "{message}");
}

#[test]
fn bad_audit_settings_are_named() {
    let text = "# c\n\n[audit]\nrotate_bytes = 100\n";
    let message = assert_refused(text, 4, "audit.rotate_bytes");
    assert!(message.contains("at least 4096"), "{message}");

    let text = "# c\n\n[audit]\nretention = \"forever\"\n";
    let message = assert_refused(text, 4, "audit.retention");
    assert!(message.contains("`forever` is not a duration"), "{message}");
}

#[test]
fn bad_request_policy_is_named() {
    let target =
        "[[target]]\nname = \"a\"\nhosts = [\"10.0.0.1\"]\nports = [443]\nmax_grant = \"1h\"\n";
    let cases = [
        ("approvals = 0", "target[0].approvals", "from 1 to 10"),
        (
            "request_ttl = \"soon\"",
            "target[0].request_ttl",
            "not a duration",
        ),
        (
            "break_glass_max = \"2h\"",
            "target[0].break_glass_max",
            "longer than the target's max_grant",
        ),
        (
            "break_glass = [\"alice\"]",
            "target[0].break_glass[0]",
            "must be `user:NAME` or `group:NAME`",
        ),
        (
            "requesters = [\"team:x\"]",
            "target[0].requesters[0]",
            "must be `user:NAME`",
        ),
        (
            "auto_approve = [{ who = [\"group:oncall\"], max = \"3h\" }]",
            "target[0].auto_approve[0].max",
            "longer than the target's max_grant",
        ),
        (
            "auto_approve = [{ who = [], max = \"5m\" }]",
            "target[0].auto_approve[0].who",
            "at least one",
        ),
    ];
    for (line, key, needle) in cases {
        let text = format!("# c\n{target}{line}\n");
        let message = assert_refused(&text, 7, key);
        assert!(message.contains(needle), "{line}: {message}");
    }
}

#[test]
fn bad_webhooks_are_named() {
    // (the table after `[[notify]]` on line 2, the line of the error, key, message)
    let cases = [
        (
            "name = \"h\"",
            2,
            "notify[0].url",
            "exactly one of `url` and `url_file`",
        ),
        (
            "name = \"h\"\nurl = \"ftp://x/\"",
            4,
            "notify[0].url",
            "http:// or https://",
        ),
        (
            "name = \"h\"\nurl = \"http://user:pw@x/\"",
            4,
            "notify[0].url",
            "no user:password@",
        ),
        (
            "name = \"h\"\nurl_file = \"relative\"",
            4,
            "notify[0].url_file",
            "absolute path",
        ),
        (
            "name = \"h\"\nurl = \"http://x/\"\nformat = \"xml\"",
            5,
            "notify[0].format",
            "\"slack\" or \"json\"",
        ),
        (
            "name = \"h\"\nurl = \"http://x/\"\nevents = [\"grant.made\"]",
            5,
            "notify[0].events[0]",
            "is not an event",
        ),
        (
            "name = \"h h\"\nurl = \"http://x/\"",
            3,
            "notify[0].name",
            "not a valid name",
        ),
    ];
    for (body, line, key, needle) in cases {
        let text = format!("# c\n[[notify]]\n{body}\n");
        let message = assert_refused(&text, line, key);
        assert!(message.contains(needle), "{body}: {message}");
    }
    let twice = "[[notify]]\nname = \"h\"\nurl = \"http://x/\"\n[[notify]]\nname = \"h\"\nurl = \"http://y/\"\n";
    let message = assert_refused(twice, 5, "notify[1].name");
    assert!(message.contains("duplicate notify name"), "{message}");
}

#[test]
fn the_metrics_endpoint_is_loopback_or_a_unix_socket() {
    use jitproxy::config::MetricsAddr;
    let parsed = |v: &str| Config::parse(&format!("metrics = \"{v}\"\n"), "test.toml");
    assert!(matches!(
        parsed("127.0.0.1:9971").unwrap().metrics,
        Some(MetricsAddr::Tcp(_))
    ));
    assert!(matches!(
        parsed("[::1]:9971").unwrap().metrics,
        Some(MetricsAddr::Tcp(_))
    ));
    assert!(matches!(
        parsed("unix:/run/jitproxy/metrics.sock").unwrap().metrics,
        Some(MetricsAddr::Unix(_))
    ));
    assert!(
        Config::parse("# c\n", "test.toml")
            .unwrap()
            .metrics
            .is_none(),
        "on by default"
    );
    let message = assert_refused("# c\nmetrics = \"0.0.0.0:9971\"\n", 2, "metrics");
    assert!(message.contains("not a loopback address"), "{message}");
    let message = assert_refused("# c\nmetrics = \"unix:relative.sock\"\n", 2, "metrics");
    assert!(message.contains("absolute"), "{message}");
    let message = assert_refused("# c\nmetrics = \"9971\"\n", 2, "metrics");
    assert!(message.contains("ADDRESS:PORT"), "{message}");
}

#[test]
fn bad_max_grant_is_named() {
    let text = r#"[[target]]
name = "api"
hosts = ["10.0.0.1"]
ports = [443]
max_grant = "a while"
"#;
    let message = assert_refused(text, 5, "target[0].max_grant");
    assert!(message.contains("`a while` is not a duration"), "{message}");
}

#[test]
fn embedded_default_parses() {
    let config = Config::embedded_default(&UnprivilegedPorts::KERNEL_DEFAULT)
        .unwrap_or_else(|e| panic!("the embedded default must be valid: {e}"));
    assert_eq!(config.source, DEFAULT_CONFIG_NAME);
    assert_eq!(config.listen_port, 971);
    let names: Vec<_> = config.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["demo-api"]);
    // Safe on any host: only loopback targets.
    for host in &config.targets[0].hosts {
        match host {
            HostSpec::Net(net) => assert!(
                net.addr().is_loopback(),
                "the default must only target loopback, not {net}"
            ),
            HostSpec::Name(name) => panic!("the default must not resolve names, has {name}"),
        }
    }
    Config::parse(DEFAULT_CONFIG, "default.toml").expect("DEFAULT_CONFIG parses by text too");
}

#[test]
fn example_config_parses() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/example.toml"
    ));
    let config = Config::load(path, &UnprivilegedPorts::KERNEL_DEFAULT)
        .unwrap_or_else(|e| panic!("config/example.toml must be valid: {e}"));
    let names: Vec<_> = config.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["payments-api", "orders-db-admin", "billing-api"]);
    assert!(
        config.targets[0]
            .hosts
            .contains(&HostSpec::Name("payments.internal.example".to_owned())),
        "hosts of payments-api: {:?}",
        config.targets[0].hosts
    );
    assert_eq!(config.targets[1].ports, [8443, 9443]);
    let inspect = config.targets[2]
        .mode
        .inspect()
        .expect("billing-api is inspected");
    let credential = inspect.credential.as_ref().expect("with a credential");
    assert_eq!(credential.header.as_deref(), Some("authorization"));
    assert_eq!(credential.placeholder_headers, ["x-api-key"]);
}

#[test]
fn unreadable_file_names_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("missing.toml");
    let err = Config::load(&path, &UnprivilegedPorts::KERNEL_DEFAULT)
        .expect_err("a missing file cannot load");
    let shown = err.to_string();
    assert!(
        shown.contains(&path.display().to_string()),
        "the error should name {}: {shown}",
        path.display()
    );
}

#[test]
fn load_names_the_file_in_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("jitproxy.toml");
    std::fs::write(&path, "# c\nlisten_port = 0\n").expect("write config");
    let shown = Config::load(&path, &UnprivilegedPorts::KERNEL_DEFAULT)
        .expect_err("port 0 is invalid")
        .to_string();
    let want = format!("{}:2:", path.display());
    assert!(
        shown.starts_with(&want),
        "expected `{want}...`, got: {shown}"
    );
}

const INSPECT: &str = "[[target]]\nname = \"pay\"\nhosts = [\"10.0.0.1\"]\nports = [443]\n";

#[test]
fn inspect_keys_are_checked_with_their_line() {
    let m = assert_refused(&format!("{INSPECT}mode = \"mitm\"\n"), 5, "target[0].mode");
    assert!(m.contains("\"inspect\""), "{m}");
    let m = assert_refused(
        &format!("{INSPECT}server_names = [\"a.test\"]\n"),
        5,
        "target[0].server_names",
    );
    assert!(m.contains("inspect targets only"), "{m}");
    // Only an address, so no name for TLS: server_names is needed.
    let m = assert_refused(
        &format!("{INSPECT}mode = \"inspect\"\nserver_names = []\n"),
        6,
        "target[0].server_names",
    );
    assert!(m.contains("names its clients use"), "{m}");
    let m = assert_refused(
        &format!("{INSPECT}mode = \"inspect\"\nserver_names = [\"bad name\"]\n"),
        6,
        "target[0].server_names[0]",
    );
    assert!(m.contains("not a DNS name"), "{m}");
    let base = format!(
        "{INSPECT}mode = \"inspect\"\nserver_names = [\"pay.test\"]\n[target.credential]\n"
    );
    let m = assert_refused(
        &format!("{base}header = \"Authorization\"\n"),
        7,
        "target[0].credential.secret_file",
    );
    assert!(m.contains("secret_file"), "{m}");
    let m = assert_refused(
        &format!("{base}header = \"Authorization\"\nvalue = \"Bearer\"\nsecret_env = \"T\"\n"),
        9,
        "target[0].credential.value",
    );
    assert!(m.contains("{secret}"), "{m}");
    let m = assert_refused(
        &format!("{base}header = \"Host\"\nsecret_env = \"T\"\n"),
        8,
        "target[0].credential.header",
    );
    assert!(m.contains("connection header"), "{m}");
    let m = assert_refused(
        &format!("{base}header = \"Authorization\"\nsecret_file = \"relative\"\n"),
        9,
        "target[0].credential.secret_file",
    );
    assert!(m.contains("absolute"), "{m}");
    let ok = Config::parse(
        &format!(
            "{base}header = \"Authorization\"\nvalue = \"Bearer {{secret}}\"\nsecret_env = \"T\"\n"
        ),
        "test.toml",
    )
    .expect("a valid inspect target");
    let inspect = ok.targets[0].mode.inspect().expect("inspect");
    assert_eq!(inspect.server_names, ["pay.test"]);
    assert!(inspect.upstream_tls);
}

/// Parses `text` as `test.toml`, expects it refused with an error at `line`
/// for `key` in the form `test.toml:LINE:COLUMN: KEY: MESSAGE`, and returns
/// the message.
#[track_caller]
fn assert_refused(text: &str, line: usize, key: &str) -> String {
    check_refused(text, line, key).unwrap_or_else(|e| panic!("{e}"))
}

/// [`assert_refused`], returning what is wrong instead of panicking.
fn check_refused(text: &str, line: usize, key: &str) -> Result<String, String> {
    let shown = match Config::parse(text, "test.toml") {
        Ok(config) => {
            return Err(format!(
                "this config must be refused, but parsed as {config:?}:\n{text}"
            ))
        }
        Err(e) => e.to_string(),
    };
    let want_prefix = format!("test.toml:{line}:");
    let Some(rest) = shown.strip_prefix(&want_prefix) else {
        return Err(format!(
            "expected the error to start with `{want_prefix}`, got: {shown}\nconfig:\n{text}"
        ));
    };
    let Some((column, rest)) = rest.split_once(": ") else {
        return Err(format!(
            "expected `{want_prefix}COLUMN: {key}: ...`, got: {shown}"
        ));
    };
    if !column.parse::<usize>().is_ok_and(|c| c >= 1) {
        return Err(format!(
            "expected a column number after `{want_prefix}`, got: {shown}"
        ));
    }
    let Some(message) = rest.strip_prefix(&format!("{key}: ")) else {
        return Err(format!(
            "expected key `{key}` after `{want_prefix}{column}: `, got: {shown}"
        ));
    };
    Ok(message.to_owned())
}

/// Runs every case and fails with all the wrong ones at once.
#[track_caller]
fn assert_all_refused<T: AsRef<str>>(cases: &[(T, usize, &str)]) {
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|(text, line, key)| check_refused(text.as_ref(), *line, key).err())
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} cases are wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[test]
fn a_target_on_this_host_is_warned_about_with_what_to_add() {
    let text = "[[target]]\nname = \"local\"\nhosts = [\"127.0.0.2\"]\nports = [8080]\n\n\
                [[target]]\nname = \"remote\"\nhosts = [\"10.20.0.0/24\"]\nports = [443]\n";
    let config = Config::parse(text, "local.toml").expect("valid");
    let local = [
        "127.0.0.1".parse().unwrap(),
        "::1".parse().unwrap(),
        "192.0.2.7".parse().unwrap(),
    ];
    let warnings = config.local_target_warnings(&local);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    assert!(w.contains("`local`") && w.contains("127.0.0.0/8"), "{w}");
    assert!(
        w.contains("::1") && w.contains("192.0.2.7") && w.contains("8080"),
        "{w}"
    );

    // Listing every address a wildcard service answers on needs no warning.
    let text = "[[target]]\nname = \"all\"\nhosts = [\"127.0.0.0/8\", \"::1\", \"192.0.2.7\"]\nports = [8080]\n";
    let config = Config::parse(text, "all.toml").expect("valid");
    assert!(config.local_target_warnings(&local).is_empty());
}

//! The `jitproxy` command as an operator runs it: exit codes, where config
//! errors are reported, and the help and default config it prints. Runs the
//! built binary; needs no privileges.

use std::{
    path::Path,
    process::{Command, Output},
};

use jitproxy::config::DEFAULT_CONFIG;

#[test]
fn check_config_refuses_a_bad_file_with_file_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "listen_port = 971\n\n[[target]]\nname = \"api\"\nhosts = [\"10.0.0.1/8\"]\nports = [443]\n",
    )
    .expect("write config");

    let out = jitproxy(&["check-config".as_ref(), path.as_os_str()]);
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!("{}:5:", path.display());
    assert!(
        stderr.contains(&want) && stderr.contains("target[0].hosts[0]"),
        "stderr should name `{want}` and the key `target[0].hosts[0]`:\n{stderr}"
    );
}

#[test]
fn check_config_refuses_a_missing_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("absent.toml");
    let out = jitproxy(&["check-config".as_ref(), path.as_os_str()]);
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&path.display().to_string()),
        "stderr should name {}:\n{stderr}",
        path.display()
    );
}

#[test]
fn check_config_accepts_a_good_file() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/example.toml"
    ));
    let out = jitproxy(&["check-config".as_ref(), path.as_os_str()]);
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok (3 targets)"),
        "stdout should confirm the config and count its targets:\n{stdout}"
    );
}

#[test]
fn check_config_without_a_path_checks_the_default() {
    let out = jitproxy(&["check-config".as_ref()]);
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok (1 target)"), "stdout:\n{stdout}");
}

#[test]
fn config_default_prints_the_embedded_default() {
    let out = jitproxy(&["config".as_ref(), "default".as_ref()]);
    assert_exit(&out, 0);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        DEFAULT_CONFIG,
        "`jitproxy config default` must print the embedded default verbatim"
    );
}

#[test]
fn run_help_shows_examples() {
    let out = jitproxy(&["run".as_ref(), "--help".as_ref()]);
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in ["Examples:", "jitproxy run --config ", "--cgroup"] {
        assert!(
            stdout.contains(want),
            "`jitproxy run --help` should show `{want}`:\n{stdout}"
        );
    }
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let out = jitproxy(&["frobnicate".as_ref()]);
    assert_exit(&out, 2);
}

fn jitproxy(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jitproxy"))
        .args(args)
        // Keep the environment from changing the output under test.
        .env_remove("JITPROXY_LOG_FORMAT")
        .env_remove("JITPROXY_LOG")
        .output()
        .expect("run the jitproxy binary")
}

#[track_caller]
fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit code {code}, got {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    let out = jitproxy(&["completions".as_ref(), "bash".as_ref()]);
    assert_exit(&out, 0);
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("_jitproxy")
            && script.contains("break-glass")
            && script.contains("--reason"),
        "the bash completions miss commands or flags:\n{script}"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let out = jitproxy(&["man".as_ref(), dir.path().as_os_str()]);
    assert_exit(&out, 0);
    let page =
        std::fs::read_to_string(dir.path().join("jitproxy-request.1")).expect("a page per command");
    assert!(
        page.contains(".TH JITPROXY-REQUEST 1") && page.contains("\\-\\-wait"),
        "{page}"
    );
    assert!(dir.path().join("jitproxy.1").exists());
    assert!(
        !dir.path().join("jitproxy-debug.1").exists(),
        "hidden commands get no page"
    );
}

#[test]
fn doctor_json_lists_every_check_with_a_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    // A port no test or demo on this machine uses (the e2e tests have
    // 600..=971), below the default ip_unprivileged_port_start.
    let config = dir.path().join("doctor.toml");
    std::fs::write(
        &config,
        format!(
            "listen_port = 1013\nstate_dir = {:?}\n\n[[target]]\nname = \"api\"\nhosts = [\"127.0.0.2\"]\nports = [8080]\n",
            state.display().to_string()
        ),
    )
    .expect("write config");

    let out = jitproxy(&[
        "doctor".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--json".as_ref(),
    ]);
    let findings: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "doctor --json should print a JSON list: {e}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let mut checks = Vec::new();
    let mut failed = false;
    for f in &findings {
        let object = f.as_object().expect("each finding is an object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["check", "fix", "found", "status"], "{f}");
        let check = f["check"].as_str().expect("check is a string");
        assert!(!check.is_empty(), "{f}");
        assert!(f["found"].as_str().is_some_and(|s| !s.is_empty()), "{f}");
        let status = f["status"].as_str().expect("status is a string");
        match status {
            // What to do next, exactly when something is wrong.
            "warn" | "fail" => assert!(f["fix"].as_str().is_some_and(|s| !s.is_empty()), "{f}"),
            "ok" | "skip" => assert!(f["fix"].is_null(), "{f}"),
            other => panic!("unknown status `{other}`: {f}"),
        }
        failed |= status == "fail";
        checks.push(check.to_owned());
    }
    for want in [
        "kernel",
        "BTF",
        "cgroup v2",
        "cgroup v1 net",
        "bpffs",
        "CAP_BPF",
        "CAP_NET_ADMIN",
        "CAP_SYS_PTRACE",
        "CAP_NET_BIND_SERVICE",
        "CAP_PERFMON",
        "listen port",
        "listen IPv4",
        "listen IPv6",
        "state dir",
        "grants.db",
        "audit disk",
        "clock",
        "CA trust store",
    ] {
        assert!(
            checks.iter().any(|c| c == want),
            "no `{want}` check in {checks:?}"
        );
    }
    // The config's values are the ones checked.
    let found = |check: &str| {
        findings
            .iter()
            .find(|f| f["check"] == check)
            .and_then(|f| f["found"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        found("listen IPv4").contains("127.0.0.1:1013"),
        "{findings:?}"
    );
    assert!(
        found("state dir").contains(&state.display().to_string()),
        "{findings:?}"
    );
    // Exit 1 exactly when a check failed.
    assert_exit(&out, if failed { 1 } else { 0 });
}

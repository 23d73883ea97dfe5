//! Fuzzes grant scopes (`--allow` rules, from the command line) and the
//! request path normal form they are matched against (from any client).
//! The input is a rule, a newline, then `METHOD PATH`. Parsing never
//! panics and a rule's text parses back to it; a path jitproxy accepts has
//! no dot or empty segment, no `%`, `\`, `;` or control character left to
//! be read differently upstream; and a path that `GET /a/*` matches is one
//! segment below `/a/`.
#![no_main]

use jitproxy::access::scope::{normalize_path, Decision, Rule, Scope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (rule_text, request) = text.split_once('\n').unwrap_or((&text, ""));
    let (method, path) = request.split_once(' ').unwrap_or(("GET", request));

    let normal = normalize_path(path);
    match rule_text.parse::<Rule>() {
        Ok(rule) => {
            let again: Rule = rule.as_str().parse().expect("a rule's own text parses");
            assert_eq!(again, rule);
            let scope = Scope::parse(&[rule.as_str()]).expect("a rule that parsed alone");
            match scope.check(method, path) {
                Decision::Rule(matched) => {
                    assert_eq!(matched, rule.as_str());
                    assert!(normal.is_ok(), "{rule_text:?} matched the refused {path:?}");
                }
                Decision::NoRule => assert!(normal.is_ok()),
                Decision::BadPath(e) => assert_eq!(Err(e), normal),
                Decision::Everything => panic!("a scope of one rule let everything through"),
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }

    let normal = match normal {
        Ok(normal) => normal,
        Err(e) => {
            let _ = e.to_string();
            assert_eq!(
                Scope::everything().check(method, path),
                Decision::BadPath(e)
            );
            return;
        }
    };
    assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
    assert!(!normal.contains("//"), "{path:?} -> {normal:?}");
    assert!(
        !normal.contains(['%', '\\', ';', '?', '#']),
        "{path:?} -> {normal:?}"
    );
    assert!(
        normal.is_ascii() && !normal.contains(|c: char| c.is_control()),
        "{path:?} -> {normal:?}"
    );
    let segments: Vec<&str> = normal[1..].split('/').collect();
    assert!(
        segments
            .iter()
            .all(|s| s.is_empty() || !s.bytes().all(|b| b == b'.')),
        "{path:?} -> {normal:?}"
    );
    // Decoding once more changes nothing (no `%` is left); only a space,
    // which a raw path cannot hold, tells the decoded form apart.
    if !normal.contains(' ') {
        assert_eq!(normalize_path(&normal).as_deref(), Ok(normal.as_str()));
    }

    assert_eq!(
        Scope::everything().check(method, path),
        Decision::Everything
    );
    let all = Scope::parse(&["* /**"]).expect("the widest rule");
    assert_eq!(all.check(method, path), Decision::Rule("* /**"));
    let one = Scope::parse(&["GET /a/*"]).expect("a one-segment rule");
    if one.check(method, path) == Decision::Rule("GET /a/*") {
        assert_eq!(method, "GET");
        let rest = normal
            .strip_prefix("/a/")
            .unwrap_or_else(|| panic!("`GET /a/*` matched {normal:?}"));
        assert!(!rest.contains('/'), "`GET /a/*` matched {normal:?}");
    }
});

//! A grant's request scopes (`--allow 'GET /v1/payments/*'`): parsing, the
//! path normal form they are matched against, and the matcher.
//!
//! jitproxy forwards the request-target as the client wrote it, and the
//! upstream decodes it once. A scope is only as strong as the agreement
//! between the path we match and the path the upstream serves, so
//! [`normalize_path`] resolves nothing: a path that two reasonable servers
//! could read differently (dot segments, encoded slashes, path parameters,
//! double encoding, lookalike characters) is refused, whatever the scope.
//!
//! Patterns are matched by hand (a dozen lines, below) rather than with
//! globset: its `/v1/**` does not match `/v1`, and a scope must say exactly
//! what it lets through.

use std::{fmt, str::FromStr};

use thiserror::Error;

/// The longest rule, in bytes.
pub const MAX_RULE_LEN: usize = 512;
/// The most rules one grant takes.
pub const MAX_RULES: usize = 32;
/// The longest request path, in bytes, before decoding.
pub const MAX_PATH_LEN: usize = 8 * 1024;

/// One `--allow` rule: `METHOD PATH`, e.g. `GET /v1/payments/*`.
///
/// `METHOD` is upper case (HTTP methods are case-sensitive) or `*` for any.
/// In `PATH`, `*` matches any run of characters within one segment, a
/// whole segment `**` matches zero or more segments (`/v1/**` matches `/v1`,
/// `/v1/` and `/v1/a/b`), and everything else is literal. `/v1/payments`
/// and `/v1/payments/` are different paths; `/v1/payments/*` matches the
/// second (an empty last segment) but not the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Canonical `METHOD PATH`.
    text: String,
    /// `None`: any method.
    method: Option<String>,
    segments: Vec<Segment>,
}

/// What a grant lets through: every request (no `--allow`), or the requests
/// that match one of its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    rules: Vec<Rule>,
}

/// The outcome of [`Scope::check`] for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// The grant has no rules: every request with a clean path passes.
    Everything,
    /// The first rule, as written, that the request matches.
    Rule(&'a str),
    /// The grant has rules and none matches.
    NoRule,
    /// The path is one jitproxy refuses for every grant.
    BadPath(PathError),
}

/// Why a request path is refused (the client's doing; the message says how
/// to send a path jitproxy can match).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("the path is longer than 8 KiB")]
    TooLong,
    #[error("the path does not start with `/`; send an origin-form request-target")]
    NoLeadingSlash,
    #[error("the path holds `?` or `#`; the query goes after the path, a fragment is never sent")]
    QueryOrFragment,
    #[error("the path has a space; percent-encode it as `%20`")]
    Space,
    #[error("the path has a control character (raw or percent-encoded)")]
    ControlChar,
    #[error("the path has a `%` not followed by two hex digits; encode a literal `%` as `%25`")]
    BadPercent,
    #[error("the path has a percent-encoded `/` (`%2F`); upstreams disagree on whether it splits segments")]
    EncodedSlash,
    #[error("the path has a `\\` (raw or `%5C`); some upstreams read it as `/`")]
    Backslash,
    #[error("the path decodes to a `%` (double encoding such as `%252e`); send it encoded once")]
    DoubleEncoded,
    #[error("the path has `;` (raw or `%3B`); path parameters are read differently by different upstreams")]
    Semicolon,
    #[error(
        "the path has a percent-encoded `?` or `#`; upstreams that decode twice would cut it there"
    )]
    EncodedDelimiter,
    #[error("the path does not decode to UTF-8 (e.g. the overlong `%C0%AE`)")]
    NotUtf8,
    #[error(
        "the path has a non-ASCII character; some upstreams fold lookalikes such as `．` into `.`"
    )]
    NonAscii,
    #[error(
        "the path has a `.` or `..` segment (raw or encoded); send the path your tool resolved"
    )]
    DotSegment,
    #[error("the path has an empty segment (`//`); send it with single slashes")]
    EmptySegment,
}

/// Why an `--allow` rule (or a set of them) is refused: the caller's
/// doing, with what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScopeError {
    #[error("rule `{rule}…`: longer than {MAX_RULE_LEN} bytes; widen the path with `*` or `**`")]
    TooLong { rule: String },
    #[error("rule `{rule}`: write it as `METHOD PATH`, e.g. `GET /v1/payments/*`")]
    NotMethodPath { rule: String },
    #[error("rule `{rule}`: put exactly one space between the method and the path")]
    ExtraSpace { rule: String },
    #[error(
        "rule `{rule}`: `{method}` is not an upper-case HTTP method or `*`; methods are \
         case-sensitive: write e.g. `GET` or `POST`"
    )]
    BadMethod { rule: String, method: String },
    #[error("rule `{rule}`: the path must start with `/`; write it as `{suggestion}`")]
    NoLeadingSlash { rule: String, suggestion: String },
    #[error(
        "rule `{rule}`: `{found}` is not allowed in a path pattern; only `*` (within a segment) \
         and `**` (whole segments) are wildcards, and paths are matched decoded, so write \
         characters as themselves"
    )]
    BadChar { rule: String, found: char },
    #[error("rule `{rule}`: `**` must be a whole segment (`/v1/**`); use `*` within a segment")]
    PartialDoubleStar { rule: String },
    #[error("rule `{rule}`: no request can match it: {reason}")]
    NotNormal { rule: String, reason: PathError },
    #[error("{count} rules given; a grant takes at most {MAX_RULES}: widen some with `*` or `**`")]
    TooMany { count: usize },
    #[error("rule `{rule}` is given twice; give it once")]
    Duplicate { rule: String },
}

impl Rule {
    /// The rule as written, in its canonical form `METHOD PATH`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a request of `method` for the normalized path `path` (from
    /// [`normalize_path`]) falls under this rule.
    fn matches(&self, method: &str, path: &str) -> bool {
        if self.method.as_deref().is_some_and(|m| m != method) {
            return false;
        }
        let path: Vec<&str> = segments(path).collect();
        wildcard(
            &self.segments,
            &path,
            |s| matches!(s, Segment::Deep),
            |s, p| match s {
                Segment::Glob(glob) => {
                    wildcard(glob.as_bytes(), p.as_bytes(), |&b| b == b'*', |a, b| a == b)
                }
                Segment::Deep => false,
            },
        )
    }
}

impl FromStr for Rule {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_RULE_LEN {
            return Err(ScopeError::TooLong {
                rule: head(s, 40).to_owned(),
            });
        }
        let text = s.trim();
        let rule = || text.to_owned();
        let (method, path) = text
            .split_once(' ')
            .ok_or_else(|| ScopeError::NotMethodPath { rule: rule() })?;
        if path.starts_with(char::is_whitespace) || method.contains(char::is_whitespace) {
            return Err(ScopeError::ExtraSpace { rule: rule() });
        }
        let method = match method {
            "*" => None,
            m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => Some(m.to_owned()),
            m => {
                return Err(ScopeError::BadMethod {
                    rule: rule(),
                    method: m.to_owned(),
                })
            }
        };
        if !path.starts_with('/') {
            return Err(ScopeError::NoLeadingSlash {
                rule: rule(),
                suggestion: format!("{} /{path}", method.as_deref().unwrap_or("*")),
            });
        }
        if let Some(found) = path
            .chars()
            .find(|&c| "?[]{}\\%".contains(c) || c.is_control() || c.is_whitespace())
        {
            return Err(ScopeError::BadChar {
                rule: rule(),
                found,
            });
        }
        let segments = segments(path)
            .map(|s| match s {
                "**" => Ok(Segment::Deep),
                s if s.contains("**") => Err(ScopeError::PartialDoubleStar { rule: rule() }),
                s => Ok(Segment::Glob(s.to_owned())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        // `%` is refused above, so decoding changes nothing: a pattern in
        // normal form normalizes to itself, and one that does not could
        // never match a request.
        normalize_path(path).map_err(|reason| ScopeError::NotNormal {
            rule: rule(),
            reason,
        })?;
        Ok(Self {
            text: text.to_owned(),
            method,
            segments,
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Scope {
    /// Every request (a grant without `--allow`).
    pub fn everything() -> Self {
        Self { rules: Vec::new() }
    }

    /// The scope of the rules `texts`, in order; none is [`Scope::everything`].
    /// A rule given twice is refused (it is most likely a typo for another).
    pub fn parse(texts: &[impl AsRef<str>]) -> Result<Self, ScopeError> {
        if texts.len() > MAX_RULES {
            return Err(ScopeError::TooMany { count: texts.len() });
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(texts.len());
        for text in texts {
            let rule: Rule = text.as_ref().parse()?;
            if rules.iter().any(|r| r.text == rule.text) {
                return Err(ScopeError::Duplicate { rule: rule.text });
            }
            rules.push(rule);
        }
        Ok(Self { rules })
    }

    pub fn is_everything(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules' texts, as written.
    pub fn rules(&self) -> impl Iterator<Item = &str> + '_ {
        self.rules.iter().map(Rule::as_str)
    }

    /// Whether a request of `method` for `raw_path` (the request-target's
    /// path, before the `?`) is in scope. The path is normalized first, for
    /// every scope: an ambiguous path is refused even by a grant without
    /// rules.
    pub fn check(&self, method: &str, raw_path: &str) -> Decision<'_> {
        let path = match normalize_path(raw_path) {
            Ok(path) => path,
            Err(e) => return Decision::BadPath(e),
        };
        if self.is_everything() {
            return Decision::Everything;
        }
        match self.rules.iter().find(|r| r.matches(method, &path)) {
            Some(rule) => Decision::Rule(rule.as_str()),
            None => Decision::NoRule,
        }
    }
}

/// The percent-decoded form of the request path `raw`, which rules are
/// matched against; an error for any path the upstream might read
/// differently from jitproxy.
///
/// Refused, raw or decoded: control characters (NUL included), `\`, `;`
/// (Tomcat and Jetty strip path parameters, so `/a;/../b` means different
/// things to different servers: refusing `;` entirely is simpler than
/// splitting on it), and non-ASCII characters (lookalikes such as `．` are
/// folded into `.` by some servers; a list of lookalikes is never complete).
/// Refused after decoding: `/` (`%2F`), `%` (the path was encoded twice:
/// `%252e` decodes once to the literal `%2e`, which an upstream that decodes
/// again would read as `.`), and `?` or `#`. Refused segments: `.`, `..`
/// (and any other all-dots segment, which old Windows servers resolve), and
/// empty ones, except one trailing `/`. `+` is a literal `+`, as in every
/// path (only form-encoded queries read it as a space).
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if !raw.starts_with('/') {
        return Err(PathError::NoLeadingSlash);
    }
    let mut decoded = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'?' | b'#' => return Err(PathError::QueryOrFragment),
            b' ' => return Err(PathError::Space),
            b'%' => {
                let hi = bytes.next().and_then(hex).ok_or(PathError::BadPercent)?;
                let lo = bytes.next().and_then(hex).ok_or(PathError::BadPercent)?;
                match (hi << 4) | lo {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'%' => return Err(PathError::DoubleEncoded),
                    b'?' | b'#' => return Err(PathError::EncodedDelimiter),
                    d => decoded.push(d),
                }
            }
            b => decoded.push(b),
        }
    }
    let path = String::from_utf8(decoded).map_err(|_| PathError::NotUtf8)?;
    for c in path.chars() {
        match c {
            c if c.is_control() => return Err(PathError::ControlChar),
            '\\' => return Err(PathError::Backslash),
            ';' => return Err(PathError::Semicolon),
            c if !c.is_ascii() => return Err(PathError::NonAscii),
            _ => {}
        }
    }
    check_segments(&path)?;
    Ok(path)
}

/// One segment of a rule's path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: zero or more segments.
    Deep,
    /// Literal text where `*` matches any run of characters.
    Glob(String),
}

/// The segments of a path that starts with `/`: `/` is one empty segment,
/// `/a/` is `a` and an empty one.
fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.strip_prefix('/').unwrap_or(path).split('/')
}

/// Refuses dot segments and empty ones, except that the last may be empty
/// (a trailing `/`; for `/`, the only segment).
fn check_segments(path: &str) -> Result<(), PathError> {
    let mut rest = segments(path).peekable();
    while let Some(segment) = rest.next() {
        if !segment.is_empty() && segment.bytes().all(|b| b == b'.') {
            return Err(PathError::DotSegment);
        }
        if segment.is_empty() && rest.peek().is_some() {
            return Err(PathError::EmptySegment);
        }
    }
    Ok(())
}

/// Whether `text` matches `pattern`, where an element for which `is_star`
/// holds matches any run of elements and the others match one element for
/// which `matches` holds. Greedy with one backtrack point, which is exact
/// for a single kind of star and takes O(pattern × text) at worst, so a
/// rule and a path of any shape cost little.
fn wildcard<P, T>(
    pattern: &[P],
    text: &[T],
    is_star: impl Fn(&P) -> bool,
    matches: impl Fn(&P, &T) -> bool,
) -> bool {
    let (mut p, mut t) = (0, 0);
    // After the last star seen: where the pattern resumes, and the text
    // position that star's match ends at so far.
    let mut star = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(el) if is_star(el) => {
                p += 1;
                star = Some((p, t));
            }
            Some(el) if matches(el, &text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((resume, end)) => {
                    p = resume;
                    t = end + 1;
                    star = Some((resume, end + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(is_star)
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// The first bytes of `s`, up to `max`, cut at a character boundary.
fn head(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(rules: &[&str]) -> Scope {
        Scope::parse(rules).unwrap_or_else(|e| panic!("{rules:?}: {e}"))
    }

    #[test]
    fn rules_parse_to_their_canonical_text() {
        for (text, canonical) in [
            ("GET /v1/payments/*", "GET /v1/payments/*"),
            ("  POST /v1/refunds\t", "POST /v1/refunds"),
            ("* /", "* /"),
            ("DELETE /v1/**", "DELETE /v1/**"),
            ("PATCH /v1/**/items/*.json", "PATCH /v1/**/items/*.json"),
            ("GET /a+b/c-d_e~f.g/", "GET /a+b/c-d_e~f.g/"),
        ] {
            let rule: Rule = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(rule.as_str(), canonical);
            assert_eq!(rule.to_string(), canonical);
        }
    }

    #[test]
    fn bad_rules_are_refused_with_what_to_write() {
        let long = format!("GET /{}", "a".repeat(MAX_RULE_LEN));
        for (text, expected) in [
            ("", "write it as `METHOD PATH`"),
            ("GET", "write it as `METHOD PATH`"),
            ("GET  /v1", "exactly one space"),
            ("GET\t/v1", "write it as `METHOD PATH`"),
            ("get /v1", "methods are case-sensitive"),
            ("G3T /v1", "not an upper-case HTTP method"),
            ("GET v1", "write it as `GET /v1`"),
            ("* v1", "write it as `* /v1`"),
            ("GET /v1?x=1", "`?` is not allowed"),
            ("GET /v1/[ab]", "`[` is not allowed"),
            ("GET /v1/a]", "`]` is not allowed"),
            ("GET /v1/{a,b}", "`{` is not allowed"),
            ("GET /v1/a}", "`}` is not allowed"),
            ("GET /v1\\a", "`\\` is not allowed"),
            ("GET /v1/%2e", "`%` is not allowed"),
            ("GET /v1/a b", "`\u{20}` is not allowed"),
            ("GET /v1/\u{7}", "is not allowed"),
            ("GET /v1/a**", "`**` must be a whole segment"),
            ("GET /v1/../admin", "`.` or `..` segment"),
            ("GET /v1/./a", "`.` or `..` segment"),
            ("GET /v1//a", "empty segment"),
            ("GET /v1;x", "`;`"),
            ("GET /v1/é", "non-ASCII"),
            (long.as_str(), "longer than 512 bytes"),
        ] {
            let err = text.parse::<Rule>().expect_err(text).to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn scopes_count_and_refuse_duplicates() {
        let none: [&str; 0] = [];
        let everything = Scope::parse(&none).unwrap();
        assert!(everything.is_everything());
        assert_eq!(everything, Scope::everything());

        let two = scope(&["GET /a", "POST /b"]);
        assert!(!two.is_everything());
        assert_eq!(two.rules().collect::<Vec<_>>(), ["GET /a", "POST /b"]);

        let err = Scope::parse(&["GET /a", " GET /a"]).unwrap_err();
        assert_eq!(
            err,
            ScopeError::Duplicate {
                rule: "GET /a".into()
            }
        );

        let many: Vec<String> = (0..=MAX_RULES).map(|i| format!("GET /{i}")).collect();
        assert_eq!(
            Scope::parse(&many).unwrap_err(),
            ScopeError::TooMany { count: 33 }
        );
        assert!(Scope::parse(&many[..MAX_RULES]).is_ok());
    }

    #[test]
    fn star_matches_within_one_segment() {
        let s = scope(&["GET /v1/payments/*"]);
        for ok in ["/v1/payments/p_1", "/v1/payments/", "/v1/payments/a%20b"] {
            assert_eq!(
                s.check("GET", ok),
                Decision::Rule("GET /v1/payments/*"),
                "{ok}"
            );
        }
        for no in [
            "/v1/payments",
            "/v1/payments/a/b",
            "/v1/paymentsx/a",
            "/v1/admin",
        ] {
            assert_eq!(s.check("GET", no), Decision::NoRule, "{no}");
        }

        let s = scope(&["GET /v1/*.json", "GET /v1/a*b*c"]);
        assert_eq!(
            s.check("GET", "/v1/x.json"),
            Decision::Rule("GET /v1/*.json")
        );
        assert_eq!(
            s.check("GET", "/v1/.json"),
            Decision::Rule("GET /v1/*.json")
        );
        assert_eq!(s.check("GET", "/v1/x/y.json"), Decision::NoRule);
        assert_eq!(s.check("GET", "/v1/abxbc"), Decision::Rule("GET /v1/a*b*c"));
        assert_eq!(s.check("GET", "/v1/abcx"), Decision::NoRule);
    }

    #[test]
    fn double_star_matches_zero_or_more_segments() {
        let s = scope(&["GET /v1/**"]);
        for ok in ["/v1", "/v1/", "/v1/a", "/v1/a/b/c", "/v1/a/"] {
            assert_eq!(s.check("GET", ok), Decision::Rule("GET /v1/**"), "{ok}");
        }
        for no in ["/", "/v1x", "/v2/v1", "/x/v1/a"] {
            assert_eq!(s.check("GET", no), Decision::NoRule, "{no}");
        }

        let s = scope(&["GET /v1/**/refunds/*"]);
        for ok in ["/v1/refunds/r", "/v1/a/refunds/r", "/v1/a/b/refunds/"] {
            assert_eq!(
                s.check("GET", ok),
                Decision::Rule("GET /v1/**/refunds/*"),
                "{ok}"
            );
        }
        for no in ["/v1/refunds", "/v1/a/refunds/r/x", "/v1/refundsx/r"] {
            assert_eq!(s.check("GET", no), Decision::NoRule, "{no}");
        }

        let all = scope(&["* /**"]);
        for ok in ["/", "/a", "/a/b/"] {
            assert_eq!(all.check("DELETE", ok), Decision::Rule("* /**"), "{ok}");
        }
    }

    #[test]
    fn methods_and_exact_paths_compare_exactly() {
        let s = scope(&["POST /v1/refunds", "* /v1/health"]);
        assert_eq!(
            s.check("POST", "/v1/refunds"),
            Decision::Rule("POST /v1/refunds")
        );
        assert_eq!(s.check("post", "/v1/refunds"), Decision::NoRule);
        assert_eq!(s.check("GET", "/v1/refunds"), Decision::NoRule);
        assert_eq!(s.check("POST", "/v1/refunds/"), Decision::NoRule);
        assert_eq!(s.check("POST", "/v1/Refunds"), Decision::NoRule);
        assert_eq!(
            s.check("PURGE", "/v1/health"),
            Decision::Rule("* /v1/health")
        );
        // Matched decoded: `%72` is `r`.
        assert_eq!(
            s.check("POST", "/v1/%72efunds"),
            Decision::Rule("POST /v1/refunds")
        );
        let root = scope(&["GET /"]);
        assert_eq!(root.check("GET", "/"), Decision::Rule("GET /"));
        assert_eq!(root.check("GET", "/a"), Decision::NoRule);
    }

    #[test]
    fn the_first_matching_rule_is_named() {
        let s = scope(&["GET /v1/a", "GET /v1/*", "* /**"]);
        assert_eq!(s.check("GET", "/v1/a"), Decision::Rule("GET /v1/a"));
        assert_eq!(s.check("GET", "/v1/b"), Decision::Rule("GET /v1/*"));
        assert_eq!(s.check("PUT", "/v1/b"), Decision::Rule("* /**"));
    }

    #[test]
    fn ambiguous_paths_are_refused_for_every_scope() {
        use PathError::*;
        let cases = [
            // Getting `/v1/admin` past `GET /v1/payments/*`.
            ("/v1/payments/../admin", DotSegment),
            ("/v1/payments/%2e%2e/admin", DotSegment),
            ("/v1/payments/%2E%2e/admin", DotSegment),
            ("/v1/payments/.%2e/admin", DotSegment),
            ("/v1/payments/%2e./admin", DotSegment),
            ("/v1/payments/./x", DotSegment),
            ("/v1/payments/%2e", DotSegment),
            ("/v1/payments/..", DotSegment),
            ("/v1/payments/.", DotSegment),
            ("/v1/payments/...", DotSegment),
            ("/v1/payments%2f..%2fadmin", EncodedSlash),
            ("/v1/payments%2F..%2Fadmin", EncodedSlash),
            ("/v1/payments/x/..%2fadmin", EncodedSlash),
            ("/v1/payments/%252e%252e/admin", DoubleEncoded),
            ("/v1/payments/%25", DoubleEncoded),
            ("/v1/payments/%c0%ae%c0%ae/admin", NotUtf8),
            ("/v1/payments/%ff", NotUtf8),
            ("/v1/payments/%ef%bc%8e%ef%bc%8e/admin", NonAscii),
            ("/v1/payments/\u{ff0e}\u{ff0e}/admin", NonAscii),
            ("/v1/payments/%e2%88%95admin", NonAscii),
            ("/v1/payments;/../admin", Semicolon),
            ("/v1/payments/..;/admin", Semicolon),
            ("/v1/payments/x%3b/admin", Semicolon),
            ("/v1/payments/x\\..\\admin", Backslash),
            ("/v1/payments/x%5c..%5cadmin", Backslash),
            ("/v1/payments/x%5C", Backslash),
            ("/v1/payments/x%00", ControlChar),
            ("/v1/payments/x\0", ControlChar),
            ("/v1/payments/x%0d%0a", ControlChar),
            ("/v1/payments/x%7f", ControlChar),
            ("/v1/payments/x\t", ControlChar),
            ("/v1/payments/x%c2%85", ControlChar),
            ("/v1/payments/x%3f", EncodedDelimiter),
            ("/v1/payments/x%23", EncodedDelimiter),
            ("/v1/payments/x?y", QueryOrFragment),
            ("/v1/payments/x#y", QueryOrFragment),
            ("/v1/payments/x y", Space),
            ("/v1/payments/%zz", BadPercent),
            ("/v1/payments/%4", BadPercent),
            ("/v1/payments/%", BadPercent),
            ("/v1/payments/%4g", BadPercent),
            ("/v1//payments/x", EmptySegment),
            ("//v1/payments/x", EmptySegment),
            ("/v1/payments//", EmptySegment),
            ("v1/payments/x", NoLeadingSlash),
            ("", NoLeadingSlash),
            ("*", NoLeadingSlash),
            ("http://h/v1", NoLeadingSlash),
        ];
        let rules = scope(&["GET /v1/payments/*", "* /**"]);
        for (path, expected) in cases {
            assert_eq!(normalize_path(path), Err(expected), "{path:?}");
            assert_eq!(
                rules.check("GET", path),
                Decision::BadPath(expected),
                "{path:?}"
            );
            assert_eq!(
                Scope::everything().check("GET", path),
                Decision::BadPath(expected),
                "{path:?}"
            );
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(normalize_path(&long), Err(TooLong));
        assert!(normalize_path(&long[..MAX_PATH_LEN]).is_ok());
    }

    #[test]
    fn clean_paths_decode_once() {
        for (raw, decoded) in [
            ("/", "/"),
            ("/v1/payments/", "/v1/payments/"),
            ("/v1/pay%6Dents/a%20b", "/v1/payments/a b"),
            ("/v1/a+b", "/v1/a+b"),
            ("/v1/.well-known/x", "/v1/.well-known/x"),
            ("/v1/..a/a..", "/v1/..a/a.."),
            ("/v1/%7B%22a%22%7D", "/v1/{\"a\"}"),
            ("/v1/*", "/v1/*"),
        ] {
            assert_eq!(normalize_path(raw).as_deref(), Ok(decoded), "{raw:?}");
        }
        // `+` is never a space in a path.
        let s = scope(&["GET /v1/a+b"]);
        assert_eq!(s.check("GET", "/v1/a+b"), Decision::Rule("GET /v1/a+b"));
        assert_eq!(s.check("GET", "/v1/a%20b"), Decision::NoRule);
    }

    #[test]
    fn errors_say_what_to_do() {
        assert_eq!(
            "GET v1".parse::<Rule>().unwrap_err().to_string(),
            "rule `GET v1`: the path must start with `/`; write it as `GET /v1`"
        );
        assert_eq!(
            PathError::DotSegment.to_string(),
            "the path has a `.` or `..` segment (raw or encoded); send the path your tool resolved"
        );
        let err = format!("GET /{}", "é".repeat(300))
            .parse::<Rule>()
            .unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
    }

    /// A small deterministic generator (xorshift) of paths made of the
    /// pieces attacks are made of.
    #[test]
    fn normalized_paths_hold_no_ambiguity() {
        const PIECES: &[&str] = &[
            "/",
            "/",
            "/",
            "a",
            "b",
            ".",
            "..",
            "%2e",
            "%2E",
            "%2f",
            "%2F",
            "%5c",
            "\\",
            "%25",
            "%",
            "%4",
            "%zz",
            "%00",
            "%0a",
            ";",
            "%3b",
            "+",
            "%20",
            "?",
            "%3f",
            "#",
            "%c0%ae",
            "%e2%80%a4",
            "é",
            "*",
            "%2a",
            "~",
            "%7e",
            "\0",
            "\t",
            " ",
            "-",
            "%41",
            "%ef%bc%8e",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut accepted, rule) = (0, "GET /a/*".parse::<Rule>().unwrap());
        for _ in 0..50_000 {
            let len = 1 + next() % 8;
            let mut raw = String::from(if next() % 8 == 0 { "" } else { "/" });
            for _ in 0..len {
                raw.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            let Ok(path) = normalize_path(&raw) else {
                continue;
            };
            accepted += 1;
            assert!(path.starts_with('/'), "{raw:?} -> {path:?}");
            assert!(!path.contains("//"), "{raw:?} -> {path:?}");
            assert!(
                !path.contains(['%', '\\', ';', '?', '#']),
                "{raw:?} -> {path:?}"
            );
            assert!(
                path.is_ascii() && !path.contains(|c: char| c.is_control()),
                "{raw:?}"
            );
            assert!(
                segments(&path).all(|s| s.is_empty() || !s.bytes().all(|b| b == b'.')),
                "{raw:?} -> {path:?}"
            );
            if rule.matches("GET", &path) {
                let rest = path
                    .strip_prefix("/a/")
                    .unwrap_or_else(|| panic!("{path:?}"));
                assert!(!rest.contains('/'), "{path:?}");
            }
        }
        assert!(accepted > 1_000, "only {accepted} paths were clean");
    }

    #[test]
    fn wildcard_backtracks_exactly() {
        let m =
            |p: &str, t: &str| wildcard(p.as_bytes(), t.as_bytes(), |&b| b == b'*', |a, b| a == b);
        assert!(m("*", ""));
        assert!(m("a*", "a"));
        assert!(m("*a*b", "xaxab"));
        assert!(m("a*b*c", "abbbc"));
        assert!(!m("a*b*c", "abbbcx"));
        assert!(!m("a", ""));
        assert!(m("**", "abc"));
        assert!(!m("*x", "abc"));
    }
}

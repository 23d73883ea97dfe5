//! Fuzzes placeholder swapping and credential injection on requests any
//! client writes: header values and a request-target made of text and
//! placeholders (right, for another target, upper-cased, encoded, cut
//! short). A request let through holds no `jitproxy:` anywhere, raw or
//! percent-decoded, and the configured header exactly once, with the
//! secret; a refusal never shows the secret. For a target without a
//! credential, a request is refused exactly when it holds `jitproxy:`.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use hyper::http::{HeaderMap, HeaderName, HeaderValue};
use jitproxy::proxy::http::credential::{
    refuse_placeholders, Credential, Secret, SecretCell, Template,
};
use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode;

const TARGET: &str = "payments-api";
const SECRET: &str = "fuzz-S3cret/+&=%41~";
const HEADERS: [&str; 4] = ["authorization", "x-api-key", "cookie", "x-other"];

#[derive(Debug, Arbitrary)]
enum Piece {
    Text(String),
    Char(u8),
    Placeholder,
    Encoded,
    Upper,
    Foreign,
    Longer,
    Marker,
    Cut(u8),
}

#[derive(Debug, Arbitrary)]
struct Request {
    /// The credential with a header and query parameters, or the one with
    /// neither (placeholders in headers only).
    header: bool,
    headers: Vec<(u8, Vec<Piece>)>,
    path: Vec<Piece>,
    query: Option<Vec<Piece>>,
}

fn render(pieces: &[Piece]) -> Vec<u8> {
    let placeholder = format!("jitproxy:{TARGET}");
    let mut out = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.extend_from_slice(text.as_bytes()),
            Piece::Char(c) => out.push(*c),
            Piece::Placeholder => out.extend_from_slice(placeholder.as_bytes()),
            Piece::Encoded => out.extend_from_slice(b"%6Aitproxy%3apayments-api"),
            Piece::Upper => out.extend_from_slice(b"JITPROXY:payments-api"),
            Piece::Foreign => out.extend_from_slice(b"jitproxy:other-api"),
            Piece::Longer => out.extend_from_slice(b"jitproxy:payments-api-v2"),
            Piece::Marker => out.extend_from_slice(b"jitproxy:"),
            Piece::Cut(n) => out
                .extend_from_slice(&placeholder.as_bytes()[..usize::from(*n) % placeholder.len()]),
        }
    }
    out
}

/// The oracle, written apart from the code under test: `jitproxy:` in
/// `bytes`, ASCII case-insensitively, raw or percent-decoded once.
fn has_marker(bytes: &[u8]) -> bool {
    let find = |b: &[u8]| contains(&b.to_ascii_lowercase(), b"jitproxy:");
    find(bytes) || find(&percent_decode(bytes).collect::<Vec<u8>>())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn credentials() -> &'static [Credential; 2] {
    static CREDENTIALS: OnceLock<[Credential; 2]> = OnceLock::new();
    CREDENTIALS.get_or_init(|| {
        let secret = || SecretCell::from_secret(Secret::new(SECRET.into()).expect("the secret"));
        [
            Credential::new(
                Some(HeaderName::from_static("authorization")),
                Template::parse("Bearer {secret}").expect("the template"),
                secret(),
                vec!["api_key".into(), "token".into()],
            )
            .with_placeholder_headers(HEADERS.iter().map(|h| HeaderName::from_static(h)).collect()),
            Credential::new(None, Template::default(), secret(), Vec::new()),
        ]
    })
}

fuzz_target!(|request: Request| {
    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        let name = HEADERS[usize::from(*name) % HEADERS.len()];
        if let Ok(value) = HeaderValue::from_bytes(&render(value)) {
            headers.append(name, value);
        }
    }
    let mut path_and_query = String::from("/");
    path_and_query.push_str(&String::from_utf8_lossy(&render(&request.path)));
    if let Some(query) = &request.query {
        path_and_query.push('?');
        path_and_query.push_str(&String::from_utf8_lossy(&render(query)));
    }

    let marked =
        headers.values().any(|v| has_marker(v.as_bytes())) || has_marker(path_and_query.as_bytes());
    match refuse_placeholders(&headers, &path_and_query) {
        Ok(()) => assert!(
            !marked,
            "a placeholder went through: {path_and_query:?} {headers:?}"
        ),
        Err(e) => assert!(marked, "refused without a placeholder: {e}"),
    }

    let credential = &credentials()[usize::from(!request.header)];
    let before = headers.clone();
    match credential.apply(TARGET, &mut headers, &path_and_query) {
        Ok(applied) => {
            let sent = applied.path_and_query.as_deref().unwrap_or(&path_and_query);
            assert!(
                !has_marker(sent.as_bytes()),
                "a placeholder went through: {sent:?}"
            );
            for (name, value) in &headers {
                assert!(
                    !has_marker(value.as_bytes()),
                    "a placeholder went through in {name}"
                );
            }
            if let Some(name) = credential.header() {
                assert_eq!(applied.injected, Some(name));
                let values: Vec<_> = headers.get_all(name).iter().collect();
                assert_eq!(values.len(), 1, "{name} went {} times", values.len());
                assert_eq!(values[0].as_bytes(), format!("Bearer {SECRET}").as_bytes());
            } else {
                assert_eq!(applied.injected, None);
            }
            if applied.swapped == 0 {
                assert_eq!(applied.path_and_query, None);
                for name in before.keys().filter(|&n| Some(n) != credential.header()) {
                    assert!(before.get_all(name).iter().eq(headers.get_all(name).iter()));
                }
            }
            if let Some(rewritten) = &applied.path_and_query {
                assert_ne!(rewritten, &path_and_query);
                assert!(
                    rewritten.contains("fuzz-S3cret%2F%2B%26%3D%2541~"),
                    "{rewritten:?}"
                );
            }
        }
        Err(e) => {
            // The secret and the template hold no marker: what is left over
            // came from the client.
            assert!(marked, "refused without a placeholder: {e}");
            let shown = format!("{e} {e:?}");
            let wrote_it = before.values().any(|v| contains(v.as_bytes(), b"S3cret"))
                || contains(path_and_query.as_bytes(), b"S3cret");
            assert!(
                wrote_it || !shown.contains("S3cret"),
                "the secret shows in {shown:?}"
            );
        }
    }
});

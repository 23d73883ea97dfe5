//! The real credential an inspected request carries upstream: the secret,
//! where it is read from, the header it goes in, and placeholder swapping.
//!
//! Engineers never hold the secret. Their tools send either nothing (the
//! configured header is added) or a placeholder, `jitproxy:<target>`, where
//! the secret goes: in any header value, or as the value of a query
//! parameter the target lists in `placeholder_query`. A request that still
//! holds `jitproxy:` after the swap (another target's placeholder, a broken
//! one, one in the wrong place) is refused, never sent as it is.
//!
//! Secret bytes live in [`Zeroizing`] buffers, wiped on drop. The values
//! handed to hyper ([`HeaderValue`], the rewritten request-target) are
//! `Bytes` and `String`s that cannot be wiped: that copy per request is the
//! price of sending the secret at all.

use std::{
    ffi::OsString,
    fmt,
    fs::{self, File, Metadata, OpenOptions},
    io::{self, Read},
    os::unix::{
        ffi::OsStringExt,
        fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use hyper::http::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{percent_decode, percent_encode, AsciiSet, NON_ALPHANUMERIC};
use thiserror::Error;
use zeroize::Zeroizing;

/// The largest secret file, in bytes.
pub const MAX_SECRET_FILE: usize = 64 * 1024;
/// How often a secret file is looked at for a change, at most.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// What every placeholder starts with; what is refused when left over
/// (compared ASCII case-insensitively, raw and percent-decoded).
pub const PLACEHOLDER_PREFIX: &str = "jitproxy:";

/// A secret's bytes, wiped when the last [`Arc`] to it goes. Never printed
/// (its `Debug` is `Secret(redacted)`), never cloned.
pub struct Secret(Zeroizing<Vec<u8>>);

/// Where a target's secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A root-only file (owner root, mode 600 or 400), read again when it
    /// changes.
    File(PathBuf),
    /// An environment variable of the daemon, read once.
    Env(String),
}

/// A target's current secret. A file source is looked at (one `lstat`) at
/// most once per interval and read again only when its device, inode,
/// size, mtime or ctime changed.
///
/// A failed re-read keeps the previous secret in service: a rotation
/// half-done or a file briefly missing should not cut every engineer off.
/// [`SecretCell::last_error`] says what went wrong until a read succeeds
/// again, for the caller to log and export.
#[derive(Debug)]
pub struct SecretCell {
    /// `None`: the secret never changes (an environment variable, a given
    /// secret).
    file: Option<PathBuf>,
    interval: Duration,
    state: Mutex<CellState>,
}

/// The `value` of a `[target.credential]`: the header value, with
/// `{secret}` where the secret goes (`Bearer {secret}`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    prefix: String,
    suffix: String,
}

/// A target's credential, ready to be put on requests.
#[derive(Debug)]
pub struct Credential {
    /// The header every request gets; `None`: only placeholders are swapped.
    header: Option<HeaderName>,
    template: Template,
    source: SecretCell,
    /// Query parameters whose placeholder value is swapped, by name.
    placeholder_query: Vec<String>,
    /// Headers whose placeholders are swapped. Only these: a placeholder in
    /// any other header is refused, since an API may echo a header (Origin
    /// into CORS, request ids, error bodies) and would hand the secret back.
    placeholder_headers: Vec<HeaderName>,
}

/// What [`Credential::apply`] did to a request.
pub struct Applied<'a> {
    /// The request-target to send instead, when a query value was swapped.
    /// It holds the secret: never log it (its `Debug` does not show it).
    pub path_and_query: Option<String>,
    /// The header set to the rendered credential, if the target has one.
    pub injected: Option<&'a HeaderName>,
    /// Placeholders swapped, in header values and the query.
    pub swapped: usize,
}

/// Where in a request a placeholder was left: the name only, never the
/// value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Header(String),
    QueryParameter(String),
    Path,
}

/// Why a request is refused instead of sent: a placeholder jitproxy could
/// not swap (the client's doing), or a credential that cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Unresolved {
    #[error(
        "the request's {place} holds a `jitproxy:` placeholder that was not swapped; write it \
         exactly as `jitproxy:{target}` (lower case), in a header value or in a query parameter \
         listed in the target's `placeholder_query`"
    )]
    Unswapped { place: Place, target: String },
    #[error(
        "the request's {place} holds a `jitproxy:` placeholder, but the target has no credential \
         configured; remove the placeholder, or give the target a `[target.credential]`"
    )]
    NoCredential { place: Place },
    #[error(
        "the credential of target `{target}` does not make a valid header value (internal: the \
         secret and the value are checked when read); report this"
    )]
    Render { target: String },
}

/// Why a secret or a value template is refused. Names the file or variable
/// and the rule broken; never holds secret bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CredentialError {
    #[error(
        "cannot open secret file {}: {reason}; check `secret_file`",
        .path.display()
    )]
    Open { path: PathBuf, reason: String },
    #[error(
        "secret file {} is a symbolic link, which jitproxy does not follow; point `secret_file` \
         at the file itself",
        .path.display()
    )]
    Symlink { path: PathBuf },
    #[error(
        "secret file {} is not a regular file; make it a file holding the secret alone",
        .path.display()
    )]
    NotRegular { path: PathBuf },
    #[error(
        "secret file {} is owned by uid {uid}, not root; chown root {}",
        .path.display(), .path.display()
    )]
    NotRoot { path: PathBuf, uid: u32 },
    #[error(
        "secret file {} has mode {mode:04o}, open to group or others; chmod 600 {}",
        .path.display(), .path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "secret file {} is over 64 KiB; it must hold the secret alone",
        .path.display()
    )]
    TooLarge { path: PathBuf },
    #[error("cannot read secret file {}: {reason}", .path.display())]
    Read { path: PathBuf, reason: String },
    #[error(
        "environment variable {name} (`secret_env`) is not set for the daemon; set it in the \
         service's environment, or use `secret_file`"
    )]
    EnvMissing { name: String },
    #[error("the secret in {origin} {problem}")]
    Content {
        origin: String,
        problem: ContentProblem,
    },
    #[error(
        "the credential `value` must hold `{{secret}}` exactly once (it holds it {count} times): \
         e.g. \"Bearer {{secret}}\""
    )]
    TemplateSecretCount { count: usize },
    #[error(
        "the credential `value` may hold only printable ASCII besides `{{secret}}`, and no other \
         braces"
    )]
    TemplateChar,
    #[error(
        "the credential `value` starts or ends with a space, which HTTP parsers strip; remove it"
    )]
    TemplateSpace,
    #[error("the credential `value` holds `jitproxy:`, which is read as a placeholder; remove it")]
    TemplatePlaceholder,
    #[error(
        "the secret and the credential `value` do not make a valid header value (internal: both \
         are checked when read); report this"
    )]
    Render,
}

/// What is wrong with a secret's bytes (they go in a header value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ContentProblem {
    #[error("is empty; write the secret into it")]
    Empty,
    #[error("has a line break inside (only one trailing newline is trimmed); remove it")]
    LineBreak,
    #[error("has a NUL byte; a header value cannot hold one")]
    Nul,
    #[error("has a control character; a header value cannot hold one")]
    Control,
    #[error("starts or ends with a space or tab, which HTTP parsers strip; remove it")]
    Whitespace,
    #[error(
        "holds `jitproxy:`, which jitproxy reads as a placeholder; it cannot be the real secret"
    )]
    Placeholder,
}

impl Secret {
    /// A secret of `bytes`, checked as a file's content is (one trailing
    /// newline trimmed, then non-empty and fit for a header value).
    pub fn new(bytes: Vec<u8>) -> Result<Self, CredentialError> {
        checked(Zeroizing::new(bytes), || "the given secret".to_owned())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl SecretCell {
    /// The secret of `source`, read now; an error when it cannot be, so
    /// that a config naming a bad secret is refused at load.
    pub fn new(source: SecretSource) -> Result<Self, CredentialError> {
        Self::with_interval(source, CHECK_INTERVAL)
    }

    /// As [`SecretCell::new`], looking at a file source at most once per
    /// `interval`.
    pub fn with_interval(
        source: SecretSource,
        interval: Duration,
    ) -> Result<Self, CredentialError> {
        let (file, secret, stamp) = match source {
            SecretSource::File(path) => {
                let (secret, stamp) = read_file(&path)?;
                (Some(path), secret, Some(stamp))
            }
            SecretSource::Env(name) => {
                // The process environment keeps its own copy, which cannot
                // be wiped; ours is.
                let value = std::env::var_os(&name)
                    .ok_or_else(|| CredentialError::EnvMissing { name: name.clone() })?;
                let bytes = Zeroizing::new(OsString::into_vec(value));
                let secret = checked(bytes, || format!("environment variable {name}"))?;
                (None, secret, None)
            }
        };
        Ok(Self {
            file,
            interval,
            state: Mutex::new(CellState {
                current: Arc::new(secret),
                stamp,
                checked: Instant::now(),
                error: None,
            }),
        })
    }

    /// A cell that always holds `secret` (for fuzzing and tests).
    #[doc(hidden)]
    pub fn from_secret(secret: Secret) -> Self {
        Self {
            file: None,
            interval: CHECK_INTERVAL,
            state: Mutex::new(CellState {
                current: Arc::new(secret),
                stamp: None,
                checked: Instant::now(),
                error: None,
            }),
        }
    }

    /// The secret to use now. Never fails: the cell is built with a valid
    /// secret, and a failed re-read keeps it (see [`SecretCell::last_error`]).
    pub fn get(&self) -> Arc<Secret> {
        let mut state = self.lock();
        if let Some(path) = &self.file {
            let now = Instant::now();
            if now.duration_since(state.checked) >= self.interval {
                state.checked = now;
                state.refresh(path);
            }
        }
        Arc::clone(&state.current)
    }

    /// Why the file was not read again when it last changed (or went
    /// missing); `None` once a read succeeds. The secret in use then is the
    /// one read before.
    pub fn last_error(&self) -> Option<CredentialError> {
        self.lock().error.clone()
    }

    fn lock(&self) -> MutexGuard<'_, CellState> {
        // Every update leaves the state whole, so a panic elsewhere while
        // it was held does not make it wrong.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Template {
    /// The template of a credential `value`.
    pub fn parse(value: &str) -> Result<Self, CredentialError> {
        let count = value.matches("{secret}").count();
        let Some((prefix, suffix)) = value.split_once("{secret}").filter(|_| count == 1) else {
            return Err(CredentialError::TemplateSecretCount { count });
        };
        let text = |s: &str| {
            s.bytes()
                .all(|b| (b' '..=b'~').contains(&b) && b != b'{' && b != b'}')
        };
        if !text(prefix) || !text(suffix) {
            return Err(CredentialError::TemplateChar);
        }
        if prefix.starts_with(' ') || suffix.ends_with(' ') {
            return Err(CredentialError::TemplateSpace);
        }
        if has_marker_either(prefix.as_bytes()) || has_marker_either(suffix.as_bytes()) {
            return Err(CredentialError::TemplatePlaceholder);
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }

    /// The header value for `secret`, marked sensitive (kept out of HPACK
    /// tables).
    pub fn render(&self, secret: &Secret) -> Result<HeaderValue, CredentialError> {
        let secret = secret.expose();
        let mut value = Zeroizing::new(Vec::with_capacity(
            self.prefix.len() + secret.len() + self.suffix.len(),
        ));
        value.extend_from_slice(self.prefix.as_bytes());
        value.extend_from_slice(secret);
        value.extend_from_slice(self.suffix.as_bytes());
        // HeaderValue copies into `Bytes`, which cannot be wiped.
        let mut value = HeaderValue::from_bytes(&value).map_err(|_| CredentialError::Render)?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl Credential {
    pub fn new(
        header: Option<HeaderName>,
        template: Template,
        source: SecretCell,
        placeholder_query: Vec<String>,
    ) -> Self {
        Self {
            header,
            template,
            source,
            placeholder_query,
            placeholder_headers: Vec::new(),
        }
    }

    /// The headers whose placeholders are swapped (none by default).
    #[must_use]
    pub fn with_placeholder_headers(mut self, headers: Vec<HeaderName>) -> Self {
        self.placeholder_headers = headers;
        self
    }

    pub fn header(&self) -> Option<&HeaderName> {
        self.header.as_ref()
    }

    /// The secret's cell (for [`SecretCell::last_error`]).
    pub fn secret(&self) -> &SecretCell {
        &self.source
    }

    /// Puts the credential on a request to `target`: (a) swaps the
    /// placeholder `jitproxy:<target>` in every header value, and in the
    /// listed query parameters whose decoded value is exactly the
    /// placeholder; (b) replaces every client value of the configured
    /// header with the rendered credential. Client values of that header
    /// are dropped before the swap (the result is the same; they are not
    /// counted as swapped).
    ///
    /// A placeholder must be followed by a character that cannot continue a
    /// target name (so `jitproxy:payments-api-v2` is not taken for
    /// `jitproxy:payments-api`). On an error the request must be dropped:
    /// `headers` may already hold the secret.
    pub fn apply(
        &self,
        target: &str,
        headers: &mut HeaderMap,
        path_and_query: &str,
    ) -> Result<Applied<'_>, Unresolved> {
        let render = || Unresolved::Render {
            target: target.to_owned(),
        };
        let secret = self.source.get();
        let placeholder = format!("{PLACEHOLDER_PREFIX}{target}");
        if let Some(name) = &self.header {
            headers.remove(name);
        }
        let mut swapped = 0;
        for (name, value) in headers.iter_mut() {
            if !self.placeholder_headers.contains(name) {
                continue;
            }
            let Some((new, n)) = swap(value.as_bytes(), placeholder.as_bytes(), secret.expose())
            else {
                continue;
            };
            // As in Template::render: HeaderValue's copy cannot be wiped.
            *value = HeaderValue::from_bytes(&new).map_err(|_| render())?;
            value.set_sensitive(true);
            swapped += n;
        }
        let rewritten = self.swap_query(path_and_query, &placeholder, &secret, &mut swapped);
        if let Some(name) = &self.header {
            let value = self.template.render(&secret).map_err(|_| render())?;
            headers.insert(name.clone(), value);
        }
        // The secret and the template hold no marker (checked when read),
        // so one left now is the client's.
        let sent = rewritten.as_deref().unwrap_or(path_and_query);
        if let Some(place) = find_marker(headers, sent) {
            return Err(Unresolved::Unswapped {
                place,
                target: target.to_owned(),
            });
        }
        Ok(Applied {
            path_and_query: rewritten,
            injected: self.header.as_ref(),
            swapped,
        })
    }

    /// The request-target with the listed query parameters' placeholders
    /// swapped for the percent-encoded secret; `None` if none was.
    fn swap_query(
        &self,
        path_and_query: &str,
        placeholder: &str,
        secret: &Secret,
        swapped: &mut usize,
    ) -> Option<String> {
        if self.placeholder_query.is_empty() {
            return None;
        }
        let (path, query) = path_and_query.split_once('?')?;
        let listed = |name: &str| {
            self.placeholder_query
                .iter()
                .any(|q| percent_decode(name.as_bytes()).eq(q.bytes()))
        };
        let mut out = String::with_capacity(path_and_query.len() + 3 * secret.expose().len());
        out.push_str(path);
        out.push('?');
        let mut n = 0;
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, value))
                    if listed(name) && percent_decode(value.as_bytes()).eq(placeholder.bytes()) =>
                {
                    out.push_str(name);
                    out.push('=');
                    out.extend(percent_encode(secret.expose(), QUERY_VALUE));
                    n += 1;
                }
                _ => out.push_str(pair),
            }
        }
        *swapped += n;
        (n > 0).then_some(out)
    }
}

impl fmt::Debug for Applied<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Applied")
            .field(
                "path_and_query",
                &self
                    .path_and_query
                    .as_ref()
                    .map(|_| "(rewritten, redacted)"),
            )
            .field("injected", &self.injected)
            .field("swapped", &self.swapped)
            .finish()
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(name) => write!(f, "header `{name}`"),
            Self::QueryParameter(name) => write!(f, "query parameter `{name}`"),
            Self::Path => f.write_str("path"),
        }
    }
}

/// For a target with no credential: refuses a request that holds any
/// placeholder, which would otherwise go upstream as it is.
pub fn refuse_placeholders(headers: &HeaderMap, path_and_query: &str) -> Result<(), Unresolved> {
    match find_marker(headers, path_and_query) {
        Some(place) => Err(Unresolved::NoCredential { place }),
        None => Ok(()),
    }
}

/// Query values keep only unreserved characters as they are.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The longest query parameter name an error shows.
const MAX_SHOWN_NAME: usize = 64;

#[derive(Debug)]
struct CellState {
    current: Arc<Secret>,
    /// The file as last looked at; `None` when it could not be.
    stamp: Option<Stamp>,
    checked: Instant,
    error: Option<CredentialError>,
}

impl CellState {
    /// Reads the file again if it changed since it was last looked at.
    /// A change the stamp cannot see (same size, rewritten within the
    /// filesystem's timestamp granularity) waits for the next change;
    /// rotating by writing a new file and renaming it over is always seen.
    fn refresh(&mut self, path: &Path) {
        let stamp = match fs::symlink_metadata(path) {
            Ok(meta) => Stamp::of(&meta),
            Err(e) => {
                self.stamp = None;
                self.error = Some(open_error(path, &e));
                return;
            }
        };
        if self.stamp == Some(stamp) {
            return;
        }
        match read_file(path) {
            Ok((secret, stamp)) => {
                self.current = Arc::new(secret);
                self.stamp = Some(stamp);
                self.error = None;
            }
            Err(e) => {
                // Not tried again until the file changes (a fix changes
                // its ctime at least).
                self.stamp = Some(stamp);
                self.error = Some(e);
            }
        }
    }
}

/// What tells one version of a file from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// Not in the brief's list, but a chmod or chown within one tick of
    /// the filesystem's clock leaves the ctime as it was.
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Stamp {
    fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }
}

/// The secret in the file at `path`, and the file's stamp. The checks are
/// made on the opened file, so a file swapped after a look is still
/// checked. A symbolic link as the last component is refused
/// (`O_NOFOLLOW`); `O_NONBLOCK` keeps a FIFO there from hanging the open.
fn read_file(path: &Path) -> Result<(Secret, Stamp), CredentialError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| open_error(path, &e))?;
    let read_error = |e: io::Error| CredentialError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let meta = file.metadata().map_err(read_error)?;
    let path_buf = || path.to_owned();
    if !meta.file_type().is_file() {
        return Err(CredentialError::NotRegular { path: path_buf() });
    }
    if meta.uid() != 0 {
        return Err(CredentialError::NotRoot {
            path: path_buf(),
            uid: meta.uid(),
        });
    }
    if meta.mode() & 0o077 != 0 {
        return Err(CredentialError::TooOpen {
            path: path_buf(),
            mode: meta.mode() & 0o7777,
        });
    }
    if meta.size() > MAX_SECRET_FILE as u64 {
        return Err(CredentialError::TooLarge { path: path_buf() });
    }
    // Read into a buffer that never grows: a reallocation would leave an
    // unwiped copy behind. One byte more than allowed tells a file that
    // grew since the fstat.
    let mut buf = Zeroizing::new(vec![0; MAX_SECRET_FILE + 1]);
    let len = read_full(&file, &mut buf).map_err(read_error)?;
    if len > MAX_SECRET_FILE {
        return Err(CredentialError::TooLarge { path: path_buf() });
    }
    buf.truncate(len);
    let secret = checked(buf, || format!("secret file {}", path.display()))?;
    Ok((secret, Stamp::of(&meta)))
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(mut file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

fn open_error(path: &Path, e: &io::Error) -> CredentialError {
    if e.raw_os_error() == Some(libc::ELOOP) {
        CredentialError::Symlink {
            path: path.to_owned(),
        }
    } else {
        CredentialError::Open {
            path: path.to_owned(),
            reason: e.to_string(),
        }
    }
}

/// `bytes` as a secret: one trailing `\n` or `\r\n` trimmed, then checked
/// for what a header value cannot hold. `origin` names where it came from.
fn checked(
    mut bytes: Zeroizing<Vec<u8>>,
    origin: impl FnOnce() -> String,
) -> Result<Secret, CredentialError> {
    let len = bytes.len();
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(len - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.truncate(len - 1);
    }
    let problem = if bytes.is_empty() {
        Some(ContentProblem::Empty)
    } else if bytes.iter().any(|&b| b == b'\r' || b == b'\n') {
        Some(ContentProblem::LineBreak)
    } else if bytes.contains(&0) {
        Some(ContentProblem::Nul)
    } else if bytes.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
        Some(ContentProblem::Control)
    } else if [bytes.first(), bytes.last()]
        .into_iter()
        .flatten()
        .any(|&b| b == b' ' || b == b'\t')
    {
        Some(ContentProblem::Whitespace)
    } else if has_marker_either(&bytes) {
        Some(ContentProblem::Placeholder)
    } else {
        None
    };
    match problem {
        Some(problem) => Err(CredentialError::Content {
            origin: origin(),
            problem,
        }),
        None => Ok(Secret(bytes)),
    }
}

/// `value` with every `placeholder` that is not followed by a target name
/// character replaced by `secret`, and how many were; `None` if none was.
fn swap(value: &[u8], placeholder: &[u8], secret: &[u8]) -> Option<(Zeroizing<Vec<u8>>, usize)> {
    let mut at = Vec::new();
    let mut i = 0;
    while let Some(found) = value[i..]
        .windows(placeholder.len())
        .position(|w| w == placeholder)
    {
        let start = i + found;
        let end = start + placeholder.len();
        if value.get(end).is_some_and(|&b| is_name_byte(b)) {
            i = start + 1;
        } else {
            at.push(start);
            i = end;
        }
    }
    if at.is_empty() {
        return None;
    }
    // Sized up front: a reallocation would leave an unwiped copy.
    let mut out = Zeroizing::new(Vec::with_capacity(
        value.len() - at.len() * placeholder.len() + at.len() * secret.len(),
    ));
    let mut from = 0;
    for &start in &at {
        out.extend_from_slice(&value[from..start]);
        out.extend_from_slice(secret);
        from = start + placeholder.len();
    }
    out.extend_from_slice(&value[from..]);
    Some((out, at.len()))
}

/// A character of a target name (letters, digits, `-`, `_`, `.`).
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
}

/// Where a placeholder is left in a request, if anywhere.
fn find_marker(headers: &HeaderMap, path_and_query: &str) -> Option<Place> {
    if let Some((name, _)) = headers
        .iter()
        .find(|(_, value)| has_marker_either(value.as_bytes()))
    {
        return Some(Place::Header(name.as_str().to_owned()));
    }
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    if has_marker_either(path.as_bytes()) {
        return Some(Place::Path);
    }
    // The marker holds no `&` (nor does it decode from one), so looking
    // pair by pair finds what looking at the whole query would.
    query
        .split('&')
        .find(|pair| has_marker_either(pair.as_bytes()))
        .map(|pair| {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            let name =
                String::from_utf8_lossy(&percent_decode(name.as_bytes()).collect::<Vec<_>>())
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_SHOWN_NAME)
                    .collect();
            Place::QueryParameter(name)
        })
}

/// Whether `bytes`, raw or percent-decoded once, hold the marker.
fn has_marker_either(bytes: &[u8]) -> bool {
    has_marker(bytes.iter().copied()) || has_marker(percent_decode(bytes))
}

/// Whether `bytes` hold `jitproxy:`, ASCII case-insensitively. Streams (no
/// decoded copy of a value that may hold the secret): the marker's
/// characters are all different, so a mismatch restarts the match.
fn has_marker(bytes: impl Iterator<Item = u8>) -> bool {
    let marker = PLACEHOLDER_PREFIX.as_bytes();
    let mut matched = 0;
    for b in bytes {
        let b = b.to_ascii_lowercase();
        if b == marker[matched] {
            matched += 1;
            if matched == marker.len() {
                return true;
            }
        } else {
            matched = usize::from(b == marker[0]);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{chown, symlink, PermissionsExt};

    use tempfile::TempDir;

    use super::*;

    const SECRET: &str = "sk_live_51HxQ/abc+d=e";

    fn secret() -> Secret {
        Secret::new(SECRET.as_bytes().to_vec()).unwrap()
    }

    fn credential(header: Option<&str>, value: &str, query: &[&str]) -> Credential {
        Credential::new(
            header.map(|h| HeaderName::from_bytes(h.as_bytes()).unwrap()),
            Template::parse(value).unwrap(),
            SecretCell::from_secret(secret()),
            query.iter().map(|q| (*q).to_owned()).collect(),
        )
        .with_placeholder_headers(
            ["x-api-key", "x-key", "cookie", "authorization"]
                .into_iter()
                .map(HeaderName::from_static)
                .collect(),
        )
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    /// A secret file owned by root, mode 600, holding `content`.
    fn secret_file(dir: &TempDir, name: &str, content: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        chown(&path, Some(0), Some(0)).unwrap();
        path
    }

    fn assert_hidden(text: &str) {
        assert!(!text.contains(SECRET), "the secret shows in {text:?}");
        assert!(
            !text.contains("sk_live"),
            "part of the secret shows in {text:?}"
        );
    }

    #[test]
    fn secrets_never_print() {
        let s = secret();
        assert_eq!(format!("{s:?}"), "Secret(redacted)");
        assert_eq!(s.expose(), SECRET.as_bytes());
        let cell = SecretCell::from_secret(secret());
        assert_hidden(&format!("{cell:?}"));
        let c = credential(Some("authorization"), "Bearer {secret}", &["api_key"]);
        assert_hidden(&format!("{c:?}"));
        let mut h = HeaderMap::new();
        let applied = c
            .apply("payments-api", &mut h, "/v1?api_key=jitproxy:payments-api")
            .unwrap();
        assert!(applied.path_and_query.is_some());
        assert_hidden(&format!("{applied:?}"));
    }

    #[test]
    fn templates_hold_secret_once() {
        let t = Template::parse("Bearer {secret}").unwrap();
        let v = t.render(&secret()).unwrap();
        assert_eq!(v.as_bytes(), format!("Bearer {SECRET}").as_bytes());
        assert!(v.is_sensitive());
        assert_eq!(Template::parse("{secret}").unwrap(), Template::default());
        assert!(Template::parse("token={secret}; v=1").is_ok());
        for (bad, expected) in [
            ("Bearer", CredentialError::TemplateSecretCount { count: 0 }),
            (
                "{secret}{secret}",
                CredentialError::TemplateSecretCount { count: 2 },
            ),
            (
                "{Secret}",
                CredentialError::TemplateSecretCount { count: 0 },
            ),
            (
                "Bearer {secrets}",
                CredentialError::TemplateSecretCount { count: 0 },
            ),
            ("{{secret}}", CredentialError::TemplateChar),
            ("Bearer\t{secret}", CredentialError::TemplateChar),
            ("Bearer\r\n{secret}", CredentialError::TemplateChar),
            ("Bé {secret}", CredentialError::TemplateChar),
            (" Bearer {secret}", CredentialError::TemplateSpace),
            ("{secret} ", CredentialError::TemplateSpace),
            ("JitProxy:x {secret}", CredentialError::TemplatePlaceholder),
        ] {
            assert_eq!(Template::parse(bad), Err(expected), "{bad:?}");
        }
        let message = Template::parse("Bearer").unwrap_err().to_string();
        assert!(message.contains("\"Bearer {secret}\""), "{message}");
    }

    #[test]
    fn secret_content_is_checked() {
        assert_eq!(Secret::new(b"tok\n".to_vec()).unwrap().expose(), b"tok");
        assert_eq!(Secret::new(b"tok\r\n".to_vec()).unwrap().expose(), b"tok");
        assert_eq!(Secret::new(b"a b\tc".to_vec()).unwrap().expose(), b"a b\tc");
        for (bad, problem) in [
            (&b""[..], ContentProblem::Empty),
            (b"\n", ContentProblem::Empty),
            (b"\r\n", ContentProblem::Empty),
            (b"tok\n\n", ContentProblem::LineBreak),
            (b"to\nk", ContentProblem::LineBreak),
            (b"to\rk", ContentProblem::LineBreak),
            (b"tok\r", ContentProblem::LineBreak),
            (b"to\0k", ContentProblem::Nul),
            (b"to\x1bk", ContentProblem::Control),
            (b"to\x7fk", ContentProblem::Control),
            (b" tok", ContentProblem::Whitespace),
            (b"tok\t", ContentProblem::Whitespace),
            (b"xJITPROXY:y", ContentProblem::Placeholder),
            (b"x%6aitproxy%3ay", ContentProblem::Placeholder),
        ] {
            let err = Secret::new(bad.to_vec()).unwrap_err();
            assert_eq!(
                err,
                CredentialError::Content {
                    origin: "the given secret".into(),
                    problem
                },
                "{bad:?}"
            );
        }
    }

    #[test]
    fn secret_files_must_be_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let good = secret_file(&dir, "good", format!("{SECRET}\n").as_bytes());
        let cell = SecretCell::new(SecretSource::File(good.clone())).unwrap();
        assert_eq!(cell.get().expose(), SECRET.as_bytes());
        assert_eq!(cell.last_error(), None);
        let ro = secret_file(&dir, "ro", SECRET.as_bytes());
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(SecretCell::new(SecretSource::File(ro)).is_ok());

        let open = |path: &Path| SecretCell::new(SecretSource::File(path.to_owned())).unwrap_err();
        let wide = secret_file(&dir, "wide", SECRET.as_bytes());
        fs::set_permissions(&wide, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(
            open(&wide),
            CredentialError::TooOpen {
                path: wide.clone(),
                mode: 0o640
            }
        );
        let message = open(&wide).to_string();
        assert!(
            message.contains(&format!("chmod 600 {}", wide.display())),
            "{message}"
        );

        let theirs = secret_file(&dir, "theirs", SECRET.as_bytes());
        chown(&theirs, Some(1000), None).unwrap();
        assert_eq!(
            open(&theirs),
            CredentialError::NotRoot {
                path: theirs.clone(),
                uid: 1000
            }
        );
        assert!(open(&theirs).to_string().contains("chown root"));

        let link = dir.path().join("link");
        symlink(&good, &link).unwrap();
        assert_eq!(open(&link), CredentialError::Symlink { path: link.clone() });

        let sub = dir.path().join("dir");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(
            open(&sub),
            CredentialError::NotRegular { path: sub.clone() }
        );

        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(
            open(&fifo),
            CredentialError::NotRegular { path: fifo.clone() }
        );

        let big = secret_file(&dir, "big", &vec![b'a'; MAX_SECRET_FILE + 1]);
        assert_eq!(open(&big), CredentialError::TooLarge { path: big.clone() });
        let just = secret_file(&dir, "just", &vec![b'a'; MAX_SECRET_FILE]);
        assert!(SecretCell::new(SecretSource::File(just)).is_ok());

        let missing = dir.path().join("missing");
        assert!(matches!(open(&missing), CredentialError::Open { .. }));

        let empty = secret_file(&dir, "empty", b"\n");
        let err = open(&empty);
        assert_eq!(
            err.to_string(),
            format!(
                "the secret in secret file {} is empty; write the secret into it",
                empty.display()
            )
        );

        let crlf = secret_file(&dir, "crlf", format!("{SECRET}\r\nmore").as_bytes());
        let err = open(&crlf);
        assert!(matches!(
            err,
            CredentialError::Content {
                problem: ContentProblem::LineBreak,
                ..
            }
        ));
        assert_hidden(&err.to_string());
        assert_hidden(&format!("{err:?}"));
    }

    #[test]
    fn secret_env_is_read_once() {
        let name = "JITPROXY_TEST_CREDENTIAL_SECRET";
        // Only this test touches this variable.
        std::env::set_var(name, format!("{SECRET}\n"));
        let cell = SecretCell::new(SecretSource::Env(name.into())).unwrap();
        std::env::set_var(name, "changed");
        assert_eq!(cell.get().expose(), SECRET.as_bytes());
        std::env::set_var(name, "bad\x01");
        let err = SecretCell::new(SecretSource::Env(name.into())).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the secret in environment variable {name} has a control character; a header \
                 value cannot hold one"
            )
        );
        std::env::remove_var(name);
        assert_eq!(
            SecretCell::new(SecretSource::Env(name.into())).unwrap_err(),
            CredentialError::EnvMissing { name: name.into() }
        );
    }

    #[test]
    fn changed_files_are_read_again_and_failures_keep_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = secret_file(&dir, "s", b"first");
        let source = SecretSource::File(path.clone());

        let slow = SecretCell::with_interval(source.clone(), Duration::from_secs(3600)).unwrap();
        let cell = SecretCell::with_interval(source, Duration::ZERO).unwrap();
        assert_eq!(cell.get().expose(), b"first");

        // Rotated by rename, as tools do.
        let next = secret_file(&dir, "next", b"second\n");
        fs::rename(&next, &path).unwrap();
        assert_eq!(cell.get().expose(), b"second");
        assert_eq!(slow.get().expose(), b"first", "looked before its interval");

        // Rewritten in place, a different size.
        fs::write(&path, b"third-one").unwrap();
        assert_eq!(cell.get().expose(), b"third-one");

        // Opened to others: the secret in use stays, the error shows.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(cell.get().expose(), b"third-one");
        assert_eq!(
            cell.last_error(),
            Some(CredentialError::TooOpen {
                path: path.clone(),
                mode: 0o644
            })
        );
        // Fixed: read again, the error cleared.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(cell.get().expose(), b"third-one");
        assert_eq!(cell.last_error(), None);

        // Gone, then back with a bad content, then good.
        fs::remove_file(&path).unwrap();
        assert_eq!(cell.get().expose(), b"third-one");
        assert!(matches!(
            cell.last_error(),
            Some(CredentialError::Open { .. })
        ));
        let bad = secret_file(&dir, "bad", b"line\nline");
        fs::rename(&bad, &path).unwrap();
        assert_eq!(cell.get().expose(), b"third-one");
        assert!(matches!(
            cell.last_error(),
            Some(CredentialError::Content {
                problem: ContentProblem::LineBreak,
                ..
            })
        ));
        // Replaced by a link to a good file: refused.
        fs::remove_file(&path).unwrap();
        let target = secret_file(&dir, "target", b"linked");
        symlink(&target, &path).unwrap();
        assert_eq!(cell.get().expose(), b"third-one");
        assert_eq!(
            cell.last_error(),
            Some(CredentialError::Symlink { path: path.clone() })
        );
        fs::remove_file(&path).unwrap();
        fs::rename(secret_file(&dir, "last", b"fourth"), &path).unwrap();
        assert_eq!(cell.get().expose(), b"fourth");
        assert_eq!(cell.last_error(), None);
    }

    #[test]
    fn the_header_replaces_every_client_value() {
        let c = credential(Some("authorization"), "Bearer {secret}", &[]);
        let mut h = headers(&[
            ("authorization", "Bearer mine"),
            ("authorization", "Basic b3RoZXI="),
            ("accept", "*/*"),
        ]);
        let applied = c.apply("payments-api", &mut h, "/v1/payments").unwrap();
        assert_eq!(
            applied.injected.map(HeaderName::as_str),
            Some("authorization")
        );
        assert_eq!(applied.path_and_query, None);
        assert_eq!(applied.swapped, 0);
        let values: Vec<_> = h.get_all("authorization").iter().collect();
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].as_bytes(), format!("Bearer {SECRET}").as_bytes());
        assert!(values[0].is_sensitive());
        assert_eq!(h.get("accept").unwrap(), "*/*");

        // The client's placeholder in the injected header is dropped with it.
        let mut h = headers(&[("authorization", "Bearer jitproxy:other-api")]);
        let applied = c.apply("payments-api", &mut h, "/").unwrap();
        assert_eq!(applied.swapped, 0);
        assert_eq!(h.get_all("authorization").iter().count(), 1);
    }

    #[test]
    fn placeholders_are_swapped_in_headers() {
        let c = credential(None, "{secret}", &[]);
        let mut h = headers(&[
            ("x-api-key", "jitproxy:payments-api"),
            (
                "cookie",
                "a=1; key=jitproxy:payments-api; k2=jitproxy:payments-api",
            ),
            ("accept", "*/*"),
        ]);
        let applied = c.apply("payments-api", &mut h, "/v1").unwrap();
        assert_eq!(applied.injected, None);
        assert_eq!(applied.swapped, 3);
        assert_eq!(h.get("x-api-key").unwrap().as_bytes(), SECRET.as_bytes());
        assert!(h.get("x-api-key").unwrap().is_sensitive());
        assert_eq!(
            h.get("cookie").unwrap().as_bytes(),
            format!("a=1; key={SECRET}; k2={SECRET}").as_bytes()
        );
        assert!(!h.get("accept").unwrap().is_sensitive());
    }

    #[test]
    fn placeholders_are_swapped_in_listed_query_parameters() {
        let c = credential(None, "{secret}", &["api_key", "token"]);
        let mut h = HeaderMap::new();
        let encoded = "sk_live_51HxQ%2Fabc%2Bd%3De";
        for (query, expected) in [
            (
                "api_key=jitproxy:payments-api",
                format!("api_key={encoded}"),
            ),
            (
                "api_key=jitproxy%3Apayments-api",
                format!("api_key={encoded}"),
            ),
            (
                "api_key=%6Aitproxy%3Apayments-api",
                format!("api_key={encoded}"),
            ),
            (
                "api%5Fkey=jitproxy%3apayments-api",
                format!("api%5Fkey={encoded}"),
            ),
            (
                "a=1&token=jitproxy:payments-api&b=&c&api_key=jitproxy:payments-api",
                format!("a=1&token={encoded}&b=&c&api_key={encoded}"),
            ),
        ] {
            let applied = c
                .apply("payments-api", &mut h, &format!("/v1/x?{query}"))
                .unwrap_or_else(|e| panic!("{query}: {e}"));
            assert_eq!(
                applied.path_and_query,
                Some(format!("/v1/x?{expected}")),
                "{query}"
            );
        }
        let applied = c.apply("payments-api", &mut h, "/v1/x?a=1&b=2").unwrap();
        assert_eq!((applied.path_and_query, applied.swapped), (None, 0));
        let applied = c.apply("payments-api", &mut h, "/v1/x").unwrap();
        assert_eq!(applied.path_and_query, None);
    }

    #[test]
    fn leftover_placeholders_refuse_the_request() {
        let c = credential(Some("authorization"), "Bearer {secret}", &["api_key"]);
        let header = |name: &str| Place::Header(name.into());
        let query = |name: &str| Place::QueryParameter(name.into());
        for (pairs, path_and_query, place) in [
            (
                vec![("x-api-key", "jitproxy:other-api")],
                "/",
                header("x-api-key"),
            ),
            (vec![("x-api-key", "jitproxy:")], "/", header("x-api-key")),
            (
                vec![("x-api-key", "JITPROXY:payments-api")],
                "/",
                header("x-api-key"),
            ),
            (
                vec![("x-api-key", "Jitproxy:payments-api")],
                "/",
                header("x-api-key"),
            ),
            (
                vec![("x-api-key", "jitproxy:payments-api-v2")],
                "/",
                header("x-api-key"),
            ),
            (
                vec![("x-api-key", "jitproxy:payments-api.x")],
                "/",
                header("x-api-key"),
            ),
            (
                vec![("x-api-key", "%6Aitproxy%3Apayments-api")],
                "/",
                header("x-api-key"),
            ),
            (
                vec![("x-api-key", "jitproxy%3apayments-api")],
                "/",
                header("x-api-key"),
            ),
            (
                vec![
                    ("accept", "*/*"),
                    ("cookie", "a=jitproxy:payments-api; b=jitproxy:x"),
                ],
                "/",
                header("cookie"),
            ),
            (vec![], "/v1?other=jitproxy:payments-api", query("other")),
            (vec![], "/v1?api_key=jitproxy:other-api", query("api_key")),
            (
                vec![],
                "/v1?api_key=Bearer%20jitproxy:payments-api",
                query("api_key"),
            ),
            (
                vec![],
                "/v1?api_key=JITPROXY:payments-api",
                query("api_key"),
            ),
            (
                vec![],
                "/v1?a=1&api_key=%6Aitproxy%3Aother-api",
                query("api_key"),
            ),
            (vec![], "/v1?a=1&q=%6aITPROXY%3a", query("q")),
            (vec![], "/v1?jitproxy%3Aother", query("jitproxy:other")),
            (vec![], "/v1?%61pi_key%0A=jitproxy:x", query("api_key")),
            (vec![], "/v1/jitproxy:payments-api", Place::Path),
            (vec![], "/v1/%6Aitproxy%3A", Place::Path),
        ] {
            let mut h = headers(&pairs);
            let err = c
                .apply("payments-api", &mut h, path_and_query)
                .expect_err(path_and_query);
            assert_eq!(
                err,
                Unresolved::Unswapped {
                    place: place.clone(),
                    target: "payments-api".into()
                },
                "{pairs:?} {path_and_query}"
            );
            // The error is its place's name and the target: no value.
            assert_hidden(&err.to_string());
            assert_hidden(&format!("{err:?}"));
        }
        let err = c
            .apply(
                "payments-api",
                &mut HeaderMap::new(),
                "/?x=jitproxy:other-api",
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the request's query parameter `x` holds a `jitproxy:` placeholder that was not \
             swapped; write it exactly as `jitproxy:payments-api` (lower case), in a header value \
             or in a query parameter listed in the target's `placeholder_query`"
        );
    }

    #[test]
    fn targets_without_a_credential_refuse_every_placeholder() {
        assert_eq!(
            refuse_placeholders(&headers(&[("accept", "*/*")]), "/v1?a=jitproxy"),
            Ok(())
        );
        for (pairs, path_and_query, place) in [
            (
                vec![("x-key", "jitproxy:payments-api")],
                "/",
                Place::Header("x-key".into()),
            ),
            (
                vec![("x-key", "JiTpRoXy:")],
                "/",
                Place::Header("x-key".into()),
            ),
            (
                vec![],
                "/?k=%6Aitproxy%3Ax",
                Place::QueryParameter("k".into()),
            ),
            (vec![], "/jitproxy:a", Place::Path),
        ] {
            let err = refuse_placeholders(&headers(&pairs), path_and_query).unwrap_err();
            assert_eq!(
                err,
                Unresolved::NoCredential {
                    place: place.clone()
                }
            );
            assert!(
                err.to_string().contains("no credential configured"),
                "{err}"
            );
        }
    }

    #[test]
    fn swap_respects_name_boundaries() {
        let s = |v: &str| {
            swap(v.as_bytes(), b"jitproxy:api", b"S")
                .map(|(out, n)| (String::from_utf8(out.to_vec()).unwrap(), n))
        };
        assert_eq!(s("jitproxy:api"), Some(("S".into(), 1)));
        assert_eq!(s("x jitproxy:api,jitproxy:api"), Some(("x S,S".into(), 2)));
        assert_eq!(
            s("jitproxy:api-2 jitproxy:api"),
            Some(("jitproxy:api-2 S".into(), 1))
        );
        assert_eq!(
            s("jitproxy:apijitproxy:api"),
            Some(("jitproxy:apiS".into(), 1))
        );
        assert_eq!(s("jitproxy:apx"), None);
        assert!(has_marker(b"xxjijitproxy:".iter().copied()));
        assert!(!has_marker(b"jitproxy".iter().copied()));
    }

    #[test]
    fn a_placeholder_in_a_header_not_listed_is_refused_not_swapped() {
        // An API may echo Origin (CORS) or other headers back: the secret
        // must not be put where it would return to the client.
        let c = credential(Some("authorization"), "Bearer {secret}", &[]);
        let mut h = headers(&[("origin", "jitproxy:payments-api")]);
        let err = c.apply("payments-api", &mut h, "/").unwrap_err();
        assert!(!err.to_string().contains(SECRET), "{err}");
        assert!(h.get("origin").is_some_and(|v| !v
            .as_bytes()
            .windows(SECRET.len())
            .any(|w| w == SECRET.as_bytes())));
    }
}

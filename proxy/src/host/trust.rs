//! The host's trust stores: adding jitproxy's local CA to them and taking it
//! out again (`jitproxy ca install | uninstall`), and reading the CA back
//! (`jitproxy ca show | export`).
//!
//! Install touches, in this order: the Debian system store (a file in
//! `/usr/local/share/ca-certificates`, then `update-ca-certificates`, whose
//! hooks also feed Java's cacerts), the NSS databases of Chrome and Firefox
//! (through `certutil`, run as each database's owner), and
//! `/etc/profile.d/jitproxy-ca.sh` for runtimes that read only their own
//! variables. What it did is recorded in `<state_dir>/ca/installed.json`;
//! uninstall undoes exactly that, and re-running install redoes only what
//! is missing (or everything, once the CA was rotated).
//!
//! Those places are the host's, not the state dir's: two daemons with
//! different state dirs would share them. So the lock is host-wide
//! ([`TrustPaths::lock`]), and install refuses to replace a CA that another
//! state dir installed, naming that state dir.

use std::{
    ffi::{OsStr, OsString},
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::unix::{
        fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use x509_parser::{
    extensions::{GeneralName, GeneralSubtree},
    pem::Pem,
};

/// The CA's nickname in NSS databases.
pub const NSS_NICKNAME: &str = "jitproxy local CA";

/// The CA's file name in the system store's directory.
const SYSTEM_CA_FILE: &str = "jitproxy-local-ca.crt";
/// The file name in `/etc/profile.d`.
const PROFILE_FILE: &str = "jitproxy-ca.sh";
const PROFILE_HEADER: &str =
    "# Written by `jitproxy ca install`, removed by `jitproxy ca uninstall`.";
/// The profile line that names the state dir that installed it, so that
/// another state dir's install can say who to ask.
const PROFILE_STATE_DIR: &str = "# State dir: ";
/// Variables that replace a runtime's trust store with one file: they get
/// the system bundle (which then holds the CA), never the CA alone.
const BUNDLE_VARIABLES: [&str; 5] = [
    "REQUESTS_CA_BUNDLE",
    "SSL_CERT_FILE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
];
/// Where the commands run as root are looked for, and their `PATH`: fixed
/// directories, not the caller's `PATH`.
const COMMAND_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Larger files than this are not read (a system bundle is about 200 KiB).
const MAX_READ: u64 = 16 << 20;
const MANIFEST_VERSION: u32 = 1;

/// The local CA's directory in a state dir.
pub fn ca_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("ca")
}

/// The local CA's certificate (PEM, 0644).
pub fn ca_cert_path(state_dir: &Path) -> PathBuf {
    ca_dir(state_dir).join("ca.crt")
}

/// The local CA's private key (PEM, 0600).
pub fn ca_key_path(state_dir: &Path) -> PathBuf {
    ca_dir(state_dir).join("ca.key")
}

/// What `ca install` did, for `ca uninstall` (JSON, 0644).
pub fn manifest_path(state_dir: &Path) -> PathBuf {
    ca_dir(state_dir).join("installed.json")
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("no local CA yet: the daemon makes it when it starts with an inspect target (`mode = \"inspect\"`)")]
    NoCa { path: PathBuf },
    #[error("cannot read the local CA {}: {source}", path.display())]
    ReadCa {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a usable CA certificate: {reason}; the daemon writes a new one when it starts without one (move this one away)", path.display())]
    BadCa { path: PathBuf, reason: String },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {}: {reason}; it was not written by this version of jitproxy (or was edited): use the one that installed the CA, or move it away and check the trust stores by hand", path.display())]
    Manifest { path: PathBuf, reason: String },
    #[error("{} belongs to another jitproxy install{}{}; take that one out first{}",
        path.display(),
        owner.as_ref().map(|o| format!(" (state dir {o})")).unwrap_or_default(),
        fingerprint.as_ref().map(|f| format!(", whose CA has sha256 {f}")).unwrap_or_default(),
        match owner {
            Some(o) => format!(": `sudo jitproxy ca uninstall --state-dir {o}`"),
            None => String::from(" (or, if it is left over, delete it and run `sudo update-ca-certificates --fresh`)"),
        })]
    Foreign {
        path: PathBuf,
        fingerprint: Option<String>,
        owner: Option<String>,
    },
}

impl TrustError {
    /// Whether running as root would help.
    pub fn is_permission_denied(&self) -> bool {
        match self {
            Self::ReadCa { source, .. } | Self::Io { source, .. } => {
                source.kind() == io::ErrorKind::PermissionDenied
            }
            _ => false,
        }
    }
}

/// The places on the host that hold trust. [`TrustPaths::system`] are
/// Debian's; tests point them into a temporary directory.
#[derive(Debug, Clone)]
pub struct TrustPaths {
    /// Local CAs that `update-ca-certificates` adds to the system store.
    pub system_ca_dir: PathBuf,
    /// The bundle `update-ca-certificates` writes.
    pub system_bundle: PathBuf,
    /// `update-ca-certificates`, if installed.
    pub update_command: Option<PathBuf>,
    /// Its hooks (ca-certificates-java's `jks-keystore`), told `-FILE` and
    /// `+FILE` lines on stdin. It tells them only of certificates it adds:
    /// a removed or replaced local CA must be told by us, or Java's
    /// cacerts keeps trusting it.
    pub update_hooks_dir: PathBuf,
    /// Where login shells read `*.sh` from.
    pub profile_dir: PathBuf,
    /// The system bundle plus the CA, written only when the system bundle
    /// could not be made to hold the CA. Not in the state dir: that is
    /// root's alone (0700), and every user's programs must read this.
    pub fallback_bundle: PathBuf,
    /// The user database whose homes are searched for NSS databases.
    pub passwd: PathBuf,
    /// NSS databases shared by all users.
    pub nss_system_dbs: Vec<PathBuf>,
    /// `certutil` (Debian: libnss3-tools), if installed.
    pub certutil: Option<PathBuf>,
    /// Serializes installs and uninstalls of every state dir on the host.
    pub lock: PathBuf,
}

impl TrustPaths {
    /// Debian's places, and the commands found in the system directories.
    pub fn system() -> Self {
        Self {
            system_ca_dir: PathBuf::from("/usr/local/share/ca-certificates"),
            system_bundle: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            update_command: find_command("update-ca-certificates"),
            update_hooks_dir: PathBuf::from("/etc/ca-certificates/update.d"),
            profile_dir: PathBuf::from("/etc/profile.d"),
            fallback_bundle: PathBuf::from("/usr/local/share/jitproxy/ca-bundle.pem"),
            passwd: PathBuf::from("/etc/passwd"),
            nss_system_dbs: vec![PathBuf::from("/etc/pki/nssdb")],
            certutil: find_command("certutil"),
            lock: PathBuf::from("/run/jitproxy/ca-trust.lock"),
        }
    }

    /// Our file in the system store's directory.
    pub fn system_ca_file(&self) -> PathBuf {
        self.system_ca_dir.join(SYSTEM_CA_FILE)
    }

    /// Our file in `/etc/profile.d`.
    pub fn profile_file(&self) -> PathBuf {
        self.profile_dir.join(PROFILE_FILE)
    }
}

/// An executable `name` in [`COMMAND_PATH`].
pub fn find_command(name: &str) -> Option<PathBuf> {
    COMMAND_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|path| {
            fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The local CA's certificate, as read from the state dir.
#[derive(Debug, Clone)]
pub struct LocalCa {
    path: PathBuf,
    /// Just the certificate's PEM block: whatever else the file holds is
    /// never copied anywhere.
    pem: String,
    details: CaDetails,
}

/// What `ca show` tells about the CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaDetails {
    /// The subject's distinguished name (`CN=...`).
    pub subject: String,
    pub common_name: Option<String>,
    /// SHA-256 of the DER, upper-case hex with colons, as openssl prints it.
    pub fingerprint_sha256: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// `None`: no name constraints, so the CA could sign for any name.
    pub name_constraints: Option<NameConstraints>,
}

/// The X.509 name constraints: the names the CA may sign for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NameConstraints {
    pub critical: bool,
    pub permitted_dns: Vec<String>,
    /// CIDR ranges (`10.0.0.0/8`).
    pub permitted_ip: Vec<String>,
    pub excluded_dns: Vec<String>,
    pub excluded_ip: Vec<String>,
    /// Constraints of other kinds (e-mail, URI, directory names), as text.
    pub other: Vec<String>,
}

impl LocalCa {
    /// The CA in `state_dir`.
    pub fn load(state_dir: &Path) -> Result<Self, TrustError> {
        let path = ca_cert_path(state_dir);
        match read_no_follow(&path) {
            Ok(bytes) => Self::from_pem(&path, &bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(TrustError::NoCa { path }),
            Err(source) => Err(TrustError::ReadCa { path, source }),
        }
    }

    /// The first certificate in `bytes` (PEM), which must be a CA's; `path`
    /// names it in errors.
    pub fn from_pem(path: &Path, bytes: &[u8]) -> Result<Self, TrustError> {
        let bad = |reason: String| TrustError::BadCa {
            path: path.to_owned(),
            reason,
        };
        let text = String::from_utf8_lossy(bytes);
        let pem =
            certificate_block(&text).ok_or_else(|| bad("no `BEGIN CERTIFICATE` block".into()))?;
        let (block, _) =
            Pem::read(io::Cursor::new(pem.as_bytes())).map_err(|e| bad(format!("bad PEM: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&block.contents)
            .map_err(|e| bad(format!("bad certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(bad("it is not a CA (no basicConstraints CA:TRUE)".into()));
        }
        let validity = cert.validity();
        let time = |t: &x509_parser::time::ASN1Time| {
            Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::MAX)
        };
        let name_constraints = cert
            .name_constraints()
            .map_err(|e| bad(format!("bad name constraints: {e}")))?
            .map(|ext| {
                let mut nc = NameConstraints {
                    critical: ext.critical,
                    ..NameConstraints::default()
                };
                let (dns, ip, other) = sort_subtrees(ext.value.permitted_subtrees.as_deref());
                (nc.permitted_dns, nc.permitted_ip, nc.other) = (dns, ip, other);
                let (dns, ip, other) = sort_subtrees(ext.value.excluded_subtrees.as_deref());
                (nc.excluded_dns, nc.excluded_ip) = (dns, ip);
                nc.other
                    .extend(other.into_iter().map(|o| format!("excluded {o}")));
                nc
            });
        let details = CaDetails {
            subject: cert.subject().to_string(),
            common_name: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            fingerprint_sha256: fingerprint(&block.contents),
            not_before: time(&validity.not_before),
            not_after: time(&validity.not_after),
            name_constraints,
        };
        Ok(Self {
            path: path.to_owned(),
            pem,
            details,
        })
    }

    /// Where it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The certificate, PEM (never the key).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn details(&self) -> &CaDetails {
        &self.details
    }

    pub fn fingerprint(&self) -> &str {
        &self.details.fingerprint_sha256
    }

    /// Writes the PEM to `path` (0644), atomically, not through a link.
    pub fn export(&self, path: &Path) -> Result<(), TrustError> {
        write_atomic(path, self.pem.as_bytes(), 0o644).map_err(|source| TrustError::Io {
            action: "write",
            path: path.to_owned(),
            source,
        })
    }
}

/// What `ca install` did: read by `ca show` and undone by `ca uninstall`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    /// The state dir whose CA this is.
    pub state_dir: PathBuf,
    /// SHA-256 of the CA in [`Manifest::system_ca`].
    pub fingerprint: String,
    pub installed_at: Timestamp,
    /// Our file in the system store's directory.
    pub system_ca: Option<PathBuf>,
    /// The system bundle that `update-ca-certificates` made hold the CA.
    pub system_bundle: Option<PathBuf>,
    /// NSS databases the CA was added to.
    pub nss: Vec<NssEntry>,
    /// Our file in `/etc/profile.d`.
    pub profile: Option<PathBuf>,
    /// The fallback bundle (system bundle plus the CA), if one was needed.
    pub bundle: Option<PathBuf>,
}

/// An NSS database holding the CA, and whose it is: `certutil` runs as
/// its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NssEntry {
    pub dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// SHA-256 of the CA added (differs from the manifest's after a rotate
    /// whose reinstall could not take the old one out).
    pub fingerprint: String,
}

impl Manifest {
    fn new(state_dir: &Path, fingerprint: &str) -> Self {
        Self {
            version: MANIFEST_VERSION,
            state_dir: state_dir.to_owned(),
            fingerprint: fingerprint.to_owned(),
            installed_at: Timestamp::now(),
            system_ca: None,
            system_bundle: None,
            nss: Vec::new(),
            profile: None,
            bundle: None,
        }
    }

    /// Whether nothing is left to undo.
    fn is_empty(&self) -> bool {
        self.system_ca.is_none()
            && self.nss.is_empty()
            && self.profile.is_none()
            && self.bundle.is_none()
    }
}

/// What install or uninstall did and could not do, in order.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub outcome: Outcome,
    pub what: String,
    /// What the operator can do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Changed the host.
    Done,
    /// Already as it should be.
    Unchanged,
    /// Not done, and not an error: a tool or a place this host lacks.
    Skipped,
    /// Tried and failed; run again after the fix.
    Failed,
}

impl Report {
    pub fn failures(&self) -> usize {
        self.count(Outcome::Failed)
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.steps.iter().filter(|s| s.outcome == outcome).count()
    }

    fn push(&mut self, outcome: Outcome, what: String, fix: Option<String>) {
        self.steps.push(Step { outcome, what, fix });
    }
}

/// What `ca install` recorded for `state_dir`, if it ran.
pub fn installed(state_dir: &Path) -> Result<Option<Manifest>, TrustError> {
    read_manifest(&manifest_path(state_dir))
}

/// Makes the host trust the CA of `state_dir`. Errors only when it could
/// not start (no CA, another install's CA in the way, no lock, no
/// manifest); a step that failed is in the report.
pub fn install(state_dir: &Path, paths: &TrustPaths) -> Result<Report, TrustError> {
    let ca = LocalCa::load(state_dir)?;
    let _lock = lock(&paths.lock)?;
    let manifest_path = manifest_path(state_dir);
    let previous = read_manifest(&manifest_path)?;
    refuse_foreign(&ca, previous.as_ref(), state_dir, paths)?;
    let mut install = Install {
        manifest: previous.unwrap_or_else(|| Manifest::new(state_dir, ca.fingerprint())),
        manifest_path,
        ca: &ca,
        paths,
        state_dir,
        report: Report::default(),
        system_trusts: false,
    };
    install.manifest.installed_at = Timestamp::now();
    install.system_store()?;
    install.nss()?;
    install.environment()?;
    Ok(install.report)
}

/// Takes the CA of `state_dir` out of what its manifest lists; `None`
/// when it was not installed. A manifest is kept with what could not be
/// undone, so that running it again finishes the job.
pub fn uninstall(state_dir: &Path, paths: &TrustPaths) -> Result<Option<Report>, TrustError> {
    let _lock = lock(&paths.lock)?;
    let manifest_path = manifest_path(state_dir);
    let Some(mut manifest) = read_manifest(&manifest_path)? else {
        return Ok(None);
    };
    let mut report = Report::default();
    uninstall_nss(&mut manifest, paths, &mut report);
    save_manifest(&manifest_path, &manifest)?;
    uninstall_system(&mut manifest, paths, &mut report);
    save_manifest(&manifest_path, &manifest)?;
    if let Some(profile) = manifest.profile.take() {
        match read_no_follow(&profile) {
            Ok(text) if !String::from_utf8_lossy(&text).contains(PROFILE_HEADER) => {
                report.push(
                    Outcome::Skipped,
                    format!(
                        "{} was not written by jitproxy; left alone",
                        profile.display()
                    ),
                    None,
                );
            }
            _ => remove_file(&profile, &mut report, &mut manifest.profile),
        }
    }
    if let Some(bundle) = manifest.bundle.take() {
        remove_file(&bundle, &mut report, &mut manifest.bundle);
        if manifest.bundle.is_none() {
            // Ours unless something else moved in; then it stays.
            if let Some(dir) = bundle.parent() {
                let _ = fs::remove_dir(dir);
            }
        }
    }
    if manifest.is_empty() {
        fs::remove_file(&manifest_path).map_err(|source| TrustError::Io {
            action: "remove",
            path: manifest_path.clone(),
            source,
        })?;
    } else {
        save_manifest(&manifest_path, &manifest)?;
    }
    Ok(Some(report))
}

/// One run of `ca install`: each step updates the manifest and saves it,
/// so an install cut short can still be undone.
struct Install<'a> {
    ca: &'a LocalCa,
    paths: &'a TrustPaths,
    state_dir: &'a Path,
    manifest: Manifest,
    manifest_path: PathBuf,
    report: Report,
    /// The system bundle holds the CA (so the profile can point at it).
    system_trusts: bool,
}

impl Install<'_> {
    /// Our file in the system store's directory, and `update-ca-certificates`.
    fn system_store(&mut self) -> Result<(), TrustError> {
        let target = self.paths.system_ca_file();
        let pem = self.ca.pem.as_bytes();
        // Another CA in its place (a rotate): the links and hooks need more.
        let replacing = fs::symlink_metadata(&target).is_ok();
        let written = ensure_dir(&self.paths.system_ca_dir)
            .and_then(|()| write_if_changed(&target, pem, 0o644));
        let changed = match written {
            Ok(changed) => {
                self.manifest.system_ca = Some(target.clone());
                self.manifest.fingerprint = self.ca.fingerprint().to_owned();
                self.save()?;
                let what = if changed {
                    format!(
                        "put the CA in the system store's directory ({})",
                        target.display()
                    )
                } else {
                    format!("the CA is already in {}", target.display())
                };
                self.report.push(done_or_unchanged(changed), what, None);
                changed
            }
            Err(e) => {
                self.report.push(
                    Outcome::Failed,
                    format!("cannot write {}: {e}", target.display()),
                    Some("fix the directory and run `sudo jitproxy ca install` again".into()),
                );
                return Ok(());
            }
        };
        let bundle = &self.paths.system_bundle;
        let Some(update) = &self.paths.update_command else {
            self.report.push(
                Outcome::Skipped,
                "update-ca-certificates not found: the system store (openssl, curl, Python, Go, ...) does not trust the CA yet".into(),
                Some(format!("install the ca-certificates package (it picks up {}), then run `sudo jitproxy ca install` again", target.display())),
            );
            return Ok(());
        };
        let fingerprint = self.ca.fingerprint();
        if !changed && bundle_has(bundle, fingerprint) {
            self.system_trusts = true;
            self.manifest.system_bundle = Some(bundle.clone());
            self.report.push(
                Outcome::Unchanged,
                format!("{} already holds the CA", bundle.display()),
                None,
            );
            return Ok(());
        }
        // A replaced file keeps its name, so update-ca-certificates sees
        // nothing new: `--fresh` redoes the links (and their subject
        // hashes), and the hooks are told the old one went and a new came.
        let args: &[&OsStr] = if replacing {
            &[OsStr::new("--fresh")]
        } else {
            &[]
        };
        match run_command(update, args, None, None) {
            Ok(ran) if ran.ok && bundle_has(bundle, fingerprint) => {
                self.system_trusts = true;
                self.manifest.system_bundle = Some(bundle.clone());
                self.save()?;
                self.report.push(
                    Outcome::Done,
                    format!(
                        "ran update-ca-certificates{} ({:.1} s): {} holds the CA (so does Java's cacerts where ca-certificates-java is installed)",
                        if replacing { " --fresh" } else { "" },
                        ran.took.as_secs_f64(),
                        bundle.display()
                    ),
                    None,
                );
                if replacing {
                    let link = system_link(bundle, &target);
                    let lines = format!("-{}\n+{}\n", link.display(), link.display());
                    let _ = tell_hooks(self.paths, &lines, "the CA was replaced", &mut self.report);
                }
            }
            Ok(ran) if ran.ok => self.report.push(
                Outcome::Failed,
                format!(
                    "update-ca-certificates ran but {} does not hold the CA",
                    bundle.display()
                ),
                Some("run `sudo update-ca-certificates --verbose` to see why".into()),
            ),
            Ok(ran) => self.report.push(
                Outcome::Failed,
                format!(
                    "update-ca-certificates failed ({}): {}",
                    ran.status, ran.output
                ),
                Some("fix what it says, then run `sudo jitproxy ca install` again".into()),
            ),
            Err(e) => self.report.push(
                Outcome::Failed,
                format!("cannot run {}: {e}", update.display()),
                None,
            ),
        }
        Ok(())
    }

    /// The NSS databases of Chrome and Firefox: first the old CA out of
    /// those that have another (a rotate), then ours into each that lacks it.
    fn nss(&mut self) -> Result<(), TrustError> {
        let found = find_nss_databases(self.paths, &mut self.report);
        let fingerprint = self.ca.fingerprint().to_owned();
        // Databases removed since the last install need nothing.
        self.manifest.nss.retain(|entry| entry.dir.is_dir());
        let pending: Vec<NssDb> = found
            .into_iter()
            .filter(|db| {
                !self
                    .manifest
                    .nss
                    .iter()
                    .any(|e| e.dir == db.dir && e.fingerprint == fingerprint)
            })
            .collect();
        let stale = self
            .manifest
            .nss
            .iter()
            .filter(|e| e.fingerprint != fingerprint)
            .count();
        let current = self.manifest.nss.len() - stale;
        if current > 0 {
            self.report.push(
                Outcome::Unchanged,
                format!("{current} NSS database(s) already hold the CA"),
                None,
            );
        }
        let Some(certutil) = self.paths.certutil.clone() else {
            if pending.is_empty() && stale == 0 {
                return Ok(());
            }
            self.report.push(
                Outcome::Skipped,
                format!(
                    "certutil not found: {} NSS database(s) (Chrome, Firefox) do not trust the CA",
                    pending.len()
                ),
                Some(format!(
                    "install libnss3-tools to add the CA to {} NSS databases (Chrome/Firefox), then run `sudo jitproxy ca install` again",
                    pending.len()
                )),
            );
            return Ok(());
        };
        let mut kept = Vec::new();
        for entry in std::mem::take(&mut self.manifest.nss) {
            if entry.fingerprint == fingerprint {
                kept.push(entry);
                continue;
            }
            let db = NssDb::from(&entry);
            match nss_remove(&certutil, &db) {
                Ok(()) => self.report.push(
                    Outcome::Done,
                    format!(
                        "took the previous CA out of NSS database {}",
                        db.dir.display()
                    ),
                    None,
                ),
                Err(e) => {
                    self.report.push(
                        Outcome::Failed,
                        format!(
                            "cannot take the previous CA out of NSS database {}: {e}",
                            db.dir.display()
                        ),
                        Some(format!(
                            "remove it by hand: certutil -d sql:{} -D -n '{NSS_NICKNAME}'",
                            db.dir.display()
                        )),
                    );
                    kept.push(entry);
                }
            }
        }
        self.manifest.nss = kept;
        self.save()?;
        for db in pending {
            // A database whose old CA could not be taken out keeps its entry.
            match nss_add(&certutil, &db, self.ca.pem.as_bytes()) {
                Ok(()) => {
                    self.manifest.nss.retain(|e| e.dir != db.dir);
                    self.manifest.nss.push(db.entry(&fingerprint));
                    self.save()?;
                    self.report.push(
                        Outcome::Done,
                        format!(
                            "added the CA to NSS database {} (restart Chrome or Firefox to use it)",
                            db.dir.display()
                        ),
                        None,
                    );
                }
                Err(e) => self.report.push(
                    Outcome::Failed,
                    format!(
                        "cannot add the CA to NSS database {}: {e}",
                        db.dir.display()
                    ),
                    Some(
                        "close the browser that uses it, then run `sudo jitproxy ca install` again"
                            .into(),
                    ),
                ),
            }
        }
        Ok(())
    }

    /// The fallback bundle if needed, and `/etc/profile.d/jitproxy-ca.sh`.
    fn environment(&mut self) -> Result<(), TrustError> {
        let bundle = if self.system_trusts {
            if let Some(old) = self.manifest.bundle.clone() {
                remove_file(&old, &mut self.report, &mut self.manifest.bundle);
                self.save()?;
            }
            Some(self.paths.system_bundle.clone())
        } else {
            self.fallback_bundle()?
        };
        let node = self
            .manifest
            .system_ca
            .clone()
            .filter(|path| path.is_file());
        if bundle.is_none() && node.is_none() {
            return Ok(());
        }
        let profile = self.paths.profile_file();
        if !self.paths.profile_dir.is_dir() {
            self.report.push(
                Outcome::Skipped,
                format!(
                    "no {}: login shells do not get NODE_EXTRA_CA_CERTS, SSL_CERT_FILE and the like",
                    self.paths.profile_dir.display()
                ),
                Some("set them where your shells or services get their environment".into()),
            );
            return Ok(());
        }
        let text = profile_text(
            self.state_dir,
            self.ca.fingerprint(),
            node.as_deref(),
            bundle.as_deref(),
        );
        match write_if_changed(&profile, text.as_bytes(), 0o644) {
            Ok(changed) => {
                self.manifest.profile = Some(profile.clone());
                self.save()?;
                let mut names = Vec::new();
                if node.is_some() {
                    names.push("NODE_EXTRA_CA_CERTS");
                }
                if bundle.is_some() {
                    names.extend(BUNDLE_VARIABLES);
                }
                let what = if changed {
                    format!(
                        "wrote {}: new login shells set {} (log in again, or `. {}`)",
                        profile.display(),
                        names.join(", "),
                        profile.display()
                    )
                } else {
                    format!("{} is up to date", profile.display())
                };
                self.report.push(done_or_unchanged(changed), what, None);
            }
            Err(e) => self.report.push(
                Outcome::Failed,
                format!("cannot write {}: {e}", profile.display()),
                None,
            ),
        }
        Ok(())
    }

    /// The system bundle plus the CA, in [`TrustPaths::fallback_bundle`],
    /// for when `update-ca-certificates` did not put the CA in the system
    /// bundle. `None` without a system bundle: the CA alone must never
    /// replace a runtime's trust store.
    fn fallback_bundle(&mut self) -> Result<Option<PathBuf>, TrustError> {
        let system = &self.paths.system_bundle;
        let Ok(mut contents) = read_no_follow(system) else {
            self.report.push(
                Outcome::Skipped,
                format!(
                    "no system bundle at {}: {} are not set, as the CA alone would replace all other roots",
                    system.display(),
                    BUNDLE_VARIABLES.join(", ")
                ),
                Some("install the ca-certificates package, then run `sudo jitproxy ca install` again".into()),
            );
            return Ok(None);
        };
        if !contents.ends_with(b"\n") && !contents.is_empty() {
            contents.push(b'\n');
        }
        contents.extend_from_slice(self.ca.pem.as_bytes());
        let path = self.paths.fallback_bundle.clone();
        let written = path
            .parent()
            .map_or(Ok(()), ensure_dir)
            .and_then(|()| write_if_changed(&path, &contents, 0o644));
        match written {
            Ok(changed) => {
                self.manifest.bundle = Some(path.clone());
                self.save()?;
                let what = if changed {
                    format!("wrote {}: the system bundle plus the CA", path.display())
                } else {
                    format!("{} is up to date", path.display())
                };
                self.report.push(done_or_unchanged(changed), what, None);
                Ok(Some(path))
            }
            Err(e) => {
                self.report.push(
                    Outcome::Failed,
                    format!("cannot write {}: {e}", path.display()),
                    None,
                );
                Ok(None)
            }
        }
    }

    fn save(&self) -> Result<(), TrustError> {
        save_manifest(&self.manifest_path, &self.manifest)
    }
}

/// Takes the CA out of the manifest's NSS databases; those it could not
/// stay in the manifest.
fn uninstall_nss(manifest: &mut Manifest, paths: &TrustPaths, report: &mut Report) {
    let mut left = Vec::new();
    for entry in std::mem::take(&mut manifest.nss) {
        let db = NssDb::from(&entry);
        if !db.dir.is_dir() {
            report.push(
                Outcome::Unchanged,
                format!("NSS database {} is gone", db.dir.display()),
                None,
            );
            continue;
        }
        let Some(certutil) = &paths.certutil else {
            report.push(
                Outcome::Failed,
                format!("certutil not found: cannot take the CA out of NSS database {}", db.dir.display()),
                Some(format!(
                    "install libnss3-tools and run `sudo jitproxy ca uninstall` again, or run certutil -d sql:{} -D -n '{NSS_NICKNAME}' elsewhere",
                    db.dir.display()
                )),
            );
            left.push(entry);
            continue;
        };
        match nss_remove(certutil, &db) {
            Ok(()) => report.push(
                Outcome::Done,
                format!("took the CA out of NSS database {}", db.dir.display()),
                None,
            ),
            Err(e) => {
                report.push(
                    Outcome::Failed,
                    format!("cannot take the CA out of NSS database {}: {e}", db.dir.display()),
                    Some("close the browser that uses it, then run `sudo jitproxy ca uninstall` again".into()),
                );
                left.push(entry);
            }
        }
    }
    manifest.nss = left;
}

/// Removes our file from the system store's directory and rebuilds the
/// store. `--fresh`: a plain run, having nothing to add, leaves the
/// links to the removed file in /etc/ssl/certs. Neither tells the hooks
/// (Java's keystore), so we do.
fn uninstall_system(manifest: &mut Manifest, paths: &TrustPaths, report: &mut Report) {
    let Some(file) = manifest.system_ca.clone() else {
        return;
    };
    match read_no_follow(&file) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Ok(bytes)
            if LocalCa::from_pem(&file, &bytes)
                .is_ok_and(|ca| ca.fingerprint() != manifest.fingerprint) =>
        {
            report.push(
                Outcome::Skipped,
                format!("{} holds another CA now; left alone", file.display()),
                None,
            );
            manifest.system_ca = None;
            manifest.system_bundle = None;
            return;
        }
        _ => match fs::remove_file(&file) {
            Ok(()) => report.push(Outcome::Done, format!("removed {}", file.display()), None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                report.push(
                    Outcome::Failed,
                    format!("cannot remove {}: {e}", file.display()),
                    None,
                );
                return;
            }
        },
    }
    let Some(update) = &paths.update_command else {
        report.push(
            Outcome::Skipped,
            "update-ca-certificates not found: no system store to rebuild".into(),
            None,
        );
        manifest.system_ca = None;
        manifest.system_bundle = None;
        return;
    };
    let bundle = manifest
        .system_bundle
        .clone()
        .unwrap_or_else(|| paths.system_bundle.clone());
    match run_command(update, &[OsStr::new("--fresh")], None, None) {
        Ok(ran) if ran.ok && !bundle_has(&bundle, &manifest.fingerprint) => {
            report.push(
                Outcome::Done,
                format!(
                    "ran update-ca-certificates --fresh ({:.1} s): {} no longer holds the CA",
                    ran.took.as_secs_f64(),
                    bundle.display()
                ),
                None,
            );
            let link = system_link(&bundle, &file);
            let lines = format!("-{}\n", link.display());
            // Kept in the manifest until the hooks know: running uninstall
            // again tells them.
            if tell_hooks(paths, &lines, "the CA is gone", report) {
                manifest.system_ca = None;
                manifest.system_bundle = None;
            }
        }
        Ok(ran) if ran.ok => report.push(
            Outcome::Failed,
            format!(
                "update-ca-certificates ran but {} still holds the CA",
                bundle.display()
            ),
            Some("run `sudo update-ca-certificates --fresh --verbose` to see why".into()),
        ),
        Ok(ran) => report.push(
            Outcome::Failed,
            format!(
                "update-ca-certificates failed ({}): {}",
                ran.status, ran.output
            ),
            Some("fix what it says, then run `sudo jitproxy ca uninstall` again".into()),
        ),
        Err(e) => report.push(
            Outcome::Failed,
            format!("cannot run {}: {e}", update.display()),
            None,
        ),
    }
}

/// The link update-ca-certificates makes to `ca_file` beside `bundle`
/// (`/etc/ssl/certs/NAME.pem`), which its hooks are told of.
fn system_link(bundle: &Path, ca_file: &Path) -> PathBuf {
    let mut name = ca_file.file_stem().unwrap_or_default().to_owned();
    name.push(".pem");
    bundle.parent().unwrap_or(Path::new("/")).join(name)
}

/// Runs each hook of update-ca-certificates (as run-parts would pick
/// them) with `lines` on stdin, as update-ca-certificates does; whether
/// they all succeeded.
fn tell_hooks(paths: &TrustPaths, lines: &str, news: &str, report: &mut Report) -> bool {
    let Ok(entries) = fs::read_dir(&paths.update_hooks_dir) else {
        return true;
    };
    let mut hooks: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
        .map(|e| e.path())
        .filter(|p| {
            fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .collect();
    hooks.sort();
    let mut all_ok = true;
    for hook in hooks {
        match run_command(&hook, &[], None, Some(lines.as_bytes())) {
            Ok(ran) if ran.ok => report.push(
                Outcome::Done,
                format!(
                    "told update-ca-certificates' hook {} that {news} (for Java's cacerts)",
                    hook.display()
                ),
                None,
            ),
            Ok(ran) => {
                all_ok = false;
                // ca-certificates-java queues the change before it asks
                // dpkg to apply it, which fails while apt or dpkg runs.
                let fix = if ran.output.contains("lock") {
                    String::from("another apt or dpkg is running: when it is done, run `sudo dpkg --triggers-only --pending`")
                } else {
                    format!(
                        "run `printf '%s\\n' {} | sudo {}`",
                        lines.lines().collect::<Vec<_>>().join(" "),
                        hook.display()
                    )
                };
                report.push(
                    Outcome::Failed,
                    format!(
                        "update-ca-certificates' hook {} failed ({}): {}",
                        hook.display(),
                        ran.status,
                        ran.output
                    ),
                    Some(fix),
                );
            }
            Err(e) => {
                all_ok = false;
                report.push(
                    Outcome::Failed,
                    format!("cannot run {}: {e}", hook.display()),
                    None,
                );
            }
        }
    }
    all_ok
}

/// Refuses to go on when the system store's file or the profile file is
/// another install's (another state dir's: both use the same paths). The
/// same CA without a manifest (lost) is taken as ours.
fn refuse_foreign(
    ca: &LocalCa,
    previous: Option<&Manifest>,
    state_dir: &Path,
    paths: &TrustPaths,
) -> Result<(), TrustError> {
    let profile = paths.profile_file();
    let owner = profile_owner(&profile);
    let ours = quoted(state_dir);
    let target = paths.system_ca_file();
    if previous.and_then(|m| m.system_ca.as_deref()) != Some(target.as_path()) {
        match read_no_follow(&target) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Ok(bytes) => {
                let theirs = LocalCa::from_pem(&target, &bytes).ok();
                if theirs.as_ref().map(LocalCa::fingerprint) != Some(ca.fingerprint()) {
                    return Err(TrustError::Foreign {
                        path: target,
                        fingerprint: theirs.map(|c| c.fingerprint().to_owned()),
                        owner: owner.filter(|o| *o != ours),
                    });
                }
            }
            Err(source) => {
                return Err(TrustError::Io {
                    action: "read",
                    path: target,
                    source,
                })
            }
        }
    }
    let listed = previous.and_then(|m| m.profile.as_deref()) == Some(profile.as_path());
    let exists = fs::symlink_metadata(&profile).is_ok();
    if !listed && exists && owner.as_deref() != Some(ours.as_str()) {
        return Err(TrustError::Foreign {
            path: profile,
            fingerprint: None,
            owner,
        });
    }
    Ok(())
}

/// The state dir named in a profile file we wrote (as [`quoted`] writes it).
fn profile_owner(profile: &Path) -> Option<String> {
    let text = read_no_follow(profile).ok()?;
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|line| line.strip_prefix(PROFILE_STATE_DIR))
        .map(str::to_owned)
}

/// `/etc/profile.d/jitproxy-ca.sh`: NODE_EXTRA_CA_CERTS adds `node_ca` to
/// Node's roots; the others replace a runtime's roots with `bundle`.
fn profile_text(
    state_dir: &Path,
    fingerprint: &str,
    node_ca: Option<&Path>,
    bundle: Option<&Path>,
) -> String {
    let mut text = format!(
        "{PROFILE_HEADER}\n\
         # It makes runtimes that ignore the system trust store trust jitproxy's\n\
         # local CA (sha256 {fingerprint}).\n\
         {PROFILE_STATE_DIR}{}\n",
        quoted(state_dir)
    );
    if let Some(ca) = node_ca {
        text += &format!("export NODE_EXTRA_CA_CERTS={}\n", shell_quote(ca));
    }
    if let Some(bundle) = bundle {
        for name in BUNDLE_VARIABLES {
            text += &format!("export {name}={}\n", shell_quote(bundle));
        }
    }
    text
}

/// A path as one line of text, unambiguous (Rust string syntax).
fn quoted(path: &Path) -> String {
    format!("{:?}", path.to_string_lossy())
}

/// `path` as one shell word.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

/// An NSS database to add the CA to, and who owns it.
#[derive(Debug, Clone)]
struct NssDb {
    dir: PathBuf,
    uid: u32,
    gid: u32,
}

impl NssDb {
    fn entry(&self, fingerprint: &str) -> NssEntry {
        NssEntry {
            dir: self.dir.clone(),
            uid: self.uid,
            gid: self.gid,
            fingerprint: fingerprint.to_owned(),
        }
    }
}

impl From<&NssEntry> for NssDb {
    fn from(entry: &NssEntry) -> Self {
        Self {
            dir: entry.dir.clone(),
            uid: entry.uid,
            gid: entry.gid,
        }
    }
}

/// The shared NSS databases, then each user's `~/.pki/nssdb` and Firefox
/// profiles (those with a `cert9.db`: the SQL format). A database in a
/// home must belong to that home's user, as it is changed as that user:
/// a link to someone else's is skipped (noted in `report`).
fn find_nss_databases(paths: &TrustPaths, report: &mut Report) -> Vec<NssDb> {
    let mut found: Vec<NssDb> = Vec::new();
    let mut seen = Vec::new();
    let mut add = |db: NssDb| {
        let key = fs::canonicalize(&db.dir).unwrap_or_else(|_| db.dir.clone());
        if !seen.contains(&key) {
            seen.push(key);
            found.push(db);
        }
    };
    for dir in &paths.nss_system_dbs {
        if let Some(meta) = nss_db_meta(dir) {
            add(NssDb {
                dir: dir.clone(),
                uid: meta.uid(),
                gid: meta.gid(),
            });
        }
    }
    for (name, uid, gid, home) in homes(&paths.passwd) {
        let mut candidates = vec![home.join(".pki/nssdb")];
        for firefox in [".mozilla/firefox", "snap/firefox/common/.mozilla/firefox"] {
            let Ok(entries) = fs::read_dir(home.join(firefox)) else {
                continue;
            };
            let mut profiles: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            profiles.sort();
            candidates.extend(profiles);
        }
        for dir in candidates {
            let Some(meta) = nss_db_meta(&dir) else {
                continue;
            };
            if meta.uid() == uid {
                add(NssDb { dir, uid, gid });
            } else {
                report.push(
                    Outcome::Skipped,
                    format!(
                        "NSS database {} is not {name}'s (uid {}); left alone",
                        dir.display(),
                        meta.uid()
                    ),
                    None,
                );
            }
        }
    }
    found
}

/// The metadata of `dir` if it is an NSS database in the SQL format.
fn nss_db_meta(dir: &Path) -> Option<fs::Metadata> {
    let meta = fs::metadata(dir).ok().filter(fs::Metadata::is_dir)?;
    fs::metadata(dir.join("cert9.db"))
        .is_ok_and(|m| m.is_file())
        .then_some(meta)
}

/// The users of `passwd` with an existing home: name, uid, gid, home.
/// Homes shared by several users (`/`, `/nonexistent`) count once.
fn homes(passwd: &Path) -> Vec<(String, u32, u32, PathBuf)> {
    let Ok(bytes) = read_no_follow(passwd) else {
        return Vec::new();
    };
    let mut users = Vec::new();
    let mut seen = Vec::new();
    for line in String::from_utf8_lossy(&bytes).lines() {
        let fields: Vec<&str> = line.split(':').collect();
        let [name, _, uid, gid, _, home, ..] = fields[..] else {
            continue;
        };
        let (Ok(uid), Ok(gid)) = (uid.parse(), gid.parse()) else {
            continue;
        };
        let home = PathBuf::from(home);
        if home.is_absolute() && home != Path::new("/") && home.is_dir() && !seen.contains(&home) {
            seen.push(home.clone());
            users.push((name.to_owned(), uid, gid, home));
        }
    }
    users
}

/// Adds the CA to `db` (after taking out any copy of it, or of an older
/// one, under our nickname).
fn nss_add(certutil: &Path, db: &NssDb, pem: &[u8]) -> Result<(), String> {
    let _ = nss_remove(certutil, db);
    let dir = nss_dir_arg(&db.dir);
    let args = [
        OsStr::new("-d"),
        &dir,
        OsStr::new("-A"),
        OsStr::new("-t"),
        OsStr::new("C,,"),
        OsStr::new("-n"),
        OsStr::new(NSS_NICKNAME),
        OsStr::new("-a"),
    ];
    let ran = run_command(certutil, &args, Some((db.uid, db.gid)), Some(pem))
        .map_err(|e| format!("cannot run certutil: {e}"))?;
    if ran.ok {
        Ok(())
    } else {
        Err(format!("certutil failed ({}): {}", ran.status, ran.output))
    }
}

/// Takes every certificate under our nickname out of `db`.
fn nss_remove(certutil: &Path, db: &NssDb) -> Result<(), String> {
    let dir = nss_dir_arg(&db.dir);
    let owner = Some((db.uid, db.gid));
    let run = |op: &str| {
        let args = [
            OsStr::new("-d"),
            &dir,
            OsStr::new(op),
            OsStr::new("-n"),
            OsStr::new(NSS_NICKNAME),
        ];
        run_command(certutil, &args, owner, None).map_err(|e| format!("cannot run certutil: {e}"))
    };
    // One certificate per run; a database holds one per CA rotated into it.
    let mut last = None;
    for _ in 0..8 {
        let ran = run("-D")?;
        if !ran.ok {
            last = Some(ran);
            break;
        }
    }
    if run("-L")?.ok {
        let why = last.map_or_else(|| String::from("too many copies"), |r| r.output);
        return Err(format!("certutil -D left it there: {why}"));
    }
    Ok(())
}

fn nss_dir_arg(dir: &Path) -> OsString {
    let mut arg = OsString::from("sql:");
    arg.push(dir);
    arg
}

/// How a command ended.
struct Ran {
    ok: bool,
    status: String,
    /// The last lines of its stdout and stderr, on one line.
    output: String,
    took: Duration,
}

/// Runs `program` with a fixed `PATH`, in `/`, as `owner` (uid, gid) if
/// given, feeding it `stdin`.
fn run_command(
    program: &Path,
    args: &[&OsStr],
    owner: Option<(u32, u32)>,
    stdin: Option<&[u8]>,
) -> io::Result<Ran> {
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", COMMAND_PATH)
        .env("LC_ALL", "C")
        .current_dir("/")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((uid, gid)) = owner {
        // As root, std also drops the supplementary groups.
        if uid != nix::unistd::geteuid().as_raw() || gid != nix::unistd::getegid().as_raw() {
            command.uid(uid).gid(gid);
        }
    }
    let started = Instant::now();
    let mut child = spawn(&mut command)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Small (a certificate): it fits the pipe, so this cannot block
        // on a child that writes before it reads.
        let _ = pipe.write_all(input);
    }
    let output = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    Ok(Ran {
        ok: output.status.success(),
        status: output.status.to_string(),
        output: lines[lines.len().saturating_sub(3)..].join(" / "),
        took: started.elapsed(),
    })
}

/// Spawns, retrying while the program is busy (ETXTBSY: another thread's
/// child still held it open for writing between its fork and its exec).
fn spawn(command: &mut Command) -> io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::yield_now();
            }
            other => return other,
        }
    }
}

/// Whether the PEM bundle at `path` holds a certificate with `fingerprint`.
fn bundle_has(path: &Path, fingerprint: &str) -> bool {
    let Ok(bytes) = read_no_follow(path) else {
        return false;
    };
    Pem::iter_from_buffer(&bytes)
        .take(100_000)
        .flatten()
        .any(|pem| pem.label == "CERTIFICATE" && self::fingerprint(&pem.contents) == fingerprint)
}

/// SHA-256, upper-case hex with colons (`AB:CD:...`), as openssl prints.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The first `BEGIN CERTIFICATE` ... `END CERTIFICATE` block, with its
/// lines, ending in a newline.
fn certificate_block(text: &str) -> Option<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = text.find(BEGIN)?;
    let end = start + text[start..].find(END)? + END.len();
    Some(format!("{}\n", &text[start..end]))
}

/// DNS names, IP ranges and the rest of name-constraint subtrees.
fn sort_subtrees(
    subtrees: Option<&[GeneralSubtree<'_>]>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut dns, mut ip, mut other) = (Vec::new(), Vec::new(), Vec::new());
    for subtree in subtrees.unwrap_or_default() {
        match &subtree.base {
            GeneralName::DNSName(name) => dns.push((*name).to_owned()),
            GeneralName::IPAddress(bytes) => ip.push(ip_range(bytes)),
            name => other.push(name.to_string()),
        }
    }
    (dns, ip, other)
}

/// An address and mask (RFC 5280 4.2.1.10) as CIDR, or as `addr/mask`
/// when the mask is not a prefix.
fn ip_range(bytes: &[u8]) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let (addr, mask): (IpAddr, &[u8]) = match bytes.len() {
        8 => {
            let a: [u8; 4] = bytes[..4].try_into().unwrap_or_default();
            (Ipv4Addr::from(a).into(), &bytes[4..])
        }
        32 => {
            let a: [u8; 16] = bytes[..16].try_into().unwrap_or_default();
            (Ipv6Addr::from(a).into(), &bytes[16..])
        }
        _ => {
            let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
            return format!("(bad IP constraint {})", hex.join(""));
        }
    };
    let ones: u32 = mask.iter().map(|b| b.count_ones()).sum();
    let is_prefix = mask
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1 == 1))
        .skip_while(|&bit| bit)
        .all(|bit| !bit);
    if is_prefix {
        format!("{addr}/{ones}")
    } else {
        let mask: Vec<String> = mask.iter().map(u8::to_string).collect();
        format!("{addr}/{}", mask.join("."))
    }
}

fn done_or_unchanged(changed: bool) -> Outcome {
    if changed {
        Outcome::Done
    } else {
        Outcome::Unchanged
    }
}

/// Removes `path`; on failure notes it and puts it back in `slot` (the
/// manifest's field), to be tried again.
fn remove_file(path: &Path, report: &mut Report, slot: &mut Option<PathBuf>) {
    match fs::remove_file(path) {
        Ok(()) => report.push(Outcome::Done, format!("removed {}", path.display()), None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            report.push(
                Outcome::Failed,
                format!("cannot remove {}: {e}", path.display()),
                None,
            );
            *slot = Some(path.to_owned());
        }
    }
}

/// Takes the host-wide lock, waiting for another install or uninstall.
fn lock(path: &Path) -> Result<Flock<File>, TrustError> {
    let io_error = |action, source| TrustError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        ensure_dir(dir).map_err(|e| io_error("create the directory of", e))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| io_error("open", e))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| io_error("lock", errno.into()))
}

fn read_manifest(path: &Path) -> Result<Option<Manifest>, TrustError> {
    let bytes = match read_no_follow(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TrustError::Io {
                action: "read",
                path: path.to_owned(),
                source,
            })
        }
    };
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| TrustError::Manifest {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if manifest.version != MANIFEST_VERSION {
        return Err(TrustError::Manifest {
            path: path.to_owned(),
            reason: format!("version {}, not {MANIFEST_VERSION}", manifest.version),
        });
    }
    Ok(Some(manifest))
}

/// Writes the manifest (0644: it holds paths, not secrets, so `ca show`
/// can read it wherever it can read the CA).
fn save_manifest(path: &Path, manifest: &Manifest) -> Result<(), TrustError> {
    let io_error = |source| TrustError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    };
    let mut json = serde_json::to_vec_pretty(manifest).map_err(|e| io_error(e.into()))?;
    json.push(b'\n');
    write_atomic(path, &json, 0o644).map_err(io_error)
}

/// Reads a file that is not a link, up to [`MAX_READ`] bytes.
fn read_no_follow(path: &Path) -> io::Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_READ).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Creates `dir` (0755) and its parents if missing.
fn ensure_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
}

/// Writes `contents` to `path` (mode `mode`) unless it holds them already;
/// whether it wrote.
fn write_if_changed(path: &Path, contents: &[u8], mode: u32) -> io::Result<bool> {
    let same = fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o7777 == mode)
        && read_no_follow(path).is_ok_and(|old| old == contents);
    if same {
        return Ok(false);
    }
    write_atomic(path, contents, mode)?;
    Ok(true)
}

/// Writes `path` whole or not at all: a new temporary file beside it
/// (`create_new`, so never through a link), then a rename over it (which
/// replaces a link rather than following it).
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // Dot-named and not `*.crt` or `*.sh`: neither update-ca-certificates
    // nor /etc/profile picks it up meanwhile.
    let mut temp_name = OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = dir.join(temp_name);
    match fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temp)?;
        // The umask may have taken bits off.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use rcgen::{
        BasicConstraints, CertificateParams, CidrSubnet, DnType, GeneralSubtree, IsCa, KeyPair,
    };

    use super::*;

    /// A self-signed CA (PEM) with name constraints, and its fingerprint.
    fn make_ca(cn: &str) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.name_constraints = Some(rcgen::NameConstraints {
            permitted_subtrees: vec![
                GeneralSubtree::DnsName("api.example.com".into()),
                GeneralSubtree::IpAddress(CidrSubnet::V4([10, 1, 0, 0], [255, 255, 0, 0])),
                GeneralSubtree::IpAddress(CidrSubnet::V6(
                    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    [0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                )),
            ],
            excluded_subtrees: vec![GeneralSubtree::DnsName("admin.api.example.com".into())],
        });
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        (cert.pem(), fingerprint(cert.der()))
    }

    /// A host in a temporary directory: system store, profile.d, one user
    /// with a Chrome and a Firefox NSS database, and fake commands that
    /// behave like the real ones on what they touch.
    struct Host {
        dir: tempfile::TempDir,
        paths: TrustPaths,
        state: PathBuf,
        /// What the fake commands were asked, one line each.
        log: PathBuf,
        /// The "Mozilla" roots the fake update-ca-certificates starts from.
        base_pem: String,
    }

    impl Host {
        fn new() -> Self {
            Self::with(true, true)
        }

        fn with(has_update: bool, has_certutil: bool) -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let root = dir.path().to_owned();
            let mkdir = |p: &str| {
                let path = root.join(p);
                fs::create_dir_all(&path).expect("mkdir");
                path
            };
            let system_ca_dir = mkdir("usr/local/share/ca-certificates");
            let certs = mkdir("etc/ssl/certs");
            let profile_dir = mkdir("etc/profile.d");
            let bin = mkdir("bin");
            let home = mkdir("home/alice");
            let chrome = mkdir("home/alice/.pki/nssdb");
            let firefox = mkdir("home/alice/.mozilla/firefox/x1.default-release");
            mkdir("home/alice/.mozilla/firefox/no-db-here");
            for db in [&chrome, &firefox] {
                fs::write(db.join("cert9.db"), "").expect("cert9.db");
            }
            let (uid, gid) = (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            );
            let passwd = root.join("etc/passwd");
            fs::write(
                &passwd,
                format!(
                    "root:x:0:0:root:/nonexistent-root:/bin/sh\nalice:x:{uid}:{gid}::{}:/bin/sh\nbroken line\n",
                    home.display()
                ),
            )
            .expect("passwd");
            let log = root.join("commands.log");
            // Written by commands run as other users too.
            fs::write(&log, "").expect("log");
            fs::set_permissions(&log, fs::Permissions::from_mode(0o666)).expect("chmod");
            let (base_pem, _) = make_ca("Some Public Root");
            let base = root.join("mozilla-roots.pem");
            fs::write(&base, &base_pem).expect("base");
            let bundle = certs.join("ca-certificates.crt");
            fs::copy(&base, &bundle).expect("bundle");
            let script = |name: &str, body: String| {
                let path = bin.join(name);
                fs::write(&path, format!("#!/bin/sh\n{body}")).expect("script");
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
                path
            };
            let update = script(
                "update-ca-certificates",
                format!(
                    "echo \"update-ca-certificates $*\" >> '{log}'\n\
                     cat '{base}' > '{bundle}.new'\n\
                     for f in '{cadir}'/*.crt; do [ -f \"$f\" ] && cat \"$f\" >> '{bundle}.new'; done\n\
                     mv '{bundle}.new' '{bundle}'\n",
                    log = log.display(),
                    base = base.display(),
                    bundle = bundle.display(),
                    cadir = system_ca_dir.display(),
                ),
            );
            // Keeps the one certificate under our nickname in DIR/jitproxy.pem.
            let certutil = script(
                "certutil",
                format!(
                    "dir=; op=\n\
                     while [ $# -gt 0 ]; do case $1 in\n\
                       -d) dir=${{2#sql:}}; shift;;\n\
                       -A|-D|-L) op=$1;;\n\
                       -t|-n) shift;;\n\
                     esac; shift; done\n\
                     echo \"certutil $op $dir as $(id -u):$(id -g)\" >> '{log}'\n\
                     case $op in\n\
                       -A) cat > \"$dir/jitproxy.pem\";;\n\
                       -D) [ -f \"$dir/jitproxy.pem\" ] && rm \"$dir/jitproxy.pem\";;\n\
                       -L) [ -f \"$dir/jitproxy.pem\" ];;\n\
                     esac\n",
                    log = log.display()
                ),
            );
            let hooks = mkdir("etc/ca-certificates/update.d");
            fs::write(hooks.join("README.txt"), "not a hook").expect("readme");
            let hook = hooks.join("jks-keystore");
            fs::write(
                &hook,
                format!(
                    "#!/bin/sh\nwhile read -r line; do echo \"hook $line\" >> '{}'; done\n",
                    log.display()
                ),
            )
            .expect("hook");
            fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).expect("chmod");
            let paths = TrustPaths {
                system_ca_dir,
                system_bundle: bundle,
                update_command: has_update.then_some(update),
                update_hooks_dir: hooks,
                profile_dir,
                fallback_bundle: root.join("usr/local/share/jitproxy/ca-bundle.pem"),
                passwd,
                nss_system_dbs: vec![root.join("etc/pki/nssdb")],
                certutil: has_certutil.then_some(certutil),
                lock: root.join("run/jitproxy/ca-trust.lock"),
            };
            let state = root.join("state");
            Self {
                dir,
                paths,
                state,
                log,
                base_pem,
            }
        }

        fn home(&self) -> PathBuf {
            self.dir.path().join("home/alice")
        }

        fn nss_dbs(&self) -> [PathBuf; 2] {
            [
                self.home().join(".pki/nssdb"),
                self.home().join(".mozilla/firefox/x1.default-release"),
            ]
        }

        /// Puts a new CA in `state` (as the daemon would) and returns its fingerprint.
        fn new_ca(&self, state: &Path) -> String {
            let (pem, fp) = make_ca("jitproxy local CA");
            fs::create_dir_all(ca_dir(state)).expect("ca dir");
            fs::write(ca_cert_path(state), pem).expect("ca.crt");
            fp
        }

        fn log(&self) -> String {
            fs::read_to_string(&self.log).unwrap_or_default()
        }

        /// The variable as a login shell would see it.
        fn sourced(&self, variable: &str) -> String {
            let out = Command::new("sh")
                .env_clear()
                .arg("-c")
                .arg(format!(". \"$1\"; printf %s \"${variable}\""))
                .arg("sh")
                .arg(self.paths.profile_file())
                .output()
                .expect("sh");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    }

    fn outcomes(report: &Report) -> Vec<(Outcome, String)> {
        report
            .steps
            .iter()
            .map(|s| (s.outcome, s.what.clone()))
            .collect()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").mode() & 0o7777
    }

    #[test]
    fn install_records_everything_and_uninstall_undoes_it() {
        let host = Host::new();
        let fp = host.new_ca(&host.state);
        let report = install(&host.state, &host.paths).expect("install");
        assert_eq!(report.failures(), 0, "{:#?}", outcomes(&report));

        // System store.
        let file = host.paths.system_ca_file();
        assert_eq!(mode(&file), 0o644);
        assert!(
            bundle_has(&host.paths.system_bundle, &fp),
            "bundle lacks the CA"
        );
        // NSS: both databases, as their owner; the directory without cert9.db untouched.
        for db in host.nss_dbs() {
            let pem = fs::read_to_string(db.join("jitproxy.pem")).expect("added to NSS");
            assert!(LocalCa::from_pem(&db, pem.as_bytes()).is_ok_and(|c| c.fingerprint() == fp));
        }
        // The profile: Node gets the CA, the rest the system bundle that holds it.
        assert_eq!(mode(&host.paths.profile_file()), 0o644);
        assert_eq!(
            host.sourced("NODE_EXTRA_CA_CERTS"),
            file.display().to_string()
        );
        for name in BUNDLE_VARIABLES {
            assert_eq!(
                host.sourced(name),
                host.paths.system_bundle.display().to_string()
            );
        }
        assert!(!host.paths.fallback_bundle.exists());

        let manifest = installed(&host.state).expect("read").expect("manifest");
        assert_eq!(manifest.fingerprint, fp);
        assert_eq!(manifest.system_ca.as_deref(), Some(file.as_path()));
        assert_eq!(
            manifest.system_bundle.as_ref(),
            Some(&host.paths.system_bundle)
        );
        assert_eq!(manifest.profile, Some(host.paths.profile_file()));
        let dbs: Vec<&Path> = manifest.nss.iter().map(|e| e.dir.as_path()).collect();
        assert_eq!(
            dbs,
            host.nss_dbs()
                .iter()
                .map(PathBuf::as_path)
                .collect::<Vec<_>>()
        );
        assert_eq!(mode(&manifest_path(&host.state)), 0o644);

        let report = uninstall(&host.state, &host.paths)
            .expect("uninstall")
            .expect("was installed");
        assert_eq!(report.failures(), 0, "{:#?}", outcomes(&report));
        assert!(!file.exists());
        assert!(
            !bundle_has(&host.paths.system_bundle, &fp),
            "bundle still has the CA"
        );
        assert!(fs::read_to_string(&host.paths.system_bundle)
            .expect("bundle")
            .contains(host.base_pem.trim()));
        for db in host.nss_dbs() {
            assert!(
                !db.join("jitproxy.pem").exists(),
                "{} still has it",
                db.display()
            );
        }
        assert!(!host.paths.profile_file().exists());
        assert!(!manifest_path(&host.state).exists());
        let link = host
            .paths
            .system_bundle
            .with_file_name("jitproxy-local-ca.pem");
        let log = host.log();
        assert!(log.contains("update-ca-certificates --fresh"), "{log}");
        assert!(
            log.ends_with(&format!("hook -{}\n", link.display())),
            "{log}"
        );
        // What is left: only the state dir's CA, and the lock.
        assert!(ca_cert_path(&host.state).exists());

        assert!(uninstall(&host.state, &host.paths)
            .expect("again")
            .is_none());
    }

    #[test]
    fn install_again_changes_nothing() {
        let host = Host::new();
        host.new_ca(&host.state);
        install(&host.state, &host.paths).expect("install");
        let log = host.log();
        let manifest = installed(&host.state).expect("read");
        let report = install(&host.state, &host.paths).expect("again");
        assert_eq!(report.count(Outcome::Done), 0, "{:#?}", outcomes(&report));
        assert_eq!(report.failures(), 0);
        assert_eq!(host.log(), log, "no command ran the second time");
        let again = installed(&host.state).expect("read");
        assert_eq!(
            again.map(|m| (m.nss, m.system_ca, m.profile)),
            manifest.map(|m| (m.nss, m.system_ca, m.profile))
        );
    }

    #[test]
    fn install_after_a_rotate_replaces_the_old_ca_everywhere() {
        let host = Host::new();
        let old = host.new_ca(&host.state);
        install(&host.state, &host.paths).expect("install");
        let new = host.new_ca(&host.state);
        assert_ne!(old, new);
        fs::write(host.dir.path().join("commands.log"), "").expect("clear log");

        let report = install(&host.state, &host.paths).expect("reinstall");
        assert_eq!(report.failures(), 0, "{:#?}", outcomes(&report));
        let bundle = &host.paths.system_bundle;
        assert!(bundle_has(bundle, &new) && !bundle_has(bundle, &old));
        let log = host.log();
        let link = bundle
            .with_file_name("jitproxy-local-ca.pem")
            .display()
            .to_string();
        assert!(
            log.contains(&format!(
                "update-ca-certificates --fresh\nhook -{link}\nhook +{link}\n"
            )),
            "{log}"
        );
        for db in host.nss_dbs() {
            let removed = format!("certutil -D {}", db.display());
            let added = format!("certutil -A {}", db.display());
            let (r, a) = (log.find(&removed), log.find(&added));
            assert!(
                r.is_some() && a.is_some() && r < a,
                "old out before new in:\n{log}"
            );
            let pem = fs::read(db.join("jitproxy.pem")).expect("pem");
            assert_eq!(LocalCa::from_pem(&db, &pem).expect("ca").fingerprint(), new);
        }
        let manifest = installed(&host.state).expect("read").expect("manifest");
        assert_eq!(manifest.fingerprint, new);
        assert!(manifest.nss.iter().all(|e| e.fingerprint == new));
        let profile = fs::read_to_string(host.paths.profile_file()).expect("profile");
        assert!(profile.contains(&new) && !profile.contains(&old));
    }

    #[test]
    fn another_state_dirs_ca_is_not_replaced() {
        let host = Host::new();
        host.new_ca(&host.state);
        install(&host.state, &host.paths).expect("first install");
        let other = host.dir.path().join("other state");
        host.new_ca(&other);

        let e = install(&other, &host.paths).expect_err("refused");
        let TrustError::Foreign {
            path,
            owner,
            fingerprint,
        } = &e
        else {
            panic!("not a refusal: {e}");
        };
        assert_eq!(path, &host.paths.system_ca_file());
        assert_eq!(owner.as_deref(), Some(quoted(&host.state).as_str()));
        assert!(fingerprint.is_some());
        let message = e.to_string();
        assert!(
            message.contains("sudo jitproxy ca uninstall --state-dir")
                && message.contains(&host.state.display().to_string()),
            "{message}"
        );
        assert!(installed(&other).expect("read").is_none());

        // Once the first is out, the second goes in.
        uninstall(&host.state, &host.paths).expect("uninstall");
        let report = install(&other, &host.paths).expect("second install");
        assert_eq!(report.failures(), 0, "{:#?}", outcomes(&report));
    }

    #[test]
    fn a_profile_file_of_someone_else_is_not_replaced() {
        let host = Host::new();
        host.new_ca(&host.state);
        fs::write(host.paths.profile_file(), "export SSL_CERT_FILE=/mine\n").expect("write");
        let e = install(&host.state, &host.paths).expect_err("refused");
        assert!(matches!(e, TrustError::Foreign { owner: None, .. }), "{e}");
    }

    #[test]
    fn the_same_ca_without_a_manifest_is_taken_as_ours() {
        let host = Host::new();
        host.new_ca(&host.state);
        install(&host.state, &host.paths).expect("install");
        fs::remove_file(manifest_path(&host.state)).expect("lose the manifest");
        let report = install(&host.state, &host.paths).expect("install again");
        assert_eq!(report.failures(), 0, "{:#?}", outcomes(&report));
        assert!(installed(&host.state).expect("read").is_some());
    }

    #[test]
    fn without_the_tools_it_says_what_to_install_and_uses_a_fallback_bundle() {
        let host = Host::with(false, false);
        let fp = host.new_ca(&host.state);
        let report = install(&host.state, &host.paths).expect("install");
        assert_eq!(report.failures(), 0, "{:#?}", outcomes(&report));
        let fixes: Vec<&str> = report
            .steps
            .iter()
            .filter_map(|s| s.fix.as_deref())
            .collect();
        assert!(
            fixes.iter().any(|f| f.contains(
                "install libnss3-tools to add the CA to 2 NSS databases (Chrome/Firefox)"
            )),
            "{fixes:#?}"
        );
        assert!(
            fixes.iter().any(|f| f.contains("ca-certificates")),
            "{fixes:#?}"
        );

        let fallback = &host.paths.fallback_bundle;
        assert!(bundle_has(fallback, &fp));
        assert!(fs::read_to_string(fallback)
            .expect("fallback")
            .contains(host.base_pem.trim()));
        assert_eq!(mode(fallback), 0o644);
        assert_eq!(
            host.sourced("SSL_CERT_FILE"),
            fallback.display().to_string()
        );
        let manifest = installed(&host.state).expect("read").expect("manifest");
        assert!(manifest.nss.is_empty());
        assert_eq!(manifest.system_bundle, None);

        uninstall(&host.state, &host.paths).expect("uninstall");
        assert!(!fallback.exists() && !fallback.parent().expect("dir").exists());
        assert!(!host.paths.system_ca_file().exists());
    }

    #[test]
    fn without_a_system_bundle_the_ca_alone_replaces_no_trust_store() {
        let mut host = Host::with(false, true);
        host.paths.system_bundle = host.dir.path().join("no-such-bundle.crt");
        host.new_ca(&host.state);
        let report = install(&host.state, &host.paths).expect("install");
        assert_eq!(report.failures(), 0, "{:#?}", outcomes(&report));
        assert_eq!(host.sourced("SSL_CERT_FILE"), "");
        assert_eq!(
            host.sourced("NODE_EXTRA_CA_CERTS"),
            host.paths.system_ca_file().display().to_string()
        );
    }

    #[test]
    fn a_failing_update_is_reported_and_install_goes_on() {
        let mut host = Host::new();
        host.new_ca(&host.state);
        let failing = host.dir.path().join("bin/failing-update");
        fs::write(&failing, "#!/bin/sh\necho 'E: disk full' >&2\nexit 3\n").expect("script");
        fs::set_permissions(&failing, fs::Permissions::from_mode(0o755)).expect("chmod");
        host.paths.update_command = Some(failing);
        let report = install(&host.state, &host.paths).expect("install");
        let failed: Vec<&Step> = report
            .steps
            .iter()
            .filter(|s| s.outcome == Outcome::Failed)
            .collect();
        assert_eq!(failed.len(), 1, "{:#?}", outcomes(&report));
        assert!(
            failed[0].what.contains("E: disk full"),
            "{}",
            failed[0].what
        );
        // The rest still happened, with the fallback bundle.
        assert_eq!(
            host.sourced("SSL_CERT_FILE"),
            host.paths.fallback_bundle.display().to_string()
        );
        assert!(host.nss_dbs()[0].join("jitproxy.pem").exists());
    }

    #[test]
    fn a_hook_that_fails_on_uninstall_is_told_again_next_time() {
        let host = Host::new();
        host.new_ca(&host.state);
        install(&host.state, &host.paths).expect("install");
        let hook = host.paths.update_hooks_dir.join("jks-keystore");
        let good = fs::read(&hook).expect("hook");
        let locked = "#!/bin/sh\ncat >/dev/null\necho 'dpkg: error: dpkg frontend lock was locked by another process' >&2\nexit 2\n";
        fs::write(&hook, locked).expect("hook");

        let report = uninstall(&host.state, &host.paths)
            .expect("uninstall")
            .expect("was");
        let failed: Vec<&Step> = report
            .steps
            .iter()
            .filter(|s| s.outcome == Outcome::Failed)
            .collect();
        assert_eq!(failed.len(), 1, "{:#?}", outcomes(&report));
        assert!(failed[0]
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("dpkg --triggers-only --pending")));
        let left = installed(&host.state)
            .expect("read")
            .expect("manifest kept");
        assert!(left.system_ca.is_some() && left.profile.is_none() && left.nss.is_empty());

        fs::write(&hook, good).expect("hook");
        let report = uninstall(&host.state, &host.paths)
            .expect("again")
            .expect("was");
        assert_eq!(report.failures(), 0, "{:#?}", outcomes(&report));
        assert!(host.log().ends_with("jitproxy-local-ca.pem\n"));
        assert!(installed(&host.state).expect("read").is_none());
    }

    #[test]
    fn no_ca_says_how_one_is_made() {
        let host = Host::new();
        let e = install(&host.state, &host.paths).expect_err("no CA");
        assert!(matches!(e, TrustError::NoCa { .. }));
        assert_eq!(
            e.to_string(),
            "no local CA yet: the daemon makes it when it starts with an inspect target (`mode = \"inspect\"`)"
        );
        assert!(uninstall(&host.state, &host.paths)
            .expect("uninstall")
            .is_none());
    }

    #[test]
    fn databases_are_changed_as_their_owner_and_links_to_others_are_left_alone() {
        if !nix::unistd::geteuid().is_root() {
            return; // needs a directory owned by another uid
        }
        let host = Host::new();
        host.new_ca(&host.state);
        // Bob's own database: changed as bob.
        let bob = host.dir.path().join("home/bob");
        let bob_db = bob.join(".pki/nssdb");
        fs::create_dir_all(&bob_db).expect("mkdir");
        fs::write(bob_db.join("cert9.db"), "").expect("db");
        for path in [&bob, &bob.join(".pki"), &bob_db] {
            nix::unistd::chown(path, Some(4242.into()), Some(4343.into())).expect("chown");
        }
        let mut passwd = fs::read_to_string(&host.paths.passwd).expect("passwd");
        passwd += &format!("bob:x:4242:4343::{}:/bin/sh\n", bob.display());
        fs::write(&host.paths.passwd, passwd).expect("passwd");
        let theirs = host.dir.path().join("theirs");
        fs::create_dir(&theirs).expect("mkdir");
        fs::write(theirs.join("cert9.db"), "").expect("db");
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(4242)), None).expect("chown");
        let profiles = host.home().join(".mozilla/firefox");
        symlink(&theirs, profiles.join("zz.linked")).expect("link");
        let report = install(&host.state, &host.paths).expect("install");
        let log = host.log();
        assert!(
            log.contains(&format!("certutil -A {} as 4242:4343", bob_db.display())),
            "{log}"
        );
        let added = fs::metadata(bob_db.join("jitproxy.pem")).expect("added");
        assert_eq!(added.uid(), 4242);
        // Bob may link his profile to anyone's database; theirs is not changed.
        assert!(!theirs.join("jitproxy.pem").exists());
        assert!(report
            .steps
            .iter()
            .any(|s| s.outcome == Outcome::Skipped && s.what.contains("zz.linked")));
    }

    #[test]
    fn writes_replace_links_instead_of_following_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").expect("victim");
        let path = dir.path().join("out.pem");
        symlink(&victim, &path).expect("link");
        write_atomic(&path, b"new", 0o644).expect("write");
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "keep");
        assert!(!fs::symlink_metadata(&path).expect("stat").is_symlink());
        assert_eq!(fs::read_to_string(&path).expect("out"), "new");
        // A leftover temporary file (or a link planted there) is replaced too.
        let temp = dir
            .path()
            .join(format!(".out.pem.{}.tmp", std::process::id()));
        symlink(&victim, &temp).expect("link");
        write_atomic(&path, b"newer", 0o644).expect("write");
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "keep");
        assert!(read_no_follow(&temp).is_err());
    }

    #[test]
    fn details_show_the_name_constraints_and_an_openssl_fingerprint() {
        let (pem, fp) = make_ca("jitproxy local CA");
        // Text around the block, and a key after it, are not part of the CA.
        let file =
            format!("comment\n{pem}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        let ca = LocalCa::from_pem(Path::new("ca.crt"), file.as_bytes()).expect("parse");
        assert_eq!(ca.pem(), pem);
        let d = ca.details();
        assert_eq!(d.common_name.as_deref(), Some("jitproxy local CA"));
        assert_eq!(d.subject, "CN=jitproxy local CA");
        assert_eq!(d.fingerprint_sha256, fp);
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp
            .chars()
            .all(|c| c == ':' || c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
        assert!(d.not_before < d.not_after);
        let nc = d.name_constraints.clone().expect("constraints");
        assert_eq!(nc.permitted_dns, ["api.example.com"]);
        assert_eq!(nc.permitted_ip, ["10.1.0.0/16", "fd00::/16"]);
        assert_eq!(nc.excluded_dns, ["admin.api.example.com"]);
        assert!(nc.excluded_ip.is_empty() && nc.other.is_empty());
    }

    #[test]
    fn a_leaf_or_garbage_is_not_a_ca() {
        let key = KeyPair::generate().expect("key");
        let leaf = CertificateParams::new(vec!["a.example".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("leaf");
        for bytes in [leaf.pem().into_bytes(), b"not a certificate".to_vec()] {
            let e = LocalCa::from_pem(Path::new("ca.crt"), &bytes).expect_err("not a CA");
            assert!(matches!(e, TrustError::BadCa { .. }), "{e}");
        }
    }

    #[test]
    fn ip_ranges_read_as_cidr() {
        assert_eq!(
            ip_range(&[192, 168, 1, 0, 255, 255, 255, 0]),
            "192.168.1.0/24"
        );
        assert_eq!(ip_range(&[10, 0, 0, 1, 255, 255, 255, 255]), "10.0.0.1/32");
        assert_eq!(
            ip_range(&[10, 0, 0, 0, 255, 0, 255, 0]),
            "10.0.0.0/255.0.255.0"
        );
        assert_eq!(ip_range(&[1, 2, 3]), "(bad IP constraint 010203)");
    }

    #[test]
    fn profile_paths_are_one_shell_word() {
        let dir = Path::new("/var/lib/it's \"odd\"\n$(reboot)");
        let text = profile_text(dir, "AB", Some(Path::new("/x/it's")), Some(dir));
        assert!(text.starts_with(PROFILE_HEADER));
        assert!(text.contains("export NODE_EXTRA_CA_CERTS='/x/it'\\''s'\n"));
        let out = Command::new("sh")
            .env_clear()
            .arg("-c")
            .arg(format!("{text}\nprintf %s \"$SSL_CERT_FILE\""))
            .output()
            .expect("sh");
        assert_eq!(String::from_utf8_lossy(&out.stdout), dir.to_string_lossy());
        // The state dir line stays one line.
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with(PROFILE_STATE_DIR))
                .count(),
            1
        );
    }

    /// Real NSS databases in a temporary home, one of them another
    /// user's, with the real certutil (libnss3-tools).
    /// `cargo test -p jitproxy --lib trust::tests::real_certutil -- --ignored`
    #[test]
    #[ignore = "needs root and certutil (libnss3-tools)"]
    fn real_certutil_adds_replaces_and_removes() {
        let certutil = find_command("certutil").expect("needs certutil");
        let mut host = Host::new();
        host.paths.certutil = Some(certutil.clone());
        // Bob's home and database, owned by bob (uid 4242).
        let bob = host.dir.path().join("home/bob");
        let bob_db = bob.join(".pki/nssdb");
        fs::create_dir_all(&bob_db).expect("mkdir");
        let mut passwd = fs::read_to_string(&host.paths.passwd).expect("passwd");
        passwd += &format!("bob:x:4242:4242::{}:/bin/sh\n", bob.display());
        fs::write(&host.paths.passwd, passwd).expect("passwd");
        let dbs: Vec<PathBuf> = host.nss_dbs().into_iter().chain([bob_db.clone()]).collect();
        for db in &dbs {
            let _ = fs::remove_file(db.join("cert9.db"));
            let made = Command::new(&certutil)
                .arg("-N")
                .arg("-d")
                .arg(nss_dir_arg(db))
                .arg("--empty-password")
                .status()
                .expect("certutil -N");
            assert!(made.success());
        }
        for path in [&bob, &bob.join(".pki"), &bob_db] {
            nix::unistd::chown(path, Some(4242.into()), Some(4242.into())).expect("chown");
        }
        for entry in fs::read_dir(&bob_db).expect("ls").flatten() {
            nix::unistd::chown(&entry.path(), Some(4242.into()), Some(4242.into())).expect("chown");
        }
        // The CA in a database: its SHA-256 and trust flags.
        let listed = |db: &Path| -> Vec<(String, String)> {
            let out = Command::new(&certutil)
                .arg("-L")
                .arg("-d")
                .arg(nss_dir_arg(db))
                .output()
                .expect("certutil -L");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let flags: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with(NSS_NICKNAME))
                .map(|l| l[NSS_NICKNAME.len()..].trim().to_owned())
                .collect();
            let out = Command::new(&certutil)
                .arg("-L")
                .arg("-d")
                .arg(nss_dir_arg(db))
                .args(["-a", "-n", NSS_NICKNAME])
                .output()
                .expect("certutil -L -a");
            let pems = String::from_utf8_lossy(&out.stdout).into_owned();
            let fps: Vec<String> = Pem::iter_from_buffer(pems.as_bytes())
                .flatten()
                .map(|p| fingerprint(&p.contents))
                .collect();
            fps.into_iter().zip(flags).collect()
        };

        let first = host.new_ca(&host.state);
        let report = install(&host.state, &host.paths).expect("install");
        assert_eq!(report.failures(), 0, "{:#?}", outcomes(&report));
        for db in &dbs {
            assert_eq!(
                listed(db),
                [(first.clone(), "C,,".to_owned())],
                "{}",
                db.display()
            );
        }
        let owner = fs::metadata(bob_db.join("cert9.db")).expect("stat");
        assert_eq!(
            (owner.uid(), owner.gid()),
            (4242, 4242),
            "bob's db changed as bob"
        );

        let second = host.new_ca(&host.state);
        let report = install(&host.state, &host.paths).expect("rotate");
        assert_eq!(report.failures(), 0, "{:#?}", outcomes(&report));
        for db in &dbs {
            assert_eq!(
                listed(db),
                [(second.clone(), "C,,".to_owned())],
                "{}",
                db.display()
            );
        }

        let report = uninstall(&host.state, &host.paths)
            .expect("uninstall")
            .expect("was");
        assert_eq!(report.failures(), 0, "{:#?}", outcomes(&report));
        for db in &dbs {
            assert!(listed(db).is_empty(), "{} still has it", db.display());
        }
    }

    /// The real thing, on this host (root, Debian): install a throwaway CA
    /// into the system store, check that openssl trusts a leaf it signed
    /// and that login shells get the variables, then uninstall, always,
    /// and check that everything is as before.
    /// `cargo test -p jitproxy --lib trust::tests::real -- --ignored --nocapture`
    #[test]
    #[ignore = "changes this host's trust stores (needs root and update-ca-certificates)"]
    fn real_install_and_uninstall_on_this_host() {
        let paths = TrustPaths::system();
        assert!(nix::unistd::geteuid().is_root(), "needs root");
        assert!(
            paths.update_command.is_some(),
            "needs update-ca-certificates"
        );
        assert!(
            !paths.system_ca_file().exists() && !paths.profile_file().exists(),
            "jitproxy's CA is already installed on this host; not touching it"
        );
        let listing = || {
            let mut names: Vec<String> = fs::read_dir("/etc/ssl/certs")
                .expect("certs")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let java_aliases = || {
            let out = Command::new("keytool")
                .args(["-list", "-cacerts", "-storepass", "changeit"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let mut aliases: Vec<String> = out
                .lines()
                .filter(|l| l.contains("trustedCertEntry"))
                .map(|l| l.split(',').next().unwrap_or_default().to_owned())
                .collect();
            aliases.sort();
            aliases
        };
        // SHA-256 of our CA in Java's cacerts, if there.
        let in_java = || {
            let out = Command::new("keytool")
                .args(["-list", "-cacerts", "-storepass", "changeit"])
                .args(["-alias", "debian:jitproxy-local-ca.pem"])
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.split("(SHA-256): ")
                .nth(1)
                .map(|rest| rest.trim().to_owned())
        };
        let before = (
            fs::read(&paths.system_bundle).expect("bundle"),
            listing(),
            java_aliases(),
        );

        let state = tempfile::tempdir().expect("state");
        /// A CA in the state dir, and a leaf it signed, in `dir`.
        fn ca_and_leaf(state: &Path, name: &str) -> (String, PathBuf) {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params
                .distinguished_name
                .push(DnType::CommonName, "jitproxy test CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            let key = KeyPair::generate().expect("key");
            let ca = params.self_signed(&key).expect("ca");
            fs::create_dir_all(ca_dir(state)).expect("ca dir");
            fs::write(ca_cert_path(state), ca.pem()).expect("ca.crt");
            let issuer = rcgen::Issuer::new(params, key);
            let leaf_key = KeyPair::generate().expect("leaf key");
            let leaf = CertificateParams::new(vec!["api.example.com".to_owned()])
                .expect("leaf params")
                .signed_by(&leaf_key, &issuer)
                .expect("leaf");
            let path = state.join(name);
            fs::write(&path, leaf.pem()).expect("leaf");
            (fingerprint(ca.der()), path)
        }
        let verify = |leaf: &Path| {
            Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(&paths.system_bundle)
                .arg(leaf)
                .output()
                .expect("openssl")
                .status
                .success()
        };
        let (first, first_leaf) = ca_and_leaf(state.path(), "leaf1.pem");
        assert!(!verify(&first_leaf), "the leaf verifies before install");

        /// Uninstalls even when an assertion fails.
        struct Uninstall<'a>(&'a Path, &'a TrustPaths);
        impl Drop for Uninstall<'_> {
            fn drop(&mut self) {
                let started = Instant::now();
                match uninstall(self.0, self.1) {
                    Ok(report) => {
                        eprintln!("uninstall took {:.2} s:", started.elapsed().as_secs_f64());
                        for step in report.iter().flat_map(|r| &r.steps) {
                            eprintln!("  {:?} {} {:?}", step.outcome, step.what, step.fix);
                        }
                    }
                    Err(e) => eprintln!("UNINSTALL FAILED: {e}"),
                }
            }
        }
        let guard = Uninstall(state.path(), &paths);
        let run_install = |what: &str| {
            let started = Instant::now();
            let report = install(state.path(), &paths).expect("install");
            eprintln!("{what} took {:.2} s:", started.elapsed().as_secs_f64());
            for step in &report.steps {
                eprintln!("  {:?} {} {:?}", step.outcome, step.what, step.fix);
            }
            assert_eq!(report.failures(), 0);
        };

        run_install("install");
        assert!(
            verify(&first_leaf),
            "openssl does not trust a leaf of the installed CA"
        );
        let out = Command::new("sh")
            .env_clear()
            .arg("-c")
            .arg(". /etc/profile.d/jitproxy-ca.sh; echo $SSL_CERT_FILE; echo $NODE_EXTRA_CA_CERTS")
            .output()
            .expect("sh");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "/etc/ssl/certs/ca-certificates.crt\n/usr/local/share/ca-certificates/jitproxy-local-ca.crt\n"
        );
        assert_eq!(in_java().as_deref(), Some(first.as_str()), "Java's cacerts");

        run_install("install again");

        let (second, second_leaf) = ca_and_leaf(state.path(), "leaf2.pem");
        run_install("install after a rotate");
        assert!(verify(&second_leaf), "the new CA is not trusted");
        assert!(!verify(&first_leaf), "the old CA is still trusted");
        assert_eq!(
            in_java().as_deref(),
            Some(second.as_str()),
            "Java's cacerts"
        );

        drop(guard);
        assert!(installed(state.path()).expect("read").is_none());
        assert!(
            !verify(&second_leaf),
            "the leaf still verifies after uninstall"
        );
        assert!(!paths.profile_file().exists());
        assert!(!paths.system_ca_file().exists());
        assert_eq!(in_java(), None, "still in Java's cacerts");
        let after = (
            fs::read(&paths.system_bundle).expect("bundle"),
            listing(),
            java_aliases(),
        );
        assert!(after.0 == before.0, "the system bundle differs from before");
        assert_eq!(after.1, before.1, "/etc/ssl/certs differs from before");
        assert_eq!(after.2, before.2, "Java's cacerts differs from before");
    }
}

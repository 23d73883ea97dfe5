//! The local CA that inspected connections are terminated with.
//!
//! Made at the first start with an inspect target, in `<state_dir>/ca/`:
//! `ca.crt` (PEM, world-readable: trust stores take it) and `ca.key` (PKCS#8
//! PEM, root only, 0600). It is ECDSA P-256 and **name-constrained**: its
//! permitted subtrees are the inspect targets' server names and addresses,
//! so a stolen key cannot mint a certificate any client accepts for another
//! site. X.509 leaves a name type without a permitted subtree unconstrained,
//! so a CA whose targets have no address gets the subtree `0.0.0.0/32` and
//! `::/128` (no real server), and one without DNS names the name `invalid`.
//!
//! Leaves are minted on demand, one per server name, valid for
//! [`LEAF_LIFETIME`] and renewed an hour before they end; they are kept in
//! a bounded map. When the config names servers outside the constraints,
//! the daemon says so and `jitproxy ca rotate` makes a new CA.

use std::{
    collections::HashMap,
    fmt, fs,
    io::{self, Read as _, Write as _},
    net::IpAddr,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    sign::CertifiedKey,
};

/// How long a leaf certificate is valid.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// A leaf is replaced this long before it ends.
const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(3600);
/// How long the CA is valid.
const CA_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Certificates start this long in the past, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(3600);
/// Leaves kept at most (server names are the config's, so this is a guard).
const MAX_LEAVES: usize = 4096;

// Where the CA's files are: one place for the daemon and `jitproxy ca`.
pub use crate::host::trust::{ca_cert_path as cert_path, ca_dir as dir, ca_key_path as key_path};

/// What went wrong with the local CA; the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} must be owned by root and readable by root only (mode 0600); run `chown root {0} && chmod 600 {0}`, or `jitproxy ca rotate` for a new CA", path.display())]
    KeyExposed { path: PathBuf },
    #[error("{} is not a CA this version can read ({why}); run `jitproxy ca rotate` for a new one", path.display())]
    Unreadable { path: PathBuf, why: String },
    #[error("cannot make a certificate: {0}")]
    Mint(String),
}

/// The names and addresses the CA may vouch for, read from its certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permitted {
    pub dns: Vec<String>,
    pub ips: Vec<IpNet>,
}

impl Permitted {
    /// Whether a leaf for `name` (a DNS name or an address) verifies under
    /// these constraints (RFC 5280: a DNS subtree permits the name and the
    /// names below it).
    pub fn covers(&self, name: &str) -> bool {
        match name.parse::<IpAddr>() {
            Ok(ip) => self.ips.iter().any(|net| net.contains(&ip)),
            Err(_) => {
                let name = name.to_ascii_lowercase();
                self.dns.iter().any(|base| {
                    name == *base
                        || name
                            .strip_suffix(base.as_str())
                            .is_some_and(|head| head.ends_with('.'))
                })
            }
        }
    }
}

/// The local CA: its issuer, its certificate, and the leaves minted so far.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    fingerprint: String,
    permitted: Permitted,
    provider: Arc<CryptoProvider>,
    leaves: Mutex<HashMap<Box<str>, Leaf>>,
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa")
            .field("fingerprint", &self.fingerprint)
            .field("permitted", &self.permitted)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Leaf {
    key: Arc<CertifiedKey>,
    renew_at: SystemTime,
}

/// Whether [`LocalCa::open`] found the CA or made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    Loaded,
    Created,
}

impl LocalCa {
    /// The CA in `state_dir`, made for `names` when there is none.
    pub fn open(
        state_dir: &Path,
        names: &[String],
        provider: Arc<CryptoProvider>,
    ) -> Result<(Self, Opened), CaError> {
        match Self::load(state_dir, Arc::clone(&provider)) {
            Ok(ca) => Ok((ca, Opened::Loaded)),
            Err(CaError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok((Self::create(state_dir, names, provider)?, Opened::Created))
            }
            Err(e) => Err(e),
        }
    }

    /// Reads the CA from `state_dir`; its key must be root's alone.
    pub fn load(state_dir: &Path, provider: Arc<CryptoProvider>) -> Result<Self, CaError> {
        let key_path = key_path(state_dir);
        let key_pem = read_private(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Unreadable {
            path: key_path.clone(),
            why: e.to_string(),
        })?;
        let cert_path = cert_path(state_dir);
        let cert_pem = fs::read_to_string(&cert_path).map_err(|source| CaError::Io {
            action: "read",
            path: cert_path.clone(),
            source,
        })?;
        let unreadable = |why: String| CaError::Unreadable {
            path: cert_path.clone(),
            why,
        };
        let der = pem_certificate(&cert_pem).ok_or_else(|| unreadable("no certificate".into()))?;
        let permitted = permitted_of(&der).map_err(unreadable)?;
        // A crash or a reload in the middle of `ca rotate` could pair one
        // CA's key with the other's certificate: every leaf would then fail.
        if public_key_of(&der).map_err(unreadable)? != key.public_key_raw() {
            return Err(unreadable(
                "its key (ca.key) is not the certificate's (ca.crt)".to_owned(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| unreadable(e.to_string()))?;
        Ok(Self {
            issuer,
            fingerprint: crate::host::trust::fingerprint(&der),
            cert_der: der,
            permitted,
            provider,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// Makes a new CA for `names` in `state_dir`, replacing any there.
    pub fn create(
        state_dir: &Path,
        names: &[String],
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, CaError> {
        let dir = dir(state_dir);
        fs::create_dir_all(&dir).map_err(|source| CaError::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(|source| {
            CaError::Io {
                action: "set the mode of",
                path: dir.clone(),
                source,
            }
        })?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Mint(e.to_string()))?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "jitproxy");
        dn.push(
            DnType::CommonName,
            format!("jitproxy local CA ({})", hostname()),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_LIFETIME).into();
        params.serial_number = Some(random_serial()?);
        params.name_constraints = Some(constraints(names));
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Mint(e.to_string()))?;
        write_atomic(&key_path(state_dir), key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&cert_path(state_dir), cert.pem().as_bytes(), 0o644)?;
        Self::load(state_dir, provider)
    }

    /// SHA-256 of the certificate, as `openssl x509 -fingerprint` prints it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// What the CA may vouch for.
    pub fn permitted(&self) -> &Permitted {
        &self.permitted
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Of `names`, those the CA's constraints do not cover.
    pub fn uncovered<'a>(&self, names: &'a [String]) -> Vec<&'a str> {
        names
            .iter()
            .map(String::as_str)
            .filter(|n| !self.permitted.covers(n))
            .collect()
    }

    /// The leaf for `name`, minted when there is none or it is about to end.
    /// The caller has checked that `name` is one of a target's names.
    pub fn leaf(&self, name: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let now = SystemTime::now();
        if let Some(leaf) = self.leaves().get(name).filter(|l| l.renew_at > now) {
            return Ok(Arc::clone(&leaf.key));
        }
        let leaf = self.mint(name, now)?;
        let mut leaves = self.leaves();
        if leaves.len() >= MAX_LEAVES {
            leaves.retain(|_, l| l.renew_at > now);
            if leaves.len() >= MAX_LEAVES {
                leaves.clear();
            }
        }
        leaves.insert(name.into(), leaf.clone());
        Ok(leaf.key)
    }

    fn leaves(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Leaf>> {
        // A panic while holding the map cannot leave it half-updated (each
        // operation is one insert or lookup), so a poisoned lock is used as is.
        self.leaves
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn mint(&self, name: &str, now: SystemTime) -> Result<Leaf, CaError> {
        let mint = |e: rcgen::Error| CaError::Mint(format!("a certificate for {name}: {e}"));
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(mint)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.try_into().map_err(mint)?),
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + LEAF_LIFETIME).into();
        params.serial_number = Some(random_serial()?);
        let cert = params.signed_by(&key, &self.issuer).map_err(mint)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = self
            .provider
            .key_provider
            .load_private_key(der)
            .map_err(|e| CaError::Mint(e.to_string()))?;
        Ok(Leaf {
            key: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)),
            renew_at: now + LEAF_LIFETIME - LEAF_RENEW_BEFORE,
        })
    }
}

/// The permitted subtrees for `names`, with a subtree that matches no real
/// server for a name type the names lack (see the module docs).
fn constraints(names: &[String]) -> NameConstraints {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for name in names {
        match name.parse::<IpAddr>() {
            Ok(ip) => {
                let prefix = if ip.is_ipv4() { 32 } else { 128 };
                ips.push(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                    ip, prefix,
                )));
            }
            Err(_) => dns.push(GeneralSubtree::DnsName(name.to_ascii_lowercase())),
        }
    }
    if dns.is_empty() {
        dns.push(GeneralSubtree::DnsName("invalid".to_owned()));
    }
    if ips.is_empty() {
        ips.push(GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix(
            [0; 4], 32,
        )));
        ips.push(GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix(
            [0; 16], 128,
        )));
    }
    dns.extend(ips);
    NameConstraints {
        permitted_subtrees: dns,
        excluded_subtrees: Vec::new(),
    }
}

/// The permitted DNS names and address ranges of a CA certificate.
pub fn permitted_of(der: &[u8]) -> Result<Permitted, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let constraints = cert
        .name_constraints()
        .map_err(|e| e.to_string())?
        .ok_or("it has no name constraints")?;
    let mut permitted = Permitted::default();
    for subtree in constraints.value.permitted_subtrees.iter().flatten() {
        match &subtree.base {
            GeneralName::DNSName(name) => permitted.dns.push(name.to_ascii_lowercase()),
            GeneralName::IPAddress(bytes) => {
                if let Some(net) = ip_net(bytes) {
                    permitted.ips.push(net);
                }
            }
            _ => {}
        }
    }
    Ok(permitted)
}

/// The certificate's public key, as its SubjectPublicKeyInfo holds it.
fn public_key_of(der: &[u8]) -> Result<Vec<u8>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// An address and mask as name constraints write them (8 or 32 bytes).
fn ip_net(bytes: &[u8]) -> Option<IpNet> {
    let (addr, mask): (IpAddr, &[u8]) = match bytes.len() {
        8 => {
            let a: [u8; 4] = bytes[..4].try_into().ok()?;
            (IpAddr::from(a), &bytes[4..])
        }
        32 => {
            let a: [u8; 16] = bytes[..16].try_into().ok()?;
            (IpAddr::from(a), &bytes[16..])
        }
        _ => return None,
    };
    let prefix = mask.iter().map(|b| b.leading_ones()).sum::<u32>();
    IpNet::new(addr, u8::try_from(prefix).ok()?).ok()
}

/// The first certificate of a PEM text.
fn pem_certificate(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()
}

/// A private file's text; it must be a regular file of root's, 0600 or
/// stricter, and not a symlink.
fn read_private(path: &Path) -> Result<String, CaError> {
    let io = |action, source| CaError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io("read", e))?;
    let meta = file.metadata().map_err(|e| io("read", e))?;
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o077 != 0 {
        return Err(CaError::KeyExposed {
            path: path.to_owned(),
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| io("read", e))?;
    Ok(text)
}

/// Writes `bytes` to `path` through a new temporary file and a rename, so a
/// reader sees the old file or the new one, never part of one.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let tmp = path.with_extension("new");
    let io = |action, source| CaError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| io("write", e))?;
    file.write_all(bytes).map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("write", e))?;
    fs::rename(&tmp, path).map_err(|e| io("write", e))?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("write", e))?;
    }
    Ok(())
}

/// 16 random bytes from the kernel, positive as a serial number must be.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| CaError::Io {
            action: "read",
            path: PathBuf::from("/dev/urandom"),
            source,
        })?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier as _;

    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    #[test]
    fn a_new_ca_is_constrained_to_its_names_and_its_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["api.example.com".to_owned(), "127.0.0.9".to_owned()];
        let (ca, opened) = LocalCa::open(dir.path(), &names, provider()).unwrap();
        assert_eq!(opened, Opened::Created);
        let mode = fs::metadata(key_path(dir.path())).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(ca.permitted().covers("api.example.com"));
        assert!(ca.permitted().covers("v2.api.example.com"));
        assert!(ca.permitted().covers("127.0.0.9"));
        assert!(!ca.permitted().covers("xapi.example.com"));
        assert!(!ca.permitted().covers("example.com"));
        assert!(!ca.permitted().covers("127.0.0.1"));
        assert_eq!(ca.uncovered(&["other.test".to_owned()]), ["other.test"]);

        let (again, opened) = LocalCa::open(dir.path(), &[], provider()).unwrap();
        assert_eq!(opened, Opened::Loaded);
        assert_eq!(again.fingerprint(), ca.fingerprint());
        assert!(again.leaf("api.example.com").is_ok());
    }

    #[test]
    fn names_without_addresses_still_constrain_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::create(dir.path(), &["api.test".to_owned()], provider()).unwrap();
        assert!(!ca.permitted().covers("10.0.0.1"));
        assert!(!ca.permitted().covers("::1"));
        assert!(ca.permitted().ips.iter().all(|n| n.addr().is_unspecified()));
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        LocalCa::create(dir.path(), &["api.test".to_owned()], provider()).unwrap();
        fs::set_permissions(key_path(dir.path()), fs::Permissions::from_mode(0o644)).unwrap();
        let err = LocalCa::load(dir.path(), provider()).unwrap_err();
        assert!(matches!(err, CaError::KeyExposed { .. }), "{err}");
    }

    #[test]
    fn leaves_are_kept_and_verify_only_for_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::create(dir.path(), &["api.test".to_owned()], provider()).unwrap();
        let a = ca.leaf("api.test").unwrap();
        let b = ca.leaf("api.test").unwrap();
        assert!(Arc::ptr_eq(&a, &b));

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let name = rustls::pki_types::ServerName::try_from("api.test").unwrap();
        let now = rustls::pki_types::UnixTime::now();
        verifier
            .verify_server_cert(&a.cert[0], &[], &name, &[], now)
            .expect("the leaf verifies for its name");
        let other = rustls::pki_types::ServerName::try_from("other.test").unwrap();
        assert!(verifier
            .verify_server_cert(&a.cert[0], &[], &other, &[], now)
            .is_err());
    }

    #[test]
    fn a_leaf_outside_the_constraints_does_not_verify() {
        // What a stolen key could make: a certificate for another site,
        // signed by the CA's own key.
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::create(dir.path(), &["api.test".to_owned()], provider()).unwrap();
        let forged = ca.mint("bank.example", SystemTime::now()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let name = rustls::pki_types::ServerName::try_from("bank.example").unwrap();
        let err = verifier
            .verify_server_cert(
                &forged.key.cert[0],
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap_err();
        assert!(format!("{err:?}").contains("NameConstraint"), "{err:?}");
    }
}

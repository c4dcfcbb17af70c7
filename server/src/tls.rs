//! TLS with rustls, as etcd's transport security: the client port served
//! over https with `--cert-file`, `--key-file`, `--trusted-ca-file`,
//! `--client-cert-auth` and `--auto-tls`, the peer port with their
//! `--peer-*` twins; and the client side of it, for raftkvctl (`--cacert`,
//! `--cert`, `--key`, `--insecure-skip-tls-verify`) and for a member's
//! calls to other members' peer URLs.
//!
//! Better than etcd in one way: a certificate and key are read again when
//! their files change (checked at most once a second, on a handshake), so
//! a certificate renewed on disk (cert-manager rewriting a Secret) is
//! served without a restart; a half-written pair keeps the previous one.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the certificate files are looked at again.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// One port's TLS settings (etcd's `TLSInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub auto_tls: bool,
}

impl TlsInfo {
    /// No certificate to serve (etcd's `TLSInfo.Empty`, and no auto TLS).
    pub fn is_empty(&self) -> bool {
        self.cert_file.is_none() && self.key_file.is_none() && !self.auto_tls
    }

    /// Any TLS setting given at all.
    pub fn is_set(&self) -> bool {
        !self.is_empty() || self.trusted_ca_file.is_some() || self.client_cert_auth
    }
}

/// raftkv's crypto: aws-lc-rs, which (unlike ring) handles P-521 keys, as
/// in etcd's `--auto-tls` certificates.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Makes [`provider`] the process's default, for the TLS that tonic sets
/// up (key exchange, a client certificate's signatures). The binaries
/// call it first thing: with both ring and aws-lc-rs compiled in, rustls
/// has no default of its own.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("open {}: {}", path.display(), go_error(&e)))
}

/// An I/O error as Go prints it (etcd's messages): "no such file or
/// directory", not "No such file or directory (os error 2)".
fn go_error(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match e.raw_os_error() {
        Some(code) => text.trim_end_matches(&format!(" (os error {code})")).to_owned(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// Every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| format!("{}: no private key found ({e})", path.display()))
}

/// The CA certificates of a PEM bundle, as a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    CertifiedKey::from_der(chain, key_der, provider)
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))
}

/// What a file looked like when it was read: a rewrite changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(SystemTime, u64, u64)>);

impl Stamp {
    fn of(path: &Path) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp(std::fs::metadata(path).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.ino(), m.len())))
    }
}

struct Loaded {
    stamps: (Stamp, Stamp),
    checked: Instant,
    key: Arc<CertifiedKey>,
}

/// Serves the certificate and key of two files, read again when either
/// changes.
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert").field("cert", &self.cert).field("key", &self.key).finish()
    }
}

impl ReloadingCert {
    /// Reads the pair once: a server must not start on a pair it cannot
    /// serve.
    pub fn new(cert: PathBuf, key: PathBuf, provider: Arc<CryptoProvider>) -> Result<Self, String> {
        let stamps = (Stamp::of(&cert), Stamp::of(&key));
        let pair = load_pair(&cert, &key, &provider)?;
        Ok(ReloadingCert { cert, key, provider, loaded: Mutex::new(Loaded { stamps, checked: Instant::now(), key: Arc::new(pair) }) })
    }

    /// The pair to serve now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.loaded.lock();
        if loaded.checked.elapsed() >= RELOAD_CHECK {
            loaded.checked = Instant::now();
            let stamps = (Stamp::of(&self.cert), Stamp::of(&self.key));
            if stamps != loaded.stamps {
                match load_pair(&self.cert, &self.key, &self.provider) {
                    Ok(pair) => {
                        tracing::info!(cert = %self.cert.display(), key = %self.key.display(), "serving a renewed certificate");
                        loaded.key = Arc::new(pair);
                        loaded.stamps = stamps;
                    }
                    // A pair caught half written (the certificate renewed,
                    // not yet its key): keep the previous one, look again.
                    Err(e) => tracing::warn!(error = %e, "cannot load the renewed certificate; serving the previous one"),
                }
            }
        }
        loaded.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The certificate and key `--auto-tls` serves: generated once into `dir`
/// (etcd's `<data-dir>/fixtures/client`) for `hosts`, valid a year, and
/// kept across restarts, as etcd's `SelfCert`.
pub fn self_signed(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), String> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec()).map_err(|e| format!("auto TLS: {e}"))?;
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "raftkv");
    params.distinguished_name.push(rcgen::DnType::CommonName, "raftkv");
    let now = SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + Duration::from_secs(365 * 24 * 3600)).into();
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let pair = rcgen::KeyPair::generate().map_err(|e| format!("auto TLS: {e}"))?;
    let signed = params.self_signed(&pair).map_err(|e| format!("auto TLS: {e}"))?;
    write_private(&key, pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert, signed.pem()).map_err(|e| format!("cannot write {}: {e}", cert.display()))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed certificate (--auto-tls)");
    Ok((cert, key))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The server side of a port's TLS: its certificate (from files, or
/// generated into `auto_dir` for `hosts`), TLS 1.2 and 1.3, and client
/// certificates signed by `--trusted-ca-file` required when it is given
/// (with or without `--client-cert-auth`, as etcd).
pub fn server_config(info: &TlsInfo, auto_dir: &Path, hosts: &[String]) -> Result<Arc<ServerConfig>, String> {
    let provider = provider();
    let (cert, key) = match (&info.cert_file, &info.key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) if info.auto_tls => self_signed(auto_dir, hosts)?,
        _ => return Err("--cert-file and --key-file must be given together".into()),
    };
    let resolver = Arc::new(ReloadingCert::new(cert, key, provider.clone())?);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match &info.trusted_ca_file {
        Some(ca) => {
            let roots = Arc::new(load_roots(ca)?);
            // As etcd: a trusted CA alone already requires a client
            // certificate it signed (etcd's TLSInfo.ServerConfig).
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            builder.with_client_cert_verifier(verifier.build().map_err(|e| format!("{}: {e}", ca.display()))?)
        }
        None if info.client_cert_auth => return Err("--client-cert-auth requires --trusted-ca-file".into()),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    // gRPC clients (grpc-go since 1.67) insist on ALPN "h2".
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What a port checks of a client certificate beyond its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCheck {
    /// etcd's peer listener: a certificate with IP or DNS names must name
    /// the address it connects from (an IP listed, or a DNS name that
    /// resolves to it), so a certificate copied to another machine is
    /// refused; one without names is taken.
    SanMatchesRemote,
}

/// Whether the client certificate `der`, presented from `remote`, names
/// that address (see [`ClientCheck::SanMatchesRemote`]).
async fn san_matches(der: &[u8], remote: std::net::IpAddr) -> Result<(), String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("cannot parse the client certificate: {e}"))?;
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.clone(),
        Ok(None) => return Ok(()),
        Err(e) => return Err(format!("cannot read the client certificate's names: {e}")),
    };
    let remote = remote.to_canonical();
    let mut ips = Vec::new();
    let mut dns = Vec::new();
    for name in names {
        match name {
            GeneralName::IPAddress(b) => match b.len() {
                4 => ips.push(std::net::IpAddr::from(<[u8; 4]>::try_from(b).unwrap_or_default())),
                16 => ips.push(std::net::IpAddr::from(<[u8; 16]>::try_from(b).unwrap_or_default()).to_canonical()),
                _ => {}
            },
            GeneralName::DNSName(d) => dns.push(d.to_owned()),
            _ => {}
        }
    }
    if ips.is_empty() && dns.is_empty() || ips.contains(&remote) {
        return Ok(());
    }
    // As etcd: the remote address's reverse name, against the names and
    // the wildcards' suffixes (a peer certificate for
    // `*.demo-peer.ns.svc`, and a pod connecting from an address whose
    // name is `demo-1.demo-peer.ns.svc`), then the names looked up.
    let (wildcards, names): (Vec<&String>, Vec<&String>) = dns.iter().partition(|d| d.starts_with("*."));
    let reverse = tokio::task::spawn_blocking(move || reverse_name(remote)).await.unwrap_or_else(|e| Err(e.to_string()));
    if let Ok(reverse) = reverse.as_deref().map(|r| r.trim_end_matches('.'))
        && (wildcards.iter().any(|w| reverse.ends_with(&w[1..])) || names.iter().any(|n| n.as_str() == reverse))
    {
        return Ok(());
    }
    for name in names {
        if let Ok(addrs) = tokio::net::lookup_host((name.as_str(), 0)).await
            && addrs.into_iter().any(|a| a.ip().to_canonical() == remote)
        {
            return Ok(());
        }
    }
    let named = match reverse {
        Ok(name) => format!("named {name}"),
        Err(e) => format!("no name: {e}"),
    };
    Err(format!("the client certificate is valid for {ips:?} {dns:?}, not for {remote} ({named})"))
}

/// The name of `ip` (getnameinfo: /etc/hosts, then DNS), if it has one.
fn reverse_name(ip: std::net::IpAddr) -> Result<String, String> {
    dns_lookup::lookup_addr(&ip).map_err(|e| e.to_string())
}

/// Connections accepted on `listener` once their TLS handshake is done;
/// each handshakes on a task of its own, so a slow client holds up no
/// other. A connection that fails its handshake (plaintext to a TLS port,
/// a certificate not signed by the trusted CA) or `check` is logged and
/// closed, as etcd's "rejected connection".
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    check: Option<ClientCheck>,
) -> impl futures::Stream<Item = io::Result<TlsStream<TcpStream>>> + Send + 'static {
    let acceptor = TlsAcceptor::from(config);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, as
                        // every accept loop does.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                // The server stopped: let the port go.
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        if check == Some(ClientCheck::SanMatchesRemote)
                            && let Some(cert) = stream.get_ref().1.peer_certificates().and_then(|c| c.first())
                            && let Err(e) = san_matches(cert, peer.ip()).await
                        {
                            tracing::warn!(remote = %peer, error = %e, "rejected connection");
                            return;
                        }
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::warn!(remote = %peer, error = %e, "rejected connection (TLS handshake failed)"),
                    Err(_) => tracing::warn!(remote = %peer, "rejected connection (TLS handshake timed out)"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// How a client of raftkv (raftkvctl, a member calling another) reaches
/// https:// endpoints: etcdctl's `--cacert`, `--cert`, `--key` and
/// `--insecure-skip-tls-verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CAs to verify servers with (none: the system's).
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key to present.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate (encrypted, not authenticated).
    pub skip_verify: bool,
    /// Endpoints without a scheme use TLS (etcdctl: when `--cacert`,
    /// `--cert` or `--key` is given, or `--insecure-transport=false`).
    pub by_default: bool,
}

impl ClientTls {
    /// Whether `url` is reached over TLS: https:// always, http:// never,
    /// no scheme as `by_default` says.
    pub fn uses_tls(&self, url: &str) -> bool {
        if url.starts_with("https://") {
            true
        } else if url.starts_with("http://") {
            false
        } else {
            self.by_default
        }
    }

    /// Whether any of `urls` is reached over TLS.
    pub fn any_tls(&self, urls: &[String]) -> bool {
        urls.iter().any(|u| self.uses_tls(u))
    }
}

/// Connection settings of a tonic endpoint (what etcd-client's
/// `ConnectOptions` sets on its own endpoints).
#[derive(Debug, Clone, Copy, Default)]
pub struct Dial {
    pub connect_timeout: Option<Duration>,
    pub timeout: Option<Duration>,
    /// (interval, timeout) of HTTP/2 keep-alive pings.
    pub keep_alive: Option<(Duration, Duration)>,
}

/// A tonic endpoint for `url`, over TLS as `tls` says.
pub fn endpoint(url: &str, tls: &ClientTls, dial: &Dial) -> Result<tonic::transport::Endpoint, String> {
    use tonic::transport::{ClientTlsConfig, Endpoint, Identity};
    let secure = tls.uses_tls(url);
    let bare = url.trim_start_matches("https://").trim_start_matches("http://");
    let full = format!("{}://{bare}", if secure { "https" } else { "http" });
    let mut ep = Endpoint::from_shared(full.clone()).map_err(|e| format!("invalid endpoint {url:?}: {e}"))?;
    if secure {
        let mut config = ClientTlsConfig::new().assume_http2(true);
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        } else if tls.cert_file.is_some() || tls.key_file.is_some() {
            return Err("a client certificate needs both --cert and --key".into());
        }
        let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = if tls.skip_verify {
            Arc::new(AnyServerCert(provider()))
        } else {
            let roots = match &tls.ca_file {
                Some(ca) => load_roots(ca)?,
                None => native_roots()?,
            };
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("TLS for {full}: {e}"))?
        };
        ep = ep.tls_config_with_verifier(config, verifier).map_err(|e| format!("TLS for {full}: {e}"))?;
    }
    if let Some((interval, timeout)) = dial.keep_alive {
        ep = ep.keep_alive_while_idle(true).http2_keep_alive_interval(interval).keep_alive_timeout(timeout);
    }
    if let Some(t) = dial.timeout {
        ep = ep.timeout(t);
    }
    if let Some(t) = dial.connect_timeout {
        ep = ep.connect_timeout(t);
    }
    Ok(ep.tcp_nodelay(true))
}

/// The system's CAs (what etcdctl verifies with when given no `--cacert`).
fn native_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!("no --cacert given and no system CA certificates found ({:?})", found.errors));
    }
    Ok(roots)
}

/// An etcd client balancing over `urls`, over TLS as `tls` says (the
/// client's own options, such as a user, as given).
pub async fn connect(
    urls: &[String],
    tls: &ClientTls,
    dial: &Dial,
    options: Option<etcd_client::ConnectOptions>,
) -> Result<etcd_client::Client, etcd_client::Error> {
    let endpoints = urls.iter().map(|u| endpoint(u, tls, dial)).collect::<Result<Vec<_>, _>>().map_err(etcd_client::Error::InvalidArgs)?;
    if endpoints.is_empty() {
        return Err(etcd_client::Error::InvalidArgs("empty endpoints".into()));
    }
    let channel = tonic::transport::Channel::balance_list(endpoints.into_iter());
    etcd_client::Client::from_channel(etcd_client::Channel::Tonic(channel), options).await
}

/// `--insecure-skip-tls-verify`: any certificate is taken; the handshake's
/// signatures are still checked, so the connection is encrypted to whoever
/// holds the key of the certificate shown.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "test CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("CA");
        (rcgen::Issuer::new(params, key), cert.pem())
    }

    fn leaf(issuer: &rcgen::Issuer<'static, rcgen::KeyPair>, cn: &str) -> (String, String) {
        leaf_for(issuer, cn, &["127.0.0.1", "localhost"])
    }

    fn leaf_for(issuer: &rcgen::Issuer<'static, rcgen::KeyPair>, cn: &str, hosts: &[&str]) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, issuer).expect("leaf");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_renewed_pair_is_served_and_a_half_written_one_is_not() {
        let dir = tempfile::tempdir().expect("dir");
        let (issuer, _) = ca();
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let (c1, k1) = leaf(&issuer, "one");
        std::fs::write(&cert_path, &c1).expect("write");
        std::fs::write(&key_path, &k1).expect("write");
        let r = ReloadingCert::new(cert_path.clone(), key_path.clone(), provider()).expect("load");
        let first = r.current().cert[0].clone();

        // The certificate renewed, its key not yet: the old pair stays.
        let (c2, k2) = leaf(&issuer, "two");
        std::fs::write(&cert_path, &c2).expect("write");
        r.loaded.lock().checked -= RELOAD_CHECK;
        assert_eq!(r.current().cert[0], first, "a mismatched pair must not be served");

        std::fs::write(&key_path, &k2).expect("write");
        r.loaded.lock().checked -= RELOAD_CHECK;
        let second = r.current().cert[0].clone();
        assert_ne!(second, first, "the renewed pair must be served");
        assert_eq!(second, CertificateDer::from_pem_slice(c2.as_bytes()).expect("pem"));
    }

    #[test]
    fn auto_tls_generates_once_and_keeps_the_pair() {
        let dir = tempfile::tempdir().expect("dir");
        let fixtures = dir.path().join("fixtures/client");
        let (c, k) = self_signed(&fixtures, &["127.0.0.1".to_string()]).expect("generate");
        let before = std::fs::read(&c).expect("read");
        load_pair(&c, &k, &provider()).expect("a matching pair");
        let (c2, _) = self_signed(&fixtures, &["127.0.0.1".to_string()]).expect("again");
        assert_eq!(std::fs::read(c2).expect("read"), before, "a restart keeps the generated certificate");
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = TlsInfo { cert_file: Some(dir.path().join("none.pem")), key_file: Some(dir.path().join("none-key.pem")), ..Default::default() };
        let e = server_config(&missing, dir.path(), &[]).expect_err("missing files");
        assert!(e.starts_with("open ") && e.contains("none.pem"), "{e}");
        let (issuer, ca_pem) = ca();
        let (c, k) = leaf(&issuer, "server");
        std::fs::write(dir.path().join("c.pem"), c).expect("write");
        std::fs::write(dir.path().join("k.pem"), k).expect("write");
        std::fs::write(dir.path().join("ca.pem"), ca_pem).expect("write");
        let only_auth = TlsInfo {
            cert_file: Some(dir.path().join("c.pem")),
            key_file: Some(dir.path().join("k.pem")),
            client_cert_auth: true,
            ..Default::default()
        };
        assert_eq!(server_config(&only_auth, dir.path(), &[]).expect_err("no CA"), "--client-cert-auth requires --trusted-ca-file");
        let good = TlsInfo { trusted_ca_file: Some(dir.path().join("ca.pem")), ..only_auth };
        server_config(&good, dir.path(), &[]).expect("a full setting");
        let other_key = TlsInfo { key_file: Some(dir.path().join("ca.pem")), ..good };
        assert!(server_config(&other_key, dir.path(), &[]).is_err(), "a key file without a key must be refused");
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem")
    }

    #[tokio::test]
    async fn a_peer_certificate_must_name_the_address_it_connects_from() {
        let (issuer, _) = ca();
        let local: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
        let mapped: std::net::IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        for (hosts, ok) in [
            (&["127.0.0.1"][..], true),
            (&["127.0.0.2", "127.0.0.1"][..], true),
            (&["localhost"][..], true),
            (&[][..], true),
            (&["127.0.0.2"][..], false),
            (&["db.invalid"][..], false),
        ] {
            let (cert, _) = leaf_for(&issuer, "peer", hosts);
            let got = san_matches(&der(&cert), local).await;
            assert_eq!(got.is_ok(), ok, "{hosts:?}: {got:?}");
            assert_eq!(san_matches(&der(&cert), mapped).await.is_ok(), ok, "{hosts:?} from an IPv4-mapped address");
        }
    }

    #[tokio::test]
    async fn the_peer_listener_drops_a_connection_whose_certificate_names_another_address() {
        use futures::StreamExt;
        let dir = tempfile::tempdir().expect("dir");
        let (issuer, ca_pem) = ca();
        let (server_cert, server_key) = leaf(&issuer, "server");
        let files = [("c.pem", &server_cert), ("k.pem", &server_key), ("ca.pem", &ca_pem)];
        for (name, pem) in files {
            std::fs::write(dir.path().join(name), pem).expect("write");
        }
        let info = TlsInfo {
            cert_file: Some(dir.path().join("c.pem")),
            key_file: Some(dir.path().join("k.pem")),
            trusted_ca_file: Some(dir.path().join("ca.pem")),
            client_cert_auth: true,
            auto_tls: false,
        };
        let config = server_config(&info, dir.path(), &[]).expect("server config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut accepted = Box::pin(incoming(listener, config, Some(ClientCheck::SanMatchesRemote)));
        for (hosts, ok) in [(&["127.0.0.2"][..], false), (&["127.0.0.1"][..], true)] {
            let (cert, key) = leaf_for(&issuer, "peer", hosts);
            let mut roots = RootCertStore::empty();
            roots.add(der(&ca_pem)).expect("root");
            let client = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_client_auth_cert(vec![der(&cert)], PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"))
                .expect("client config");
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let _conn = connector.connect(rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name"), tcp).await;
            let got = tokio::time::timeout(Duration::from_secs(2), accepted.next()).await;
            assert_eq!(matches!(got, Ok(Some(Ok(_)))), ok, "a client certificate for {hosts:?}");
        }
    }
}

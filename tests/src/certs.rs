//! Certificates made by the test: a CA of its own, and server and client
//! certificates it signs (valid, expired, or for another host), as PEM
//! files in a temporary directory, for the TLS tests against raftkv and
//! etcd alike.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tempfile::TempDir;

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    pub fn cert_str(&self) -> &str {
        self.cert.to_str().unwrap_or_default()
    }
    pub fn key_str(&self) -> &str {
        self.key.to_str().unwrap_or_default()
    }
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From an hour ago for a year.
    Current,
    /// Ended a day ago.
    Expired,
}

/// A CA of the test's own and the certificates it signed.
pub struct Pki {
    dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca: PathBuf,
}

impl Pki {
    /// A fresh CA named `name` (its certificate in `ca.pem`).
    pub fn new(name: &str) -> anyhow::Result<Pki> {
        let dir = tempfile::Builder::new().prefix(&format!("e2e-pki-{name}-")).tempdir()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).context("cannot write the CA")?;
        Ok(Pki { dir, issuer: Issuer::new(params, key), ca })
    }

    /// The CA certificate's file.
    pub fn ca(&self) -> &PathBuf {
        &self.ca
    }

    pub fn ca_str(&self) -> &str {
        self.ca.to_str().unwrap_or_default()
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(&self.ca)?)
    }

    /// A certificate for `hosts` (DNS names or IP addresses) with common
    /// name `cn`, good for servers and clients, written as `<file>.pem`
    /// and `<file>-key.pem`.
    pub fn issue(&self, file: &str, cn: &str, hosts: &[&str], validity: Validity) -> anyhow::Result<Pair> {
        let mut params = CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let now = SystemTime::now();
        let day = Duration::from_secs(24 * 3600);
        let (from, until) = match validity {
            Validity::Current => (now - Duration::from_secs(3600), now + 365 * day),
            Validity::Expired => (now - 30 * day, now - day),
        };
        params.not_before = from.into();
        params.not_after = until.into();
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let pair = Pair { cert: self.dir.path().join(format!("{file}.pem")), key: self.dir.path().join(format!("{file}-key.pem")) };
        std::fs::write(&pair.cert, cert.pem()).context("cannot write a certificate")?;
        std::fs::write(&pair.key, key.serialize_pem()).context("cannot write a key")?;
        Ok(pair)
    }

    /// A server certificate for loopback (127.0.0.1 and localhost).
    pub fn loopback(&self, file: &str) -> anyhow::Result<Pair> {
        self.issue(file, file, &["127.0.0.1", "localhost"], Validity::Current)
    }
}

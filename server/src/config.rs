//! etcd's flags, names and defaults, each also read from `RAFTKV_<FLAG>`
//! (for example `RAFTKV_DATA_DIR`).

use std::time::Duration;

use clap::Parser;

use crate::tls::{ClientTls, TlsInfo};

#[derive(Debug, Clone, Parser)]
#[command(name = "raftkv", version, about = "raftkv: a distributed, reliable key-value store that speaks the etcd v3 API")]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, env = "RAFTKV_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory [default: ${name}.raftkv].
    #[arg(long, env = "RAFTKV_DATA_DIR")]
    pub data_dir: Option<String>,
    /// URLs to listen on for client traffic (gRPC and HTTP on one port).
    #[arg(long, env = "RAFTKV_LISTEN_CLIENT_URLS", default_value = "http://localhost:2379")]
    pub listen_client_urls: String,
    /// List of URLs to listen on for the metrics and health endpoints (the
    /// client URLs serve them too).
    #[arg(long, env = "RAFTKV_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,
    /// This member's client URLs to advertise to the cluster.
    #[arg(long, env = "RAFTKV_ADVERTISE_CLIENT_URLS", default_value = "http://localhost:2379")]
    pub advertise_client_urls: String,
    /// URLs to listen on for peer traffic.
    #[arg(long, env = "RAFTKV_LISTEN_PEER_URLS", default_value = "http://localhost:2380")]
    pub listen_peer_urls: String,
    /// This member's peer URLs to advertise to the cluster.
    #[arg(long, env = "RAFTKV_INITIAL_ADVERTISE_PEER_URLS", default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
    /// Path to the client server TLS cert file (PEM; read again when it
    /// changes).
    #[arg(long, env = "RAFTKV_CERT_FILE", default_value = "")]
    pub cert_file: String,
    /// Path to the client server TLS key file.
    #[arg(long, env = "RAFTKV_KEY_FILE", default_value = "")]
    pub key_file: String,
    /// Enable client cert authentication.
    #[arg(long, env = "RAFTKV_CLIENT_CERT_AUTH", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub client_cert_auth: bool,
    /// Path to the client server TLS trusted CA cert file.
    #[arg(long, env = "RAFTKV_TRUSTED_CA_FILE", default_value = "")]
    pub trusted_ca_file: String,
    /// Client TLS using generated certificates.
    #[arg(long, env = "RAFTKV_AUTO_TLS", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub auto_tls: bool,
    /// Path to the peer server TLS cert file (PEM; presented to other
    /// members as a client certificate too; read again when it changes).
    #[arg(long, env = "RAFTKV_PEER_CERT_FILE", default_value = "")]
    pub peer_cert_file: String,
    /// Path to the peer server TLS key file.
    #[arg(long, env = "RAFTKV_PEER_KEY_FILE", default_value = "")]
    pub peer_key_file: String,
    /// Enable peer client cert authentication.
    #[arg(long, env = "RAFTKV_PEER_CLIENT_CERT_AUTH", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub peer_client_cert_auth: bool,
    /// Path to the peer server TLS trusted CA file.
    #[arg(long, env = "RAFTKV_PEER_TRUSTED_CA_FILE", default_value = "")]
    pub peer_trusted_ca_file: String,
    /// Peer TLS using self-generated certificates if --peer-key-file and
    /// --peer-cert-file are not provided.
    #[arg(long, env = "RAFTKV_PEER_AUTO_TLS", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub peer_auto_tls: bool,
    /// Skip verification of SAN field in client certificate for peer
    /// connections.
    #[arg(long, env = "RAFTKV_EXPERIMENTAL_PEER_SKIP_CLIENT_SAN_VERIFICATION", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub experimental_peer_skip_client_san_verification: bool,
    /// Specify auth token type and its options: 'simple', or
    /// 'jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256,ttl=5m'.
    #[arg(long, env = "RAFTKV_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// The lifetime in seconds of a simple auth token, renewed by each use.
    #[arg(long, env = "RAFTKV_AUTH_TOKEN_TTL", default_value_t = crate::auth::DEFAULT_TOKEN_TTL_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    pub auth_token_ttl: u64,
    /// Input cost of password hashes (bcrypt, 4 to 31).
    #[arg(long, env = "RAFTKV_BCRYPT_COST", default_value_t = crate::auth::DEFAULT_BCRYPT_COST, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,
    /// Initial cluster configuration for bootstrapping (name=peerURL,...).
    #[arg(long, env = "RAFTKV_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state ('new' or 'existing').
    #[arg(long, env = "RAFTKV_INITIAL_CLUSTER_STATE", default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// Force to create a new one member cluster: on a data dir, every other
    /// member is removed and this one is the sole voter (recovery when most
    /// members are lost for good; remove the flag once recovered).
    #[arg(long, env = "RAFTKV_FORCE_NEW_CLUSTER", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub force_new_cluster: bool,
    /// Initial cluster token for the cluster during bootstrap.
    #[arg(long, env = "RAFTKV_INITIAL_CLUSTER_TOKEN", default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "RAFTKV_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024)]
    pub max_request_bytes: usize,
    /// Maximum concurrent streams that each client can open at a time
    /// (HTTP/2 streams: watches, keep-alives and calls in flight on one
    /// connection).
    #[arg(long, env = "RAFTKV_MAX_CONCURRENT_STREAMS", default_value_t = u32::MAX)]
    pub max_concurrent_streams: u32,
    /// Watchers one watch stream may hold (raftkv's own bound: etcd has
    /// none); a watch created beyond it is canceled at once with
    /// "etcdserver: too many requests". 0: no bound.
    #[arg(long, env = "RAFTKV_MAX_WATCHERS_PER_STREAM", default_value_t = 10_000)]
    pub max_watchers_per_stream: usize,
    /// Frequency duration of server-to-client ping to check if a connection
    /// is alive (0 to disable).
    #[arg(long, env = "RAFTKV_GRPC_KEEPALIVE_INTERVAL", default_value = "2h", value_parser = parse_duration)]
    pub grpc_keepalive_interval: Duration,
    /// Additional duration of wait before closing a non-responsive
    /// connection (0 to disable).
    #[arg(long, env = "RAFTKV_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub grpc_keepalive_timeout: Duration,
    /// Comma-separated white list of origins for CORS, or cross-origin
    /// resource sharing (* means allow all): the HTTP answers of the client
    /// port (the JSON gateway, /health, /version, /metrics) carry the CORS
    /// headers for them, as etcd's.
    #[arg(long, env = "RAFTKV_CORS", default_value = "*", value_parser = parse_cors)]
    pub cors: String,
    /// Comma-separated acceptable hostnames from HTTP client requests, if
    /// the server is not secure (* or empty means allow all): a plaintext
    /// HTTP request naming another host in its Host header is refused with
    /// 421, as etcd refuses it (DNS rebinding, CVE-2018-5702).
    #[arg(long, env = "RAFTKV_HOST_WHITELIST", default_value = "*")]
    pub host_whitelist: String,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "RAFTKV_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Interpret 'auto-compaction-retention' as 'periodic' (a duration) or 'revision'.
    #[arg(long, env = "RAFTKV_AUTO_COMPACTION_MODE", default_value = "periodic", value_parser = ["periodic", "revision"])]
    pub auto_compaction_mode: String,
    /// Auto compaction retention: a duration ('1h', '30m'; a bare number is
    /// hours) in periodic mode, a number of revisions in revision mode. 0
    /// disables auto compaction.
    #[arg(long, env = "RAFTKV_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// Number of committed entries between two truncations of the raft log.
    #[arg(long, env = "RAFTKV_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Entries kept behind a truncation for slow followers to catch up
    /// from the log rather than from a snapshot.
    #[arg(long, env = "RAFTKV_SNAPSHOT_CATCHUP_ENTRIES", default_value_t = 5000)]
    pub snapshot_catchup_entries: u64,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "RAFTKV_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "RAFTKV_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Checkpoint leases' remaining TTLs through raft, so they survive a
    /// leader change and a restart (etcd 3.4 defaults to false; raftkv, like
    /// etcd 3.6, to true).
    #[arg(long, env = "RAFTKV_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub experimental_enable_lease_checkpoint: bool,
    /// How often the leader checkpoints leases' remaining TTLs.
    #[arg(long, env = "RAFTKV_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub experimental_lease_checkpoint_interval: Duration,
    /// Sets the maximum size (in bytes) that the etcd backend database may
    /// consume. Exceeding this triggers an alarm and puts etcd in read-only
    /// mode. Set to 0 to use the default 2GiB limit (negative: no quota).
    #[arg(long, env = "RAFTKV_QUOTA_BACKEND_BYTES", default_value_t = 0, allow_negative_numbers = true)]
    pub quota_backend_bytes: i64,
    /// Enable to check data corruption before serving any client/peer traffic.
    #[arg(long, env = "RAFTKV_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub experimental_initial_corrupt_check: bool,
    /// Duration of time between cluster corruption check passes (0: none).
    #[arg(long, env = "RAFTKV_EXPERIMENTAL_CORRUPT_CHECK_TIME", default_value = "0s", value_parser = parse_duration_or_off)]
    pub experimental_corrupt_check_time: Duration,
    /// Log level: trace, debug, info, warn, error.
    #[arg(long, env = "RAFTKV_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format: text or json.
    #[arg(long, env = "RAFTKV_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Auto compaction, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    Periodic(Duration),
    Revision(i64),
}

impl Config {
    /// The quota in force: etcd's 2 GiB default for 0, none when negative.
    pub fn quota(&self) -> Option<u64> {
        const DEFAULT: u64 = 2 << 30;
        match self.quota_backend_bytes {
            0 => Some(DEFAULT),
            q if q < 0 => None,
            q => Some(q as u64),
        }
    }

    pub fn data_dir(&self) -> String {
        self.data_dir.clone().unwrap_or_else(|| format!("{}.raftkv", self.name))
    }

    pub fn request_timeout(&self) -> Duration {
        // etcd: 5 s plus two election timeouts.
        Duration::from_secs(5) + Duration::from_millis(2 * self.election_timeout)
    }

    pub fn auto_compaction(&self) -> Result<AutoCompaction, String> {
        let r = self.auto_compaction_retention.trim();
        if self.auto_compaction_mode == "revision" {
            let n: i64 = r.parse().map_err(|_| format!("invalid --auto-compaction-retention {r:?}: want a number of revisions"))?;
            return Ok(if n <= 0 { AutoCompaction::Off } else { AutoCompaction::Revision(n) });
        }
        let d = match r.parse::<u64>() {
            Ok(hours) => Duration::from_secs(hours * 3600),
            Err(_) => humantime::parse_duration(r).map_err(|e| format!("invalid --auto-compaction-retention {r:?}: {e}"))?,
        };
        Ok(if d.is_zero() { AutoCompaction::Off } else { AutoCompaction::Periodic(d) })
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval == 0 || self.election_timeout < 5 * self.heartbeat_interval {
            return Err(format!(
                "--election-timeout[{}ms] should be at least 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout, self.heartbeat_interval
            ));
        }
        self.auto_compaction()?;
        self.validate_tls()?;
        if let Some(jwt) = crate::auth::JwtConfig::parse(&self.auth_token)? {
            crate::auth::Jwt::new(&jwt)?;
        }
        Ok(())
    }

    /// The client port's TLS settings.
    pub fn client_tls(&self) -> TlsInfo {
        let path = |s: &str| (!s.is_empty()).then(|| std::path::PathBuf::from(s));
        TlsInfo {
            cert_file: path(&self.cert_file),
            key_file: path(&self.key_file),
            trusted_ca_file: path(&self.trusted_ca_file),
            client_cert_auth: self.client_cert_auth,
            auto_tls: self.auto_tls,
        }
    }

    /// The peer port's TLS settings.
    pub fn peer_tls(&self) -> TlsInfo {
        let path = |s: &str| (!s.is_empty()).then(|| std::path::PathBuf::from(s));
        TlsInfo {
            cert_file: path(&self.peer_cert_file),
            key_file: path(&self.peer_key_file),
            trusted_ca_file: path(&self.peer_trusted_ca_file),
            client_cert_auth: self.peer_client_cert_auth,
            auto_tls: self.peer_auto_tls,
        }
    }

    /// How this member reaches other members' peer URLs, as etcd's peer
    /// transport: their certificates verified with `--peer-trusted-ca-file`
    /// (the system's CAs without it), its own peer certificate presented as
    /// the client certificate, nothing verified under `--peer-auto-tls`
    /// (self-signed certificates have no CA to verify them with).
    pub fn peer_tls_as_client(&self) -> ClientTls {
        let tls = self.peer_tls();
        ClientTls {
            skip_verify: tls.auto_tls && tls.cert_file.is_none(),
            ca_file: tls.trusted_ca_file,
            cert_file: tls.cert_file,
            key_file: tls.key_file,
            by_default: false,
        }
    }

    /// etcd's checks of the URLs against the TLS flags, and stricter where
    /// etcd only warns: TLS flags that no https:// URL uses are refused
    /// rather than ignored.
    fn validate_tls(&self) -> Result<(), String> {
        let tls = self.client_tls();
        let urls = split_urls(&self.listen_client_urls);
        for u in urls.iter().filter(|u| u.starts_with("https://")) {
            if tls.is_empty() {
                return Err(format!("TLS key/cert (--cert-file, --key-file) must be provided for client url {u} with HTTPS scheme"));
            }
        }
        let metrics = split_urls(&self.listen_metrics_urls);
        for u in metrics.iter().filter(|u| u.starts_with("https://")) {
            if tls.is_empty() {
                let host = u.trim_start_matches("https://").split('/').next().unwrap_or_default();
                return Err(format!("cannot listen on TLS for {host}: KeyFile and CertFile are not presented"));
            }
        }
        if tls.is_set() && !urls.iter().chain(&metrics).any(|u| u.starts_with("https://")) {
            return Err("TLS flags (--cert-file, --key-file, --trusted-ca-file, --client-cert-auth, --auto-tls) are set, but no --listen-client-urls or --listen-metrics-urls URL is https://".into());
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err("--cert-file and --key-file must be given together".into());
        }
        if tls.client_cert_auth && tls.trusted_ca_file.is_none() {
            return Err("--client-cert-auth requires --trusted-ca-file".into());
        }

        let peer = self.peer_tls();
        let listen = split_urls(&self.listen_peer_urls);
        for u in listen.iter().filter(|u| u.starts_with("https://")) {
            if peer.is_empty() {
                let host = u.trim_start_matches("https://").split('/').next().unwrap_or_default();
                return Err(format!("cannot listen on TLS for {host}: KeyFile and CertFile are not presented"));
            }
        }
        if peer.is_set() && !listen.iter().any(|u| u.starts_with("https://")) {
            return Err("peer TLS flags (--peer-cert-file, --peer-key-file, --peer-trusted-ca-file, --peer-client-cert-auth, --peer-auto-tls) are set, but no --listen-peer-urls URL is https://".into());
        }
        if self.experimental_peer_skip_client_san_verification && peer.trusted_ca_file.is_none() {
            return Err("--experimental-peer-skip-client-san-verification needs --peer-trusted-ca-file (without it no client certificate is asked for)".into());
        }
        if peer.cert_file.is_some() != peer.key_file.is_some() {
            return Err("--peer-cert-file and --peer-key-file must be given together".into());
        }
        if peer.client_cert_auth && peer.trusted_ca_file.is_none() {
            return Err("--peer-client-cert-auth requires --peer-trusted-ca-file".into());
        }
        if peer.auto_tls && peer.cert_file.is_none() && peer.trusted_ca_file.is_some() {
            return Err("--peer-auto-tls makes a self-signed certificate that no --peer-trusted-ca-file verifies: the other members \
                 would refuse it; give --peer-cert-file and --peer-key-file signed by that CA"
                .into());
        }
        // The other members dial the advertised URLs: a scheme this member
        // does not listen with would fail every connection.
        for u in split_urls(&self.initial_advertise_peer_urls) {
            let scheme = if u.starts_with("https://") { "https://" } else { "http://" };
            if !listen.iter().any(|l| l.starts_with(scheme)) {
                return Err(format!("--initial-advertise-peer-urls {u} uses {scheme}, but no --listen-peer-urls URL does"));
            }
        }
        Ok(())
    }
}

/// A Go-style duration ("5m", "1s", "500ms"), as etcd's flags take.
/// A duration where 0 means "off".
fn parse_duration_or_off(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// etcd's `--cors`: `*`, or URLs as etcd's types.NewURLs takes them, with
/// its messages.
fn parse_cors(s: &str) -> Result<String, String> {
    if s == "*" {
        return Ok(s.to_string());
    }
    for u in s.split(',') {
        let (scheme, rest) = u.split_once("://").unwrap_or(("", u));
        if !["http", "https", "unix", "unixs"].contains(&scheme) {
            return Err(format!("URL scheme must be http, https, unix, or unixs: {u}"));
        }
        let (host, path) = rest.find(['/', '?', '#']).map_or((rest, ""), |i| rest.split_at(i));
        if !host.rsplit_once(':').is_some_and(|(h, port)| !h.is_empty() && port.bytes().all(|b| b.is_ascii_digit())) {
            return Err(format!("URL address does not have the form \"host:port\": {u}"));
        }
        if !path.is_empty() {
            return Err(format!("URL must not contain a path: {u}"));
        }
    }
    Ok(s.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    if d.is_zero() { Err(format!("invalid duration {s:?}: must be positive")) } else { Ok(d) }
}

/// Splits a comma-separated URL list.
pub fn split_urls(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect()
}

/// The host:port of an http(s) URL, resolving "localhost" to loopback.
pub fn url_addr(url: &str) -> Result<std::net::SocketAddr, String> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = hostport.replace("localhost", "127.0.0.1");
    use std::net::ToSocketAddrs;
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("invalid URL {url:?}: no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Config {
        Config::parse_from(std::iter::once("raftkv").chain(args.iter().copied()))
    }

    #[test]
    fn auto_compaction_retention_has_etcds_meaning() {
        assert_eq!(cfg(&[]).auto_compaction(), Ok(AutoCompaction::Off));
        assert_eq!(cfg(&["--auto-compaction-retention", "1"]).auto_compaction(), Ok(AutoCompaction::Periodic(Duration::from_secs(3600))));
        assert_eq!(cfg(&["--auto-compaction-retention", "30m"]).auto_compaction(), Ok(AutoCompaction::Periodic(Duration::from_secs(1800))));
        assert_eq!(
            cfg(&["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1000"]).auto_compaction(),
            Ok(AutoCompaction::Revision(1000))
        );
        assert!(cfg(&["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1h"]).auto_compaction().is_err());
    }

    #[test]
    fn cors_origins_are_checked_as_etcd_checks_them() {
        assert_eq!(parse_cors("*"), Ok("*".into()));
        assert_eq!(parse_cors("http://a.example:8080,https://b.example:443"), Ok("http://a.example:8080,https://b.example:443".into()));
        assert_eq!(parse_cors("http://a.example"), Err("URL address does not have the form \"host:port\": http://a.example".into()));
        assert_eq!(parse_cors("a.example"), Err("URL scheme must be http, https, unix, or unixs: a.example".into()));
        assert_eq!(parse_cors(""), Err("URL scheme must be http, https, unix, or unixs: ".into()));
        assert_eq!(parse_cors("*,http://a.example:1"), Err("URL scheme must be http, https, unix, or unixs: *".into()));
        assert_eq!(parse_cors("http://a.example:1/x"), Err("URL must not contain a path: http://a.example:1/x".into()));
    }

    #[test]
    fn defaults_are_etcds() {
        let c = cfg(&[]);
        assert_eq!(c.data_dir(), "default.raftkv");
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(url_addr(&c.listen_client_urls), Ok("127.0.0.1:2379".parse().expect("addr")));
    }
}

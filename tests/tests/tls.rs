//! TLS on the client port (issue 17, part 1): etcd's --cert-file,
//! --key-file, --trusted-ca-file, --client-cert-auth and --auto-tls, and on
//! the peer port with their --peer-* twins, with certificates made by the
//! test. Each scenario runs against etcd 3.4 and
//! raftkv alike, with real etcdctl 3.4 and raftkvctl, and every outcome is
//! the one written here: etcd proves the expectations, raftkv is held to
//! them.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use etcd_client::{Certificate, Identity, TlsOptions};
use raftkv_tests::binaries::{self, ETCDCTL};
use raftkv_tests::certs::{Pair, Pki, Validity};
use raftkv_tests::cluster::{Cluster, ClusterTls, UNHEALTHY, eventually, retry_while};
use raftkv_tests::{Flavor, Server, selected_flavors};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// The CLIs under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cli {
    Etcdctl,
    Raftkvctl,
}

impl Cli {
    fn program(self) -> anyhow::Result<std::path::PathBuf> {
        match self {
            Cli::Etcdctl => Ok(ETCDCTL.into()),
            Cli::Raftkvctl => binaries::raftkvctl(),
        }
    }
}

/// Runs one command; (succeeded, stdout and stderr).
fn run(cli: Cli, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = Command::new(cli.program()?)
        .args(["--dial-timeout=2s", "--command-timeout=4s"])
        .args(args)
        .env("ETCDCTL_API", "3")
        .output()
        .with_context(|| format!("cannot run {cli:?}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// One row of a matrix: the CLI's arguments, and whether it must succeed.
struct Row<'a> {
    what: &'a str,
    args: Vec<String>,
    ok: bool,
}

/// Runs every row with both CLIs; fails naming each row that did not go
/// as written.
fn check_rows(flavor: Flavor, rows: &[Row<'_>]) -> anyhow::Result<()> {
    let mut wrong = Vec::new();
    for cli in [Cli::Etcdctl, Cli::Raftkvctl] {
        for row in rows {
            let args: Vec<&str> = row.args.iter().map(String::as_str).collect();
            let (ok, out) = run(cli, &args)?;
            if ok != row.ok {
                wrong.push(format!("{cli:?} against {}: {} ({}) {}: {out}", flavor.name(), row.what, args.join(" "), if row.ok { "failed" } else { "succeeded" }));
            }
        }
    }
    if !wrong.is_empty() {
        bail!("{}", wrong.join("\n"));
    }
    Ok(())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// The harness's own client options for a server of `pki`.
fn harness_tls(pki: &Pki, client: Option<&Pair>) -> anyhow::Result<TlsOptions> {
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(pki.ca_pem()?));
    if let Some(c) = client {
        tls = tls.identity(Identity::from_pem(std::fs::read(&c.cert)?, std::fs::read(&c.key)?));
    }
    Ok(tls)
}

fn server_flags(pair: &Pair) -> Vec<String> {
    strings(&["--cert-file", pair.cert_str(), "--key-file", pair.key_str()])
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_reach_a_tls_port_only_with_a_trusted_server_certificate() -> anyhow::Result<()> {
    let pki = Pki::new("main")?;
    let other = Pki::new("other")?;
    let cert = pki.loopback("server")?;
    for flavor in selected_flavors()? {
        let flags = server_flags(&cert);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let server = Server::start_tls(flavor, harness_tls(&pki, None)?, &flags).await?;
        let https = server.endpoint();
        let http = format!("http://127.0.0.1:{}", server.client_port());
        let bare = format!("127.0.0.1:{}", server.client_port());
        let mut client = server.client().await?;
        client.put("k", "v", None).await.context("the harness's own TLS client")?;
        let rows = [
            Row { what: "the right CA", args: strings(&["--endpoints", &https, "--cacert", pki.ca_str(), "get", "k"]), ok: true },
            Row { what: "the right CA, no scheme", args: strings(&["--endpoints", &bare, "--cacert", pki.ca_str(), "put", "k", "v2"]), ok: true },
            Row { what: "another CA", args: strings(&["--endpoints", &https, "--cacert", other.ca_str(), "get", "k"]), ok: false },
            Row { what: "the system's CAs", args: strings(&["--endpoints", &https, "get", "k"]), ok: false },
            Row { what: "plaintext to the TLS port", args: strings(&["--endpoints", &http, "get", "k"]), ok: false },
            Row {
                what: "verification skipped",
                args: strings(&["--endpoints", &https, "--insecure-transport=false", "--insecure-skip-tls-verify", "get", "k"]),
                ok: true,
            },
        ];
        check_rows(flavor, &rows)?;
        // What the rows wrote is there (through the CLI that succeeded).
        let (ok, out) = run(Cli::Raftkvctl, &["--endpoints", &https, "--cacert", pki.ca_str(), "get", "k", "--print-value-only"])?;
        assert!(ok && out.trim() == "v2", "{} after the rows: {out}", flavor.name());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_for_another_host_or_expired_is_refused_by_clients() -> anyhow::Result<()> {
    let pki = Pki::new("main")?;
    let elsewhere = pki.issue("elsewhere", "elsewhere", &["db.example.com"], Validity::Current)?;
    let expired = pki.issue("expired", "expired", &["127.0.0.1", "localhost"], Validity::Expired)?;
    for flavor in selected_flavors()? {
        for (what, cert) in [("for another host", &elsewhere), ("expired", &expired)] {
            let flags = server_flags(cert);
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            // The harness cannot check readiness through a certificate it
            // refuses: start, then wait for the port with a CLI that skips
            // verification.
            let mut server = Server::single(flavor, &flags)?;
            server.set_tls(harness_tls(&pki, None)?);
            server.spawn()?;
            let https = server.endpoint();
            wait_for(&https, &["--insecure-transport=false", "--insecure-skip-tls-verify"]).await?;
            let rows = [Row { what, args: strings(&["--endpoints", &https, "--cacert", pki.ca_str(), "get", "k"]), ok: false }];
            check_rows(flavor, &rows)?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn client_cert_auth_takes_only_certificates_of_the_trusted_ca() -> anyhow::Result<()> {
    let pki = Pki::new("main")?;
    let other = Pki::new("other")?;
    let server_cert = pki.loopback("server")?;
    let alice = pki.issue("alice", "alice", &["127.0.0.1"], Validity::Current)?;
    let stranger = other.issue("stranger", "stranger", &["127.0.0.1"], Validity::Current)?;
    let stale = pki.issue("stale", "stale", &["127.0.0.1"], Validity::Expired)?;
    // etcd requires client certificates as soon as a trusted CA is given,
    // with or without --client-cert-auth.
    let settings: [&[&str]; 2] = [&["--client-cert-auth", "--trusted-ca-file", pki.ca_str()], &["--trusted-ca-file", pki.ca_str()]];
    for (flavor, setting) in selected_flavors()?.into_iter().flat_map(|f| settings.iter().map(move |s| (f, *s))) {
        let mut flags = server_flags(&server_cert);
        flags.extend(strings(setting));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let server = Server::start_tls(flavor, harness_tls(&pki, Some(&alice))?, &flags).await?;
        let https = server.endpoint();
        server.client().await?.put("k", "v", None).await.context("the harness with alice's certificate")?;
        let with = |pair: &Pair| strings(&["--endpoints", &https, "--cacert", pki.ca_str(), "--cert", pair.cert_str(), "--key", pair.key_str(), "get", "k"]);
        let rows = [
            Row { what: "no client certificate", args: strings(&["--endpoints", &https, "--cacert", pki.ca_str(), "get", "k"]), ok: false },
            Row { what: "a certificate of the trusted CA", args: with(&alice), ok: true },
            Row { what: "a certificate of another CA", args: with(&stranger), ok: false },
            Row { what: "an expired certificate of the trusted CA", args: with(&stale), ok: false },
        ];
        check_rows(flavor, &rows)?;
    }
    Ok(())
}

/// The certificate a TLS handshake with 127.0.0.1:`port` presents (the
/// handshake verified against `ca`).
fn served_certificate(port: u16, ca: &Path) -> anyhow::Result<CertificateDer<'static>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca)?)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1")?.to_owned())?;
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port))?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    let certs = conn.peer_certificates().context("no certificate presented")?;
    Ok(certs[0].clone().into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_renewed_on_disk_is_served_without_a_restart() -> anyhow::Result<()> {
    let pki = Pki::new("main")?;
    let first = pki.loopback("first")?;
    let renewed = pki.loopback("renewed")?;
    let dir = tempfile::tempdir()?;
    let live = Pair { cert: dir.path().join("server.pem"), key: dir.path().join("server-key.pem") };
    std::fs::copy(&first.cert, &live.cert)?;
    std::fs::copy(&first.key, &live.key)?;
    for flavor in selected_flavors()? {
        std::fs::copy(&first.cert, &live.cert)?;
        std::fs::copy(&first.key, &live.key)?;
        let flags = server_flags(&live);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let server = Server::start_tls(flavor, harness_tls(&pki, None)?, &flags).await?;
        let mut client = server.client().await?;
        client.put("before", "1", None).await?;
        let served = served_certificate(server.client_port(), pki.ca())?;
        assert_eq!(served, CertificateDer::from_pem_file(&first.cert)?, "{}: the first certificate", flavor.name());

        // Renewed in place, as a Secret volume is: the new pair replaces
        // the files.
        std::fs::copy(&renewed.cert, &live.cert)?;
        std::fs::copy(&renewed.key, &live.key)?;
        let want = CertificateDer::from_pem_file(&renewed.cert)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The connection opened before keeps working meanwhile.
            client.put("during", "2", None).await.context("the open connection during the renewal")?;
            if served_certificate(server.client_port(), pki.ca())? == want {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} still serves the first certificate 10 s after the renewal", flavor.name());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut fresh = server.client().await?;
        let got = fresh.get("during", None).await?;
        assert_eq!(got.kvs().len(), 1, "{}: a new connection after the renewal", flavor.name());
    }
    Ok(())
}

/// Waits until `endpoint` answers a `get` from raftkvctl with `tls_args`.
async fn wait_for(endpoint: &str, tls_args: &[&str]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut args = vec!["--endpoints", endpoint];
        args.extend_from_slice(tls_args);
        args.extend_from_slice(&["get", "probe"]);
        let (ok, out) = run(Cli::Raftkvctl, &args)?;
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{endpoint} not serving within 20 s: {out}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_tls_serves_a_generated_certificate_kept_across_restarts() -> anyhow::Result<()> {
    let pki = Pki::new("main")?;
    for flavor in selected_flavors()? {
        let mut server = Server::single(flavor, &["--auto-tls"])?;
        server.set_tls(harness_tls(&pki, None)?);
        server.spawn()?;
        let https = server.endpoint();
        let skip = ["--insecure-transport=false", "--insecure-skip-tls-verify"];
        wait_for(&https, &skip).await?;
        let generated = server.data_dir().join("fixtures/client/cert.pem");
        let before = std::fs::read(&generated).with_context(|| format!("{}: no generated certificate", flavor.name()))?;
        let rows = [
            Row { what: "verification skipped", args: strings(&["--endpoints", &https, "--insecure-transport=false", "--insecure-skip-tls-verify", "put", "k", "v"]), ok: true },
            Row { what: "verified against a CA", args: strings(&["--endpoints", &https, "--cacert", pki.ca_str(), "get", "k"]), ok: false },
            Row { what: "the generated certificate as CA", args: strings(&["--endpoints", &https, "--cacert", generated.to_str().unwrap_or_default(), "get", "k"]), ok: true },
        ];
        check_rows(flavor, &rows)?;
        server.stop().await?;
        server.spawn()?;
        wait_for(&https, &skip).await?;
        assert_eq!(std::fs::read(&generated)?, before, "{}: a restart must keep the generated certificate", flavor.name());
    }
    Ok(())
}

/// Starts raftkv (or etcd) with `flags` and an https:// client URL, and
/// returns its log once it exited (failing if it serves instead).
async fn refused_start(flavor: Flavor, flags: &[&str], https: bool) -> anyhow::Result<String> {
    refused_start_peer(flavor, flags, https, false).await
}

/// [`refused_start`], with an https:// peer URL if `peer_https`.
async fn refused_start_peer(flavor: Flavor, flags: &[&str], https: bool, peer_https: bool) -> anyhow::Result<String> {
    let pki = Pki::new("unused")?;
    let mut server = Server::single(flavor, flags)?;
    if https {
        server.set_tls(harness_tls(&pki, None)?);
    }
    if peer_https {
        server.set_peer_https();
    }
    server.spawn()?;
    match server.exit_within(Duration::from_secs(15)).await? {
        Some(status) if !status.success() => Ok(server.log()),
        Some(status) => bail!("{} exited with {status} instead of refusing: {}", flavor.name(), server.log()),
        None => bail!("{} started with {flags:?} instead of refusing them", flavor.name()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tls_settings_stop_the_start_with_the_reason() -> anyhow::Result<()> {
    // etcd's own refusal, word for word.
    for flavor in selected_flavors()? {
        let log = refused_start(flavor, &[], true).await?;
        assert!(
            log.contains("TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:")
                && log.contains("with HTTPS scheme"),
            "{}: {log}",
            flavor.name()
        );
        let log = refused_start(flavor, &["--cert-file", "/nonexistent/server.pem", "--key-file", "/nonexistent/server-key.pem"], true).await?;
        assert!(log.contains("open /nonexistent/server.pem: no such file or directory"), "{}: {log}", flavor.name());
    }
    // Where etcd warns and serves plaintext anyway, raftkv refuses.
    let pki = Pki::new("main")?;
    let cert = pki.loopback("server")?;
    let cases: [(&[&str], bool, &str); 3] = [
        (&["--cert-file", cert.cert_str(), "--key-file", cert.key_str()], false, "no --listen-client-urls or --listen-metrics-urls URL is https://"),
        (&["--cert-file", cert.cert_str(), "--key-file", cert.key_str(), "--client-cert-auth"], true, "--client-cert-auth requires --trusted-ca-file"),
        (&["--cert-file", cert.cert_str()], true, "--cert-file and --key-file must be given together"),
    ];
    for (flags, https, reason) in cases {
        let log = refused_start(Flavor::Raftkv, flags, https).await?;
        assert!(log.contains(reason), "{flags:?}: want {reason:?} in {log}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_peer_tls_settings_stop_the_start_with_the_reason() -> anyhow::Result<()> {
    for flavor in selected_flavors()? {
        let log = refused_start_peer(flavor, &[], false, true).await?;
        assert!(
            log.contains("cannot listen on TLS for 127.0.0.1:") && log.contains("KeyFile and CertFile are not presented"),
            "{}: {log}",
            flavor.name()
        );
    }
    // Where etcd warns and serves plaintext anyway, raftkv refuses.
    let pki = Pki::new("peers")?;
    let cert = pki.loopback("peer")?;
    let cases: [(&[&str], bool, &str); 5] = [
        (&["--peer-cert-file", cert.cert_str(), "--peer-key-file", cert.key_str()], false, "no --listen-peer-urls URL is https://"),
        (
            &["--peer-cert-file", cert.cert_str(), "--peer-key-file", cert.key_str(), "--peer-client-cert-auth"],
            true,
            "--peer-client-cert-auth requires --peer-trusted-ca-file",
        ),
        (&["--peer-key-file", cert.key_str()], true, "--peer-cert-file and --peer-key-file must be given together"),
        (&["--peer-auto-tls", "--peer-trusted-ca-file", pki.ca_str()], true, "--peer-auto-tls makes a self-signed certificate"),
        (
            &["--peer-cert-file", cert.cert_str(), "--peer-key-file", cert.key_str(), "--experimental-peer-skip-client-san-verification"],
            true,
            "--experimental-peer-skip-client-san-verification needs --peer-trusted-ca-file",
        ),
    ];
    for (flags, peer_https, reason) in cases {
        let log = refused_start_peer(Flavor::Raftkv, flags, false, peer_https).await?;
        assert!(log.contains(reason), "{flags:?}: want {reason:?} in {log}");
    }
    Ok(())
}

/// Whether member `i` of `cluster` answers a linearizable read of `key`
/// with `value`.
async fn reads(cluster: &Cluster, i: usize, key: &str, value: &str) -> anyhow::Result<()> {
    let mut client = cluster.client(i).await?;
    let got = client.get(key, None).await?;
    let found = got.kvs().first().map(|kv| kv.value().to_vec());
    anyhow::ensure!(found.as_deref() == Some(value.as_bytes()), "m{i} reads {key} as {found:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_with_peer_tls_replicates_forwards_and_recovers() -> anyhow::Result<()> {
    let peers = Pki::new("peers")?;
    let other = Pki::new("other")?;
    let clients = Pki::new("clients")?;
    let peer_cert = peers.loopback("peer")?;
    let impostor = other.loopback("impostor")?;
    let server_cert = clients.loopback("server")?;
    for flavor in selected_flavors()? {
        // Mutual TLS between members; clients verify the server only (no
        // client CA: before, a follower's forwarded calls went to the
        // leader's client URLs and failed here).
        let flags = |pair: &Pair| {
            strings(&[
                "--peer-cert-file",
                pair.cert_str(),
                "--peer-key-file",
                pair.key_str(),
                "--peer-trusted-ca-file",
                peers.ca_str(),
                "--peer-client-cert-auth",
                "--cert-file",
                server_cert.cert_str(),
                "--key-file",
                server_cert.key_str(),
                "--experimental-initial-corrupt-check",
            ])
        };
        let good = flags(&peer_cert);
        let args: Vec<&str> = good.iter().map(String::as_str).collect();
        let tls = ClusterTls { client: Some(harness_tls(&clients, None)?), peer: true };
        let mut cluster = Cluster::start_tls(flavor, 3, tls, &args).await?;
        let name = flavor.name();
        let leader = cluster.leader().await?;
        cluster.client(leader).await?.put("k", "v1", None).await?;
        for i in cluster.members() {
            eventually(Duration::from_secs(10), async || reads(&cluster, i, "k", "v1").await).await.with_context(|| format!("{name}: replication"))?;
        }

        // A membership change asked of a follower reaches the leader.
        let follower = cluster.followers().await?[0];
        let joining = cluster.prepare_member()?;
        // (etcd refuses changes for 5 s after a peer connected: asked again.)
        let mut via = cluster.client(follower).await?;
        let added = retry_while(UNHEALTHY, Duration::from_secs(30), async || {
            Ok(via.member_add([joining.peer_url.clone()], Some(etcd_client::MemberAddOptions::new().with_is_learner())).await?)
        })
        .await
        .with_context(|| format!("{name}: MemberAdd through a follower"))?;
        let new_id = added.member().context("no member in MemberAdd's answer")?.id();
        let initial = added
            .member_list()
            .iter()
            .flat_map(|m| {
                let n = if m.id() == new_id { "m3".to_owned() } else { m.name().to_owned() };
                m.peer_urls().iter().map(move |u| format!("{n}={u}")).collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join(",");
        let learner = cluster.join(joining, "m3", &initial).await.with_context(|| format!("{name}: the learner joins over peer TLS"))?;
        eventually(Duration::from_secs(20), async || {
            let mut c = cluster.client(learner).await?;
            let got = c.get("k", Some(etcd_client::GetOptions::new().with_serializable())).await?;
            anyhow::ensure!(got.kvs().first().map(|kv| kv.value()) == Some(&b"v1"[..]), "the learner has not caught up");
            Ok(())
        })
        .await
        .with_context(|| format!("{name}: the learner catches up"))?;
        let removed = retry_while(UNHEALTHY, Duration::from_secs(30), async || Ok(via.member_remove(new_id).await?))
            .await
            .with_context(|| format!("{name}: MemberRemove through a follower"))?;
        anyhow::ensure!(!removed.members().iter().any(|m| m.id() == new_id), "{name}: the learner is still listed");
        cluster.removed(learner).await?;

        // The leader killed: the others elect one over TLS, and it comes
        // back through the initial corruption check (HashKV from its
        // peers).
        cluster.kill9(leader)?;
        let next = eventually(Duration::from_secs(20), async || cluster.leader().await).await?;
        cluster.client(next).await?.put("k", "v2", None).await?;
        cluster.restart(leader).await.with_context(|| format!("{name}: the old leader restarts"))?;
        eventually(Duration::from_secs(10), async || reads(&cluster, leader, "k", "v2").await).await?;
        if flavor == Flavor::Raftkv {
            let log = cluster.member(leader).server().log();
            assert!(log.contains("data is consistent with peers") && !log.contains("cannot get a peer's hash"), "{name}: {log}");
        }

        // A member presenting a certificate of another CA is cut off from
        // its peers, which keep serving; with its own back, it catches up.
        let outcast = cluster.followers().await?[0];
        cluster.stop(outcast).await?;
        let bad: Vec<String> = flags(&impostor).into_iter().chain(timing(&cluster)).collect();
        cluster.server_mut(outcast).set_extra_args(&bad.iter().map(String::as_str).collect::<Vec<_>>());
        let leader = cluster.leader().await?;
        cluster.spawn_only(outcast)?;
        cluster.client(leader).await?.put("k", "v3", None).await?;
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(1), async { cluster.client(outcast).await?.status().await.map_err(anyhow::Error::from) }).await {
                anyhow::ensure!(status.leader() == 0, "{name}: a member with another CA's certificate found a leader");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if flavor == Flavor::Raftkv {
            let log = cluster.member(leader).server().log();
            assert!(log.contains("rejected connection"), "{name}: the leader's log does not say it rejected the impostor: {log}");
        }
        cluster.stop(outcast).await?;
        let mut back: Vec<String> = good.clone();
        back.extend(timing(&cluster));
        cluster.server_mut(outcast).set_extra_args(&back.iter().map(String::as_str).collect::<Vec<_>>());
        cluster.restart(outcast).await?;
        eventually(Duration::from_secs(10), async || reads(&cluster, outcast, "k", "v3").await).await?;
    }
    Ok(())
}

/// The cluster's timing flags (kept when a member's flags are replaced).
fn timing(cluster: &Cluster) -> Vec<String> {
    let args = cluster.extra_args();
    args.iter()
        .enumerate()
        .filter(|(_, a)| a.starts_with("--heartbeat-interval") || a.starts_with("--election-timeout"))
        .flat_map(|(i, a)| [a.clone(), args.get(i + 1).cloned().unwrap_or_default()])
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_with_peer_auto_tls_replicates() -> anyhow::Result<()> {
    for flavor in selected_flavors()? {
        let mut cluster = Cluster::start_tls(flavor, 3, ClusterTls { client: None, peer: true }, &["--peer-auto-tls"]).await?;
        let leader = cluster.leader().await?;
        cluster.client(leader).await?.put("k", "v", None).await?;
        for i in cluster.members() {
            eventually(Duration::from_secs(10), async || reads(&cluster, i, "k", "v").await)
                .await
                .with_context(|| format!("{}: m{i}", flavor.name()))?;
            let generated = cluster.member(i).server().data_dir().join("fixtures/peer/cert.pem");
            anyhow::ensure!(generated.exists(), "{}: no {}", flavor.name(), generated.display());
        }
        cluster.kill9(leader)?;
        cluster.restart(leader).await?;
        cluster.stop_all().await?;
    }
    Ok(())
}

/// GET `path` over TLS from 127.0.0.1:`port` (HTTP/1.0), the server
/// verified against `ca`, `client` presented if given: the response.
fn https_get(port: u16, ca: &Path, client: Option<&Pair>, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca)?)?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client {
        Some(pair) => builder.with_client_auth_cert(
            CertificateDer::pem_file_iter(&pair.cert)?.collect::<Result<Vec<_>, _>>()?,
            rustls::pki_types::PrivateKeyDer::from_pem_file(&pair.key)?,
        )?,
        None => builder.with_no_client_auth(),
    };
    let conn = rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1")?.to_owned())?;
    let sock = std::net::TcpStream::connect(("127.0.0.1", port))?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    tls.read_to_string(&mut out)?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn https_metrics_urls_are_served_with_the_client_ports_tls() -> anyhow::Result<()> {
    let pki = Pki::new("main")?;
    let other = Pki::new("other")?;
    let cert = pki.loopback("server")?;
    let alice = pki.issue("alice", "alice", &["127.0.0.1"], Validity::Current)?;
    let stranger = other.issue("stranger", "stranger", &["127.0.0.1"], Validity::Current)?;
    for flavor in selected_flavors()? {
        let port = raftkv_tests::ports::free_port()?;
        let metrics = format!("https://127.0.0.1:{port}");
        let mut flags = server_flags(&cert);
        flags.extend(strings(&["--trusted-ca-file", pki.ca_str(), "--listen-metrics-urls", &metrics]));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let _server = Server::start_tls(flavor, harness_tls(&pki, Some(&alice))?, &flags).await?;
        let name = flavor.name();
        let got = https_get(port, pki.ca(), Some(&alice), "/metrics")?;
        assert!(got.starts_with("HTTP/1.") && got.contains(" 200 ") && got.contains("etcd_server_has_leader 1"), "{name}: {got}");
        let health = https_get(port, pki.ca(), Some(&alice), "/health")?;
        assert!(health.contains("\"health\":\"true\""), "{name}: {health}");
        for (what, client) in [("no client certificate", None), ("another CA's", Some(&stranger))] {
            let refused = https_get(port, pki.ca(), client, "/metrics");
            assert!(refused.as_ref().map_or(true, |r| !r.contains(" 200 ")), "{name}: metrics served with {what}: {refused:?}");
        }
        // Plaintext to the TLS port gets no metrics.
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", port))?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        use std::io::{Read, Write};
        sock.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut plain = Vec::new();
        let _ = sock.read_to_end(&mut plain);
        assert!(!String::from_utf8_lossy(&plain).contains("etcd_server_has_leader"), "{name}: metrics over plaintext");
    }
    Ok(())
}

//! The JSON gateway (issue 17, part 3), against real etcd: one curl
//! session (`scripts/gateway_session.sh`: every kind of call, their
//! errors, watch and keep-alive streams, a lock, compaction, and
//! authentication with a token in the Authorization header) gives the
//! same transcript against raftkv as against etcd once ids and terms are
//! masked; and over TLS, where the gateway shares the client port's
//! certificate.

use std::process::Command;

use anyhow::Context;
use raftkv_tests::diff;
use raftkv_tests::transcript::mask;
use raftkv_tests::{Flavor, Server, with_etcd};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gateway_session.sh");

/// Runs the curl session against `server`; the masked transcript.
fn session(server: &Server) -> anyhow::Result<String> {
    let output = Command::new("sh").arg(SCRIPT).arg(server.endpoint()).output().context("cannot run the gateway session (is curl installed? `make deps`)")?;
    anyhow::ensure!(output.status.success(), "the session failed: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).context("the transcript is not UTF-8")?;
    // Ids and terms as the gateway writes them (64-bit numbers as strings).
    let ids = regex::Regex::new(r#""(cluster_id|member_id|raft_term)":"\d+""#)?;
    Ok(mask(&ids.replace_all(&text, r#""$1":"<masked>""#)))
}

/// What any complete transcript shows, whichever server made it (so that
/// two servers failing alike cannot pass).
fn check_session(name: &str, t: &str) {
    let calls = t.lines().filter(|l| l.starts_with("$ ")).count();
    assert!(calls >= 75, "{name}: only {calls} calls in:\n{t}");
    for expected in [
        // A put, and a range that reads it back, in etcd's JSON.
        "$ POST /v3/kv/range {\"key\":\"Zm9v\"}\n{\"header\":{\"cluster_id\":\"<masked>\",\"member_id\":\"<masked>\",\"revision\":\"5\",\"raft_term\":\"<masked>\"},\"kvs\":[{\"key\":\"Zm9v\",\"create_revision\":\"2\",\"mod_revision\":\"3\",\"version\":\"2\",\"value\":\"YmFyMg==\"}],\"count\":\"1\"}\n",
        "{\"error\":\"etcdserver: key is not provided\",\"message\":\"etcdserver: key is not provided\",\"code\":3}\n",
        "$ POST /v3/kv/range {\"key\":\"!!!\"} (HTTP status)\n400\n",
        "\"ID\":\"1000\",\"TTL\":\"60\"}}\n",
        "\"watch_id\":\"1\",\"created\":true}}\n",
        "{\"type\":\"DELETE\",\"kv\":{\"key\":\"Zm9vMQ==\",\"mod_revision\":\"8\"}",
        "\"key\":\"bXlsb2NrLzdkMA==\"}\n",
        "\"token\":\"<token>\"}\n",
        "{\"error\":\"etcdserver: permission denied\",\"message\":\"etcdserver: permission denied\",\"code\":7}\n",
        "{\"error\":\"etcdserver: invalid auth token\",\"message\":\"etcdserver: invalid auth token\",\"code\":16}\n",
        "$ POST /v3beta/kv/range {\"key\":\"Zm9v\",\"count_only\":true}\n{\"header\":",
        "$ OPTIONS /no/such/path  (HTTP status, CORS headers)\n200\naccess-control-allow-headers: accept, content-type, authorization\naccess-control-allow-methods: post, get, options, put, delete\naccess-control-allow-origin: *\n",
    ] {
        assert!(t.contains(expected), "{name}: no {expected:?} in:\n{t}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_curl_session_of_the_json_gateway_is_identical_on_raftkv_and_etcd() -> anyhow::Result<()> {
    if !with_etcd("a_curl_session_of_the_json_gateway_is_identical_on_raftkv_and_etcd")? {
        return Ok(());
    }
    let etcd = session(&Server::start(Flavor::Etcd).await?)?;
    let raftkv = session(&Server::start(Flavor::Raftkv).await?)?;
    check_session("etcd", &etcd);
    check_session("raftkv", &raftkv);
    let d = diff::unified("etcd", &etcd, "raftkv", &raftkv, 3);
    assert!(d.is_empty(), "gateway transcripts differ:\n{d}");
    Ok(())
}

/// curl over TLS: (exit code, body).
fn curl(args: &[&str]) -> anyhow::Result<(i32, String)> {
    let out = Command::new("curl").args(["-sS", "-X", "POST"]).args(args).output().context("cannot run curl")?;
    Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned()))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_is_served_over_the_client_ports_tls() -> anyhow::Result<()> {
    use etcd_client::{Certificate, Identity, TlsOptions};
    use raftkv_tests::certs::{Pki, Validity};
    let pki = Pki::new("main")?;
    let server_cert = pki.loopback("server")?;
    let root = pki.issue("root", "root", &["127.0.0.1"], Validity::Current)?;
    let flags = ["--cert-file", server_cert.cert_str(), "--key-file", server_cert.key_str(), "--client-cert-auth", "--trusted-ca-file", pki.ca_str()];
    for flavor in raftkv_tests::selected_flavors()? {
        let name = flavor.name();
        let harness = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(pki.ca_pem()?))
            .identity(Identity::from_pem(std::fs::read(&root.cert)?, std::fs::read(&root.key)?));
        let server = Server::start_tls(flavor, harness, &flags).await?;
        let ep = server.endpoint();
        let with_cert = ["--cacert", pki.ca_str(), "--cert", root.cert_str(), "--key", root.key_str()];
        let put = format!("{ep}/v3/kv/put");
        let (code, body) = curl(&[&with_cert[..], &[put.as_str(), "-d", r#"{"key":"Zm9v","value":"YmFy"}"#]].concat())?;
        assert!(code == 0 && body.contains(r#""revision":"2""#), "{name}: a put over TLS with a client certificate: {code} {body}");
        let range = format!("{ep}/v3/kv/range");
        let (code, body) = curl(&[&with_cert[..], &[range.as_str(), "-d", r#"{"key":"Zm9v"}"#]].concat())?;
        assert!(code == 0 && body.contains(r#""value":"YmFy""#), "{name}: {code} {body}");
        // curl's own verdicts: 60, the server's certificate not trusted;
        // a failed handshake (35) or, under TLS 1.3, a failed send or
        // receive after it (55, 56) without a client certificate.
        let (code, _) = curl(&[range.as_str(), "-d", "{}"])?;
        assert_eq!(code, 60, "{name}: the server's certificate is not one of the system's CAs");
        let (code, _) = curl(&["--cacert", pki.ca_str(), range.as_str(), "-d", r#"{"key":"Zm9v"}"#])?;
        assert!([35, 55, 56].contains(&code), "{name}: no client certificate, curl exit {code}");
        let plain = format!("http://127.0.0.1:{}/v3/kv/range", server.client_port());
        let (code, body) = curl(&[plain.as_str(), "-d", r#"{"key":"Zm9v"}"#])?;
        assert!(code != 0 || !body.contains("YmFy"), "{name}: plaintext to the TLS port read the value: {body}");
    }
    Ok(())
}

/// Runs curl on `url` with `args`: the HTTP status, the CORS headers and
/// the body, as one text.
fn http(url: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("curl").args(["-s", "-i"]).args(args).arg(url).output().context("cannot run curl")?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines: Vec<String> = head
        .lines()
        .filter_map(|l| match l.split_once(' ') {
            Some((proto, rest)) if proto.starts_with("HTTP/") => Some(rest.split(' ').next().unwrap_or_default().to_string()),
            _ => l.to_ascii_lowercase().starts_with("access-control-").then(|| l.to_ascii_lowercase()),
        })
        .collect();
    lines.sort();
    // The JSON answers hold ids; the status and headers are what is compared.
    let body = if body.starts_with('{') { "<json>" } else { body };
    Ok(format!("{}\n{body}", lines.join("\n")))
}

/// `--cors` with a list of origins and `--host-whitelist`, on etcd and on
/// raftkv: only the listed origins get CORS headers (an allowed one is
/// echoed), a plaintext request naming another host is refused with 421
/// and etcd's text, OPTIONS still answers 200, and gRPC passes by.
#[tokio::test(flavor = "multi_thread")]
async fn cors_origins_and_the_host_whitelist_are_etcds() -> anyhow::Result<()> {
    if !with_etcd("cors_origins_and_the_host_whitelist_are_etcds")? {
        return Ok(());
    }
    let flags = ["--cors", "http://app.example:8080,https://other.example:443", "--host-whitelist", "localhost,127.0.0.1"];
    let mut transcripts = Vec::new();
    for flavor in [Flavor::Etcd, Flavor::Raftkv] {
        let server = Server::start_with(flavor, &flags).await?;
        let ep = server.endpoint();
        let range = format!("{ep}/v3/kv/range");
        let mut t = String::new();
        for (what, args) in [
            ("allowed origin", vec!["-X", "POST", "-H", "Origin: http://app.example:8080", "-d", r#"{"key":"Zm9v"}"#]),
            ("other origin", vec!["-X", "POST", "-H", "Origin: http://evil.example:8080", "-d", r#"{"key":"Zm9v"}"#]),
            ("no origin", vec!["-X", "POST", "-d", r#"{"key":"Zm9v"}"#]),
            ("preflight", vec!["-X", "OPTIONS", "-H", "Origin: https://other.example:443"]),
            ("host not whitelisted", vec!["-X", "POST", "-H", "Host: rebound.example:2379", "-d", r#"{"key":"Zm9v"}"#]),
            ("host not whitelisted, /health", vec!["-H", "Host: rebound.example"]),
            ("whitelisted host", vec!["-X", "POST", "-H", "Host: localhost:2379", "-d", r#"{"key":"Zm9v"}"#]),
        ] {
            let url = if what.ends_with("/health") { format!("{ep}/health") } else { range.clone() };
            t.push_str(&format!("$ {what}\n{}\n", http(&url, &args)?));
        }
        // gRPC is not an HTTP request of the access controller's.
        let mut client = server.client().await?;
        client.put("grpc", "ok", None).await.context("a gRPC put with a host whitelist")?;
        transcripts.push(t);
    }
    let (etcd, raftkv) = (&transcripts[0], &transcripts[1]);
    for (name, t) in [("etcd", etcd), ("raftkv", raftkv)] {
        assert!(t.contains("$ allowed origin\n200\naccess-control-allow-headers: accept, content-type, authorization\naccess-control-allow-methods: post, get, options, put, delete\naccess-control-allow-origin: http://app.example:8080\n"), "{name}:\n{t}");
        assert!(t.contains("$ other origin\n200\n<json>"), "{name}:\n{t}");
        assert!(t.contains("$ host not whitelisted\n421\n\netcd received your request, but the Host header was unrecognized."), "{name}:\n{t}");
        assert!(t.contains(r#"- e.g. etcd --host-whitelist "rebound.example""#), "{name}:\n{t}");
    }
    let d = diff::unified("etcd", etcd, "raftkv", raftkv, 3);
    assert!(d.is_empty(), "the access control differs:\n{d}");
    Ok(())
}

//! Authentication and access control (issue 17, part 2), against real
//! etcd: the etcdctl 3.4 `user` and `role` commands of etcd's
//! authentication guide with their error cases
//! (`scripts/etcdctl_auth_session.sh`) give the same transcript against
//! raftkv as against etcd once ids and ports are masked, and raftkvctl's
//! against etcd is etcdctl's; an access matrix under authentication
//! (`scripts/etcdctl_access_session.sh`: users with read, write, readwrite,
//! no role and root, each trying every kind of request) is identical too;
//! `auth enable` needs what etcd needs; the store survives a restart and a
//! raft snapshot.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use raftkv_tests::binaries::ETCDCTL;
use raftkv_tests::cluster::{Cluster, eventually};
use raftkv_tests::diff;
use raftkv_tests::transcript::mask;
use raftkv_tests::{Flavor, Server, with_etcd};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/etcdctl_auth_session.sh");
const ACCESS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/etcdctl_access_session.sh");

/// Runs the session with etcdctl against `server`; the masked transcript.
fn session(server: &Server) -> anyhow::Result<String> {
    session_with(server, std::path::Path::new(ETCDCTL))
}

/// Runs the session with `cli` in place of etcdctl.
fn session_with(server: &Server, cli: &std::path::Path) -> anyhow::Result<String> {
    run_script(SCRIPT, server, cli)
}

/// Runs `script` against `server` with `cli` as etcdctl; the masked
/// transcript.
fn run_script(script: &str, server: &Server, cli: &std::path::Path) -> anyhow::Result<String> {
    let output = Command::new("sh")
        .arg(script)
        .arg(server.endpoint())
        .env("ETCDCTL", cli)
        .output()
        .with_context(|| format!("cannot run {script}"))?;
    if !output.status.success() {
        bail!("{script} failed with {}: {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    Ok(mask(&String::from_utf8(output.stdout).context("the transcript is not UTF-8")?))
}

/// etcdctl's retry warnings (a log of its client library) aside.
fn without_warnings(transcript: &str) -> String {
    transcript.lines().filter(|l| !l.starts_with(r#"{"level":"warn""#)).map(|l| format!("{l}\n")).collect()
}

/// What any complete transcript shows, whichever server made it: every
/// command with its exit code, every section, and the outcomes the guide
/// describes (so that two servers failing alike cannot pass).
fn check_session(name: &str, transcript: &str) {
    let commands = transcript.lines().filter(|l| l.starts_with("$ etcdctl")).count();
    let exits = transcript.lines().filter(|l| l.starts_with("exit=")).count();
    assert!(commands > 50, "{name}: only {commands} commands ran:\n{transcript}");
    assert_eq!(commands, exits, "{name}: a command has no exit code:\n{transcript}");
    for expected in [
        "### deletions\n",
        "Error: etcdserver: user name already exists\n",
        "Error: etcdserver: user name not found\n",
        "Error: etcdserver: role name already exists\n",
        "Error: etcdserver: role name not found\n",
        "Error: etcdserver: permission is not granted to the role\n",
        "Error: etcdserver: role is not granted to the user\n",
        "KV Read:\n\t/app/\n\t[/config/, /config0) (prefix /config/)\nKV Write:\n",
        "KV Read:\n\t[/zz, <open ended>\nKV Write:\n\t[/app/, /app0) (prefix /app/)\n",
        "User: alice\nRoles: reader writer\n",
        "\"users\":[\"alice\",\"bob\",\"root\"]",
        "$ etcdctl user list\nalice\nroot\nexit=0\n",
    ] {
        assert!(transcript.contains(expected), "{name}: no {expected:?} in:\n{transcript}");
    }
}

#[tokio::test]
async fn etcdctl_user_and_role_sessions_are_identical_on_raftkv_and_etcd() -> anyhow::Result<()> {
    if !with_etcd("etcdctl_user_and_role_sessions_are_identical_on_raftkv_and_etcd")? {
        return Ok(());
    }
    let etcd = Server::start(Flavor::Etcd).await?;
    let etcd_transcript = session(&etcd)?;
    let mut raftkv = Server::start(Flavor::Raftkv).await?;
    let raftkv_transcript = session(&raftkv)?;
    check_session("etcd", &etcd_transcript);
    check_session("raftkv", &raftkv_transcript);
    let d = diff::unified("etcd", &etcd_transcript, "raftkv", &raftkv_transcript, 3);
    assert!(d.is_empty(), "etcdctl transcripts differ:\n{d}");

    // The store is part of the member's state: a restart keeps it.
    let before: Vec<String> = ["user get alice", "user list", "role get writer", "role list"]
        .iter()
        .map(|c| ctl(&raftkv, c))
        .collect::<anyhow::Result<_>>()?;
    raftkv.stop().await?;
    raftkv.restart().await?;
    for (i, c) in ["user get alice", "user list", "role get writer", "role list"].iter().enumerate() {
        assert_eq!(ctl(&raftkv, c)?, before[i], "`{c}` after a restart");
    }
    Ok(())
}

#[tokio::test]
async fn raftkvctl_user_and_role_session_is_identical_to_etcdctls_on_etcd() -> anyhow::Result<()> {
    if !with_etcd("raftkvctl_user_and_role_session_is_identical_to_etcdctls_on_etcd")? {
        return Ok(());
    }
    let etcdctl = without_warnings(&session(&Server::start(Flavor::Etcd).await?)?);
    let raftkvctl = without_warnings(&session_with(&Server::start(Flavor::Etcd).await?, &raftkv_tests::binaries::raftkvctl()?)?);
    check_session("etcdctl", &etcdctl);
    check_session("raftkvctl", &raftkvctl);
    let d = diff::unified("etcdctl", &etcdctl, "raftkvctl", &raftkvctl, 3);
    assert!(d.is_empty(), "raftkvctl's transcript differs from etcdctl's:\n{d}");
    Ok(())
}

/// One etcdctl command against `server`: its output, stderr included, with
/// etcdctl's retry warnings left out.
fn ctl(server: &Server, args: &str) -> anyhow::Result<String> {
    let out = Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(server.endpoint())
        .args(args.split(' '))
        .output()
        .context("cannot run etcdctl")?;
    Ok(without_warnings(&format!(
        "{}{}exit={}\n",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code().unwrap_or(-1)
    )))
}

#[tokio::test]
async fn auth_enable_needs_a_root_user_with_the_root_role_as_on_etcd() -> anyhow::Result<()> {
    if !with_etcd("auth_enable_needs_a_root_user_with_the_root_role_as_on_etcd")? {
        return Ok(());
    }
    for flavor in [Flavor::Etcd, Flavor::Raftkv] {
        let server = Server::start(flavor).await?;
        let name = flavor.name();
        let out = ctl(&server, "auth enable")?;
        assert_eq!(out, "Error: etcdserver: root user does not exist\nexit=1\n", "{name}");
        ctl(&server, "user add root:pw")?;
        // etcdctl adds the root role and grants it when AuthEnable says
        // it is missing, then asks again.
        assert_eq!(ctl(&server, "auth enable")?, "Authentication Enabled\nexit=0\n", "{name}");
        assert_eq!(ctl(&server, "--user root:pw user get root")?, "User: root\nRoles: root\nexit=0\n", "{name}: etcdctl's root role");
        assert_eq!(ctl(&server, "put k v")?, "Error: etcdserver: user name is empty\nexit=1\n", "{name}: a request without a user");
        assert_eq!(ctl(&server, "--user root:pw put k v")?, "OK\nexit=0\n", "{name}");
        assert_eq!(ctl(&server, "--user root:pw user delete root")?, "Error: etcdserver: invalid auth management\nexit=1\n", "{name}");
        assert_eq!(ctl(&server, "--user root:pw auth disable")?, "Authentication Disabled\nexit=0\n", "{name}");
        assert_eq!(ctl(&server, "get k --print-value-only")?, "v\nexit=0\n", "{name}: open again");
    }
    Ok(())
}

/// etcdctl against member `i` of `cluster`.
fn ctl_member(cluster: &Cluster, i: usize, args: &str) -> anyhow::Result<String> {
    ctl(cluster.member(i).server(), args)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_brought_back_by_a_raft_snapshot_has_the_users_and_roles() -> anyhow::Result<()> {
    // raftkv's own mechanism (a raft snapshot replaces a member's state):
    // etcd 3.4 cannot shorten its log enough to be made to send one here.
    let mut cluster = Cluster::start(Flavor::Raftkv, 3, &["--snapshot-count", "20", "--snapshot-catchup-entries", "5"]).await?;
    let behind = cluster.followers().await?[0];
    let leader = cluster.leader().await?;
    cluster.stop(behind).await?;
    for cmd in ["user add alice:pw", "role add reader", "role grant-permission reader --prefix=true read /app/", "user grant-role alice reader"] {
        let out = ctl_member(&cluster, leader, cmd)?;
        anyhow::ensure!(out.ends_with("exit=0\n"), "{cmd}: {out}");
    }
    let mut client = cluster.client(leader).await?;
    for i in 0..100 {
        client.put(format!("k{i}"), "v", None).await?;
    }
    cluster.restart(behind).await?;
    let want_user = ctl_member(&cluster, leader, "user get alice")?;
    let want_role = ctl_member(&cluster, leader, "role get reader")?;
    assert_eq!(want_user, "User: alice\nRoles: reader\nexit=0\n");
    eventually(Duration::from_secs(20), async || {
        anyhow::ensure!(cluster.member(behind).server().log().contains("received a snapshot"), "no snapshot received yet");
        anyhow::ensure!(ctl_member(&cluster, behind, "user get alice")? == want_user, "the user is not there yet");
        Ok(())
    })
    .await?;
    assert_eq!(ctl_member(&cluster, behind, "role get reader")?, want_role);
    Ok(())
}

/// What the access matrix must show on any server that enforces it: each
/// user allowed and refused as its role says (so that two servers letting
/// everyone in alike cannot pass).
fn check_access(name: &str, t: &str) {
    let commands = t.lines().filter(|l| l.starts_with("$ [")).count();
    let exits = t.lines().filter(|l| l.starts_with("exit=")).count();
    assert!(commands > 150, "{name}: only {commands} commands ran:\n{t}");
    assert_eq!(commands, exits, "{name}: a command has no exit code:\n{t}");
    for expected in [
        "$ [-] etcdctl auth enable\nAuthentication Enabled\nexit=0\n",
        "$ [-] etcdctl get /app/x\nError: etcdserver: user name is empty\nexit=1\n",
        "$ [reader:wrongpw] etcdctl get /app/x\nError: etcdserver: authentication failed, invalid user ID or password\nexit=2\n",
        "$ [reader:readerpw] etcdctl put /app/x 2\nError: etcdserver: permission denied\nexit=1\n",
        "$ [reader:readerpw] etcdctl get /app/x\n/app/x\n1\nexit=0\n",
        "$ [writer:writerpw] etcdctl put /app/x 2\nOK\nexit=0\n",
        "$ [writer:writerpw] etcdctl get /app/x\nError: etcdserver: permission denied\nexit=1\n",
        "$ [both:bothpw] etcdctl get /other\nError: etcdserver: permission denied\nexit=1\n",
        "$ [nobody:nobodypw] etcdctl get /app/x\nError: etcdserver: permission denied\nexit=1\n",
        "$ [root:rootpw] etcdctl get /other\n/other\n2\nexit=0\n",
        "watch was canceled (rpc error: code = PermissionDenied desc = etcdserver: permission denied)",
        "$ [reader:readerpw] etcdctl user list\nError: etcdserver: permission denied\nexit=1\n",
        "(rpc error: code = Unknown desc = auth: permission denied)",
        "$ [reader:readerpw] etcdctl auth disable\nError: etcdserver: permission denied\nexit=1\n",
        "$ [root:rootpw] etcdctl auth disable\nAuthentication Disabled\nexit=0\n",
    ] {
        assert!(t.contains(expected), "{name}: no {expected:?} in:\n{t}");
    }
}

#[tokio::test]
async fn an_access_matrix_under_authentication_is_identical_on_raftkv_and_etcd() -> anyhow::Result<()> {
    if !with_etcd("an_access_matrix_under_authentication_is_identical_on_raftkv_and_etcd")? {
        return Ok(());
    }
    let etcdctl = std::path::Path::new(ETCDCTL);
    let etcd = without_warnings(&run_script(ACCESS, &Server::start(Flavor::Etcd).await?, etcdctl)?);
    let raftkv = without_warnings(&run_script(ACCESS, &Server::start(Flavor::Raftkv).await?, etcdctl)?);
    check_access("etcd", &etcd);
    check_access("raftkv", &raftkv);
    let d = diff::unified("etcd", &etcd, "raftkv", &raftkv, 3);
    assert!(d.is_empty(), "access transcripts differ:\n{d}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_from_one_member_is_good_on_every_member() -> anyhow::Result<()> {
    raftkv_tests::cluster::for_each_flavor(3, &[], async |cluster: &mut Cluster| {
        let leader = cluster.leader().await?;
        for cmd in ["user add root:rootpw", "user add app:apppw", "role add app", "role grant-permission app --prefix=true readwrite /app/", "user grant-role app app", "auth enable"] {
            let out = ctl_member(cluster, leader, cmd)?;
            anyhow::ensure!(out.ends_with("exit=0\n"), "{cmd}: {out}");
        }
        // One Authenticate (on whichever member), then requests spread over
        // all three members with that token.
        let options = etcd_client::ConnectOptions::new().with_user("app", "apppw");
        let mut client = etcd_client::Client::connect(cluster.endpoints(), Some(options)).await?;
        for i in 0..30 {
            client.put(format!("/app/{i}"), "v", None).await.with_context(|| format!("put {i}"))?;
            let got = client.get(format!("/app/{i}"), None).await.with_context(|| format!("get {i}"))?;
            anyhow::ensure!(got.kvs().len() == 1, "get {i}");
        }
        let denied = client.get("/other", None).await.expect_err("outside /app/");
        anyhow::ensure!(denied.to_string().contains("etcdserver: permission denied"), "{denied}");
        // Every member knows the token: each answers a client of it alone.
        for i in cluster.members() {
            let options = etcd_client::ConnectOptions::new().with_user("app", "apppw");
            let mut one = etcd_client::Client::connect([cluster.member(i).endpoint()], Some(options)).await?;
            one.get("/app/0", None).await.with_context(|| format!("m{i}"))?;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificates_common_name_is_the_user() -> anyhow::Result<()> {
    use raftkv_tests::certs::{Pki, Validity};
    let pki = Pki::new("auth")?;
    let server_cert = pki.loopback("server")?;
    let root = pki.issue("root", "root", &["127.0.0.1"], Validity::Current)?;
    let alice = pki.issue("alice", "alice", &["127.0.0.1"], Validity::Current)?;
    for flavor in raftkv_tests::selected_flavors()? {
        let flags = [
            "--cert-file",
            server_cert.cert_str(),
            "--key-file",
            server_cert.key_str(),
            "--client-cert-auth",
            "--trusted-ca-file",
            pki.ca_str(),
        ];
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(pki.ca_pem()?))
            .identity(etcd_client::Identity::from_pem(std::fs::read(&root.cert)?, std::fs::read(&root.key)?));
        let server = Server::start_tls(flavor, tls, &flags).await?;
        let name = flavor.name();
        let as_cert = |pair: &raftkv_tests::certs::Pair, args: &str| -> anyhow::Result<String> {
            let out = Command::new(ETCDCTL)
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &server.endpoint(), "--cacert", pki.ca_str(), "--cert", pair.cert_str(), "--key", pair.key_str()])
                .args(args.split(' '))
                .output()?;
            Ok(without_warnings(&format!("{}{}exit={}\n", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr), out.status.code().unwrap_or(-1))))
        };
        for cmd in [
            "user add root:rootpw",
            "user add alice --no-password",
            "role add reader",
            "role grant-permission reader --prefix=true read /app/",
            "user grant-role alice reader",
            "put /app/x 1",
            "put /other 1",
            "auth enable",
        ] {
            let out = as_cert(&root, cmd)?;
            anyhow::ensure!(out.ends_with("exit=0\n"), "{name}: {cmd}: {out}");
        }
        // No --user: the certificate's common name is the user.
        assert_eq!(as_cert(&alice, "get /app/x --print-value-only")?, "1\nexit=0\n", "{name}: alice reads /app/");
        assert_eq!(as_cert(&alice, "put /app/x 2")?, "Error: etcdserver: permission denied\nexit=1\n", "{name}: alice writes");
        assert_eq!(as_cert(&alice, "get /other")?, "Error: etcdserver: permission denied\nexit=1\n", "{name}: alice outside /app/");
        assert_eq!(as_cert(&root, "put /other 2")?, "OK\nexit=0\n", "{name}: root");
        assert_eq!(as_cert(&root, "user list")?, "alice\nroot\nexit=0\n", "{name}: root manages");
        assert_eq!(as_cert(&alice, "user list")?, "Error: etcdserver: permission denied\nexit=1\n", "{name}: alice does not");
    }
    Ok(())
}

/// A Range of `key` sent with `token` as its metadata, through a plain gRPC
/// channel (no client library refreshing tokens): the answer, or the
/// status as `Code: message`.
async fn range_with_token(endpoint: &str, token: &str, key: &str) -> anyhow::Result<Result<usize, String>> {
    use etcd_client::proto::{PbRangeRequest, PbRangeResponse};
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?.connect().await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let mut req = tonic::Request::new(PbRangeRequest { key: key.as_bytes().to_vec(), ..Default::default() });
    req.metadata_mut().insert("token", token.parse()?);
    let codec = tonic_prost::ProstCodec::<PbRangeRequest, PbRangeResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Range");
    Ok(match grpc.unary(req, path, codec).await {
        Ok(resp) => Ok(resp.into_inner().kvs.len()),
        Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
    })
}

/// Sets up root, and `app` with readwrite on /app/, puts /app/x, enables
/// authentication (etcdctl, as a user would).
fn set_up_app_user(server: &Server) -> anyhow::Result<()> {
    for cmd in [
        "user add root:rootpw",
        "user add app:apppw",
        "role add app",
        "role grant-permission app --prefix=true readwrite /app/",
        "user grant-role app app",
        "put /app/x 1",
        "auth enable",
    ] {
        let out = ctl(server, cmd)?;
        anyhow::ensure!(out.ends_with("exit=0\n"), "{cmd}: {out}");
    }
    Ok(())
}

async fn token_of(server: &Server, user: &str, password: &str) -> anyhow::Result<String> {
    let client = etcd_client::Client::connect([server.endpoint()], None).await?;
    Ok(client.auth_client().authenticate(user.to_owned(), password.to_owned()).await?.token().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_tokens_carry_the_user_and_revision_and_are_verified_as_etcds() -> anyhow::Result<()> {
    use base64::Engine;
    let dir = tempfile::tempdir()?;
    let key = rcgen::KeyPair::generate()?;
    let (private, public) = (dir.path().join("jwt.key"), dir.path().join("jwt.pub"));
    std::fs::write(&private, key.serialize_pem())?;
    std::fs::write(&public, key.public_key_pem())?;
    let flag = format!("jwt,pub-key={},priv-key={},sign-method=ES256", public.display(), private.display());
    for flavor in raftkv_tests::selected_flavors()? {
        let server = Server::start_with(flavor, &["--auth-token", &flag]).await?;
        let name = flavor.name();
        set_up_app_user(&server)?;
        let token = token_of(&server, "app", "apppw").await?;
        let parts: Vec<&str> = token.split('.').collect();
        anyhow::ensure!(parts.len() == 3, "{name}: not a JWT: {token}");
        let claims: serde_json::Value = serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1])?)?;
        anyhow::ensure!(claims["username"] == "app", "{name}: {claims}");
        anyhow::ensure!(claims["revision"].as_u64().is_some_and(|r| r > 0), "{name}: {claims}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let exp = claims["exp"].as_u64().unwrap_or_default();
        anyhow::ensure!(exp > now + 200 && exp <= now + 301, "{name}: exp {exp}, now {now} (etcd's 5 minutes)");

        let ep = server.endpoint();
        assert_eq!(range_with_token(&ep, &token, "/app/x").await?, Ok(1), "{name}");
        assert_eq!(range_with_token(&ep, &token, "/other").await?, Err("PermissionDenied: etcdserver: permission denied".into()), "{name}");
        // A signature not the server's.
        let forged = format!("{}.{}.{}AAAA", parts[0], parts[1], &parts[2][..parts[2].len() - 4]);
        assert_eq!(range_with_token(&ep, &forged, "/app/x").await?, Err("Unauthenticated: etcdserver: invalid auth token".into()), "{name}");
        // Any auth change makes a token issued before it old.
        let out = ctl(&server, "--user root:rootpw role add other")?;
        anyhow::ensure!(out.ends_with("exit=0\n"), "{name}: {out}");
        assert_eq!(range_with_token(&ep, &token, "/app/x").await?, Err("InvalidArgument: etcdserver: revision of auth store is old".into()), "{name}");
        let fresh = token_of(&server, "app", "apppw").await?;
        assert_eq!(range_with_token(&ep, &fresh, "/app/x").await?, Ok(1), "{name}: a new token");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_simple_token_expires_unused_after_the_token_ttl() -> anyhow::Result<()> {
    for flavor in raftkv_tests::selected_flavors()? {
        let server = Server::start_with(flavor, &["--auth-token-ttl", "2"]).await?;
        let name = flavor.name();
        set_up_app_user(&server)?;
        let token = token_of(&server, "app", "apppw").await?;
        let ep = server.endpoint();
        assert_eq!(range_with_token(&ep, &token, "/app/x").await?, Ok(1), "{name}");
        assert_eq!(range_with_token(&ep, "no-such-token.1", "/app/x").await?, Err("Unauthenticated: etcdserver: invalid auth token".into()), "{name}");
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(range_with_token(&ep, &token, "/app/x").await?, Err("Unauthenticated: etcdserver: invalid auth token".into()), "{name}: expired");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_carries_the_users_roles_and_enabled_authentication() -> anyhow::Result<()> {
    let server = Server::start(Flavor::Raftkv).await?;
    set_up_app_user(&server)?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("backup.db");
    let raftkvctl = raftkv_tests::binaries::raftkvctl()?;
    let saved = Command::new(&raftkvctl)
        .args(["--endpoints", &server.endpoint(), "--user", "root:rootpw", "snapshot", "save"])
        .arg(&file)
        .output()?;
    anyhow::ensure!(saved.status.success(), "snapshot save: {}", String::from_utf8_lossy(&saved.stderr));
    let refused = Command::new(&raftkvctl).args(["--endpoints", &server.endpoint(), "--user", "app:apppw", "snapshot", "save"]).arg(dir.path().join("no.db")).output()?;
    anyhow::ensure!(!refused.status.success(), "a snapshot by a user without the root role");
    drop(server);
    let restored = Cluster::start_restored(1, &file).await?;
    let member = restored.member(0).server();
    assert_eq!(ctl_member(&restored, 0, "get /app/x")?, "Error: etcdserver: user name is empty\nexit=1\n", "authentication still enabled");
    assert_eq!(ctl(member, "--user app:apppw get /app/x --print-value-only")?, "1\nexit=0\n", "the user and its password");
    assert_eq!(ctl(member, "--user root:rootpw user list")?, "app\nroot\nexit=0\n");
    Ok(())
}

/// The next watch response within a few seconds.
async fn next_response(stream: &mut etcd_client::WatchStream) -> anyhow::Result<etcd_client::WatchResponse> {
    tokio::time::timeout(Duration::from_secs(5), stream.message()).await.context("no watch response")??.context("the watch stream ended")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_watch_is_canceled_once_its_user_may_no_longer_read() -> anyhow::Result<()> {
    // etcd 3.4 checks a watch only when it is created: its client keeps
    // reading what it may no longer read. raftkv cancels it, in the words
    // of a refused watch, before any later event.
    let server = Server::start(Flavor::Raftkv).await?;
    set_up_app_user(&server)?;
    let options = etcd_client::ConnectOptions::new().with_user("app", "apppw");
    let mut app = etcd_client::Client::connect([server.endpoint()], Some(options)).await?;
    let mut stream = app.watch("/app/", Some(etcd_client::WatchOptions::new().with_prefix())).await?;
    let created = next_response(&mut stream).await?;
    assert!(created.created() && !created.canceled(), "{created:?}");
    // An Election.Observe of a name under the prefix: a watch too.
    let mut observe = app.election_client().observe("/app/e").await?;
    let out = ctl(&server, "--user root:rootpw put /app/a 1")?;
    anyhow::ensure!(out.ends_with("exit=0\n"), "{out}");
    let r = next_response(&mut stream).await?;
    let keys: Vec<&[u8]> = r.events().iter().filter_map(|e| e.kv()).map(|kv| kv.key()).collect();
    assert_eq!(keys, vec![&b"/app/a"[..]], "an event while the user may read");

    // Another user's role changes: the watch goes on.
    for cmd in ["--user root:rootpw role add other", "--user root:rootpw put /app/b 2"] {
        let out = ctl(&server, cmd)?;
        anyhow::ensure!(out.ends_with("exit=0\n"), "{cmd}: {out}");
    }
    let r = next_response(&mut stream).await?;
    assert!(!r.canceled(), "{r:?}");
    assert_eq!(r.events().len(), 1);

    // Its read right goes: canceled, and nothing put afterwards arrives.
    for cmd in ["--user root:rootpw role revoke-permission app /app/ --prefix=true", "--user root:rootpw put /app/c 3"] {
        let out = ctl(&server, cmd)?;
        anyhow::ensure!(out.ends_with("exit=0\n"), "{cmd}: {out}");
    }
    let r = next_response(&mut stream).await?;
    assert!(r.canceled() && r.events().is_empty(), "{r:?}");
    assert_eq!(r.cancel_reason(), "rpc error: code = PermissionDenied desc = etcdserver: permission denied");
    let observed = tokio::time::timeout(Duration::from_secs(5), observe.message()).await.context("the observe stream went on")?;
    let denied = observed.expect_err("observe after the revoke");
    assert!(denied.to_string().contains("etcdserver: permission denied"), "{denied}");
    let after = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
    anyhow::ensure!(!matches!(after, Ok(Ok(Some(ref r))) if !r.events().is_empty()), "an event after the cancellation: {after:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_is_good_at_once_on_a_member_that_had_not_applied_it() -> anyhow::Result<()> {
    // A simple token reaches the other members through raft: a follower
    // paused while it was handed out is asked with it the moment it runs
    // again, before it has caught up. etcd waits for the raft index its
    // tokens carry; raftkv for a read index. Neither says "invalid auth
    // token".
    raftkv_tests::cluster::for_each_flavor(3, &[], async |cluster: &mut Cluster| {
        let leader = cluster.leader().await?;
        for cmd in ["user add root:rootpw", "user add app:apppw", "role add app", "role grant-permission app --prefix=true readwrite /app/", "put /app/x 1", "user grant-role app app", "auth enable"] {
            let out = ctl_member(cluster, leader, cmd)?;
            anyhow::ensure!(out.ends_with("exit=0\n"), "{cmd}: {out}");
        }
        let follower = cluster.members().into_iter().find(|&i| i != leader).context("a follower")?;
        cluster.pause(follower)?;
        let token = token_of(cluster.member(leader).server(), "app", "apppw").await;
        cluster.resume(follower)?;
        let token = token?;
        let got = range_with_token(&cluster.member(follower).endpoint(), &token, "/app/x").await?;
        anyhow::ensure!(got == Ok(1), "the token on the follower just resumed: {got:?}");
        Ok(())
    })
    .await
}

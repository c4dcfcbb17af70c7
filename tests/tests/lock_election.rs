//! The Lock and Election services, against real etcd and raftkv with the
//! same observations: a second locker waits for the first; ten clients
//! incrementing one counter under the lock lose no update; campaign,
//! leader, proclaim, observe, resign and their errors.

use std::time::Duration;

use anyhow::Context;
use etcd_client::{Client, LockOptions, ProclaimOptions, ResignOptions};
use raftkv_tests::both::for_both;
use raftkv_tests::describe;

async fn lease(c: &mut Client) -> anyhow::Result<i64> {
    Ok(c.lease_grant(30, None).await?.id())
}

fn suffix_free(key: &[u8]) -> String {
    // The part after the name is the lease id, random per server.
    let k = String::from_utf8_lossy(key);
    k.split('/').next().unwrap_or_default().to_string() + "/<lease>"
}

#[tokio::test]
async fn a_second_locker_waits_until_the_first_unlocks() -> anyhow::Result<()> {
    for_both(|mut c: Client| async move {
        let mut seen = Vec::new();
        let (l1, l2) = (lease(&mut c).await?, lease(&mut c).await?);
        let first = c
            .lock("job", Some(LockOptions::new().with_lease(l1)))
            .await?;
        seen.push(format!("first holds {}", suffix_free(first.key())));
        let mut c2 = c.clone();
        let second = tokio::spawn(async move {
            c2.lock("job", Some(LockOptions::new().with_lease(l2)))
                .await
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        anyhow::ensure!(!second.is_finished(), "the second locker got a held lock");
        seen.push("second waiting".to_owned());
        c.unlock(first.key()).await?;
        let got = tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .context("second never got the lock")???;
        anyhow::ensure!(got.key() != first.key(), "both lockers hold the same key");
        seen.push(format!("second holds {}", suffix_free(got.key())));
        Ok(seen)
    })
    .await
}

#[tokio::test]
async fn ten_clients_counting_under_the_lock_lose_no_update() -> anyhow::Result<()> {
    const CLIENTS: usize = 10;
    const ROUNDS: usize = 5;
    for_both(|c: Client| async move {
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move {
                let l = lease(&mut c).await?;
                for _ in 0..ROUNDS {
                    let held = c
                        .lock("counter-lock", Some(LockOptions::new().with_lease(l)))
                        .await?;
                    let n: u64 = match c.get("counter", None).await?.kvs().first() {
                        Some(kv) => kv.value_str()?.parse()?,
                        None => 0,
                    };
                    c.put("counter", (n + 1).to_string(), None).await?;
                    c.unlock(held.key()).await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let mut c = c.clone();
        let total = c
            .get("counter", None)
            .await?
            .kvs()
            .first()
            .map(|kv| kv.value_str().unwrap_or_default().to_string());
        let expected = (CLIENTS * ROUNDS).to_string();
        anyhow::ensure!(
            total.as_deref() == Some(expected.as_str()),
            "{CLIENTS} clients x {ROUNDS} increments under the lock ended at {total:?}, not {expected}"
        );
        Ok(total)
    })
    .await
}

#[tokio::test]
async fn campaign_proclaim_observe_resign() -> anyhow::Result<()> {
    for_both(|mut c: Client| async move {
        let mut seen = Vec::new();
        seen.push(format!(
            "leader before any campaign: {}",
            describe::outcome(&c.leader("e").await, |_| "a leader".into())
        ));
        let (l1, l2) = (lease(&mut c).await?, lease(&mut c).await?);
        let a = c.campaign("e", "a", l1).await?;
        let a_key = a.leader().context("leader key")?.clone();
        let mut observer = c.observe("e").await?;
        let first = observer.message().await?.context("observe")?;
        seen.push(format!(
            "observed {:?}",
            first
                .kv()
                .map(|kv| kv.value_str().unwrap_or_default().to_string())
        ));
        let mut c2 = c.clone();
        let b = tokio::spawn(async move { c2.campaign("e", "b", l2).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        anyhow::ensure!(!b.is_finished(), "b won an election a holds");
        seen.push("b waiting".to_owned());
        c.proclaim(
            "a2",
            Some(ProclaimOptions::new().with_leader(a_key.clone())),
        )
        .await?;
        let second = observer.message().await?.context("observe")?;
        seen.push(format!(
            "observed {:?}",
            second
                .kv()
                .map(|kv| kv.value_str().unwrap_or_default().to_string())
        ));
        let leader = c.leader("e").await?;
        seen.push(format!(
            "leader {:?}",
            leader
                .kv()
                .map(|kv| kv.value_str().unwrap_or_default().to_string())
        ));
        c.resign(Some(ResignOptions::new().with_leader(a_key.clone())))
            .await?;
        let b = tokio::time::timeout(Duration::from_secs(10), b)
            .await
            .context("b never won")???;
        anyhow::ensure!(
            b.leader().map_or(0, |k| k.rev()) > a_key.rev(),
            "b's leader key is not newer than a's"
        );
        seen.push("b won with a newer revision".to_owned());
        let third = observer.message().await?.context("observe")?;
        seen.push(format!(
            "observed {:?}",
            third
                .kv()
                .map(|kv| kv.value_str().unwrap_or_default().to_string())
        ));
        let observed: Vec<&String> = seen.iter().filter(|s| s.starts_with("observed")).collect();
        anyhow::ensure!(
            observed == ["observed Some(\"a\")", "observed Some(\"a2\")", "observed Some(\"b\")"],
            "observe saw {observed:?}, not a, a2, b in order"
        );
        let stale = c
            .proclaim("x", Some(ProclaimOptions::new().with_leader(a_key.clone())))
            .await;
        anyhow::ensure!(stale.is_err(), "a resigned leader's proclaim succeeded");
        seen.push(format!(
            "stale proclaim: {}",
            describe::outcome(&stale, |_| "ok".into())
        ));
        let stale_resign = c
            .resign(Some(ResignOptions::new().with_leader(a_key)))
            .await;
        seen.push(format!(
            "stale resign: {}",
            describe::outcome(&stale_resign, |_| "ok".into())
        ));
        Ok(seen)
    })
    .await
}

//! Watch, against real etcd and raftkv with the same observations: events
//! from now and replayed from history, filters, prev_kv, cancel, progress,
//! compacted start revisions, client-chosen and duplicate ids; and many
//! watchers on one prefix seeing every event once, in order.

use std::time::Duration;

use anyhow::{Context, bail};
use etcd_client::{Client, EventType, WatchFilterType, WatchOptions, WatchResponse, WatchStream};
use raftkv_tests::both::for_both;
use raftkv_tests::{Flavor, Server};

fn event(e: &etcd_client::Event) -> String {
    let kv = e.kv().map(|kv| {
        format!(
            "{}={} c{} m{} v{}",
            String::from_utf8_lossy(kv.key()),
            String::from_utf8_lossy(kv.value()),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version()
        )
    });
    let prev = e
        .prev_kv()
        .map(|kv| format!(" prev={}", String::from_utf8_lossy(kv.value())));
    let kind = if e.event_type() == EventType::Put {
        "PUT"
    } else {
        "DELETE"
    };
    format!(
        "{kind} {}{}",
        kv.unwrap_or_default(),
        prev.unwrap_or_default()
    )
}

/// One deterministic line per response.
fn describe(r: &WatchResponse) -> String {
    let events: Vec<String> = r.events().iter().map(event).collect();
    format!(
        "id={} created={} canceled={} compact={} rev={} reason={:?} events={events:?}",
        r.watch_id(),
        r.created(),
        r.canceled(),
        r.compact_revision(),
        r.header().map_or(0, |h| h.revision()),
        r.cancel_reason()
    )
}

/// The next `n` events, one line each, whatever responses carry them
/// (servers may batch several revisions into one response while catching up).
async fn events(stream: &mut WatchStream, n: usize) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .with_context(|| format!("only {} of {n} events within 10 s: {out:?}", out.len()))??
            .context("watch stream ended")?;
        if r.events().is_empty() {
            bail!("unexpected event-less response: {}", describe(&r));
        }
        for e in r.events() {
            out.push(format!("watch {}: {}", r.watch_id(), event(e)));
        }
    }
    Ok(out)
}

async fn next(stream: &mut WatchStream) -> anyhow::Result<String> {
    let r = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .context("no watch response within 10 s")??
        .context("watch stream ended")?;
    Ok(describe(&r))
}

#[tokio::test]
async fn events_from_now_and_from_history_with_filters_and_prev_kv() -> anyhow::Result<()> {
    for_both(|mut c: Client| async move {
        let mut seen = Vec::new();
        c.put("w/a", "1", None).await?;
        c.put("w/b", "1", None).await?;
        let mut now = c
            .watch(
                "w/",
                Some(WatchOptions::new().with_prefix().with_prev_key()),
            )
            .await?;
        seen.push(next(&mut now).await?);
        let mut history = c
            .watch(
                "w/",
                Some(WatchOptions::new().with_prefix().with_start_revision(2)),
            )
            .await?;
        let created = next(&mut history).await?;
        seen.push(
            created
                .split(" rev=")
                .next()
                .unwrap_or_default()
                .to_string(),
        );
        let mut no_put = c
            .watch(
                "w/",
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(1)
                        .with_filters([WatchFilterType::NoPut]),
                ),
            )
            .await?;
        seen.push(next(&mut no_put).await?);
        c.put("w/a", "2", None).await?;
        c.delete("w/b", None).await?;
        c.put("other", "x", None).await?;
        c.put("w/c", "1", None).await?;
        seen.extend(events(&mut now, 3).await?);
        // History from revision 2 covers both puts before the watch, then the rest.
        seen.extend(events(&mut history, 5).await?);
        seen.extend(events(&mut no_put, 1).await?);
        Ok(seen)
    })
    .await
}

#[tokio::test]
async fn cancel_progress_compaction_and_watch_ids() -> anyhow::Result<()> {
    for_both(|mut c: Client| async move {
        let mut seen = Vec::new();
        for i in 0..5 {
            c.put("k", format!("{i}"), None).await?;
        }
        c.compact(4, None).await?;
        let mut compacted = c
            .watch("k", Some(WatchOptions::new().with_start_revision(2)))
            .await?;
        seen.push(next(&mut compacted).await?);
        seen.push(next(&mut compacted).await?);

        let mut w = c
            .watch("k", Some(WatchOptions::new().with_watch_id(7)))
            .await?;
        seen.push(next(&mut w).await?);
        w.watch("k", Some(WatchOptions::new().with_watch_id(7)))
            .await?;
        seen.push(next(&mut w).await?);
        w.watch("j", None).await?;
        seen.push(next(&mut w).await?);
        w.request_progress().await?;
        seen.push(next(&mut w).await?);
        w.cancel(7).await?;
        seen.push(next(&mut w).await?);
        c.put("k", "after-cancel", None).await?;
        c.put("j", "1", None).await?;
        seen.push(next(&mut w).await?);
        Ok(seen)
    })
    .await
}

/// Many watchers on one stream each and a burst of writes: every watcher
/// sees every event exactly once, in revision order (raftkv only: the
/// point is raftkv's slow-watcher path, and the expectation is exact).
#[tokio::test]
async fn many_watchers_see_every_event_once_in_order() -> anyhow::Result<()> {
    const WATCHERS: usize = 200;
    const WRITES: i64 = 300;
    let server = Server::start(Flavor::Raftkv).await?;
    let mut streams = Vec::new();
    for _ in 0..WATCHERS {
        let mut c = server.client().await?;
        let mut s = c
            .watch("burst/", Some(WatchOptions::new().with_prefix()))
            .await?;
        s.message().await?.context("created")?;
        streams.push(s);
    }
    let mut writer = server.client().await?;
    let first = writer
        .put("burst/0", "0", None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    for i in 1..WRITES {
        writer
            .put(format!("burst/{}", i % 7), format!("{i}"), None)
            .await?;
    }
    for (n, s) in streams.iter_mut().enumerate() {
        let mut expect = first;
        while expect < first + WRITES {
            let r = tokio::time::timeout(Duration::from_secs(20), s.message())
                .await
                .with_context(|| format!("watcher {n} stalled waiting for revision {expect}"))??
                .context("stream ended")?;
            for e in r.events() {
                let rev = e.kv().map_or(0, |kv| kv.mod_revision());
                if rev != expect {
                    bail!("watcher {n}: got revision {rev}, expected {expect}");
                }
                expect += 1;
            }
        }
    }
    Ok(())
}

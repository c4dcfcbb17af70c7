//! Watch, against real etcd and raftkv with the same observations: events
//! from now and replayed from history, filters, prev_kv, cancel, progress,
//! compacted start revisions, client-chosen and duplicate ids; and many
//! watchers on one prefix seeing every event once, in order.

use std::time::Duration;

use anyhow::{Context, bail};
use etcd_client::{Client, Event, EventType, WatchFilterType, WatchOptions, WatchResponse, WatchStream};
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

/// The next `n` events, whatever responses carry them (servers may batch
/// several revisions into one response while catching up).
async fn raw_events(stream: &mut WatchStream, n: usize) -> anyhow::Result<Vec<(i64, Event)>> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .with_context(|| format!("only {} of {n} events within 10 s: {out:?}", out.len()))??
            .context("watch stream ended")?;
        if r.events().is_empty() {
            bail!("unexpected event-less response: {}", describe(&r));
        }
        out.extend(r.events().iter().map(|e| (r.watch_id(), e.clone())));
    }
    Ok(out)
}

/// The next `n` events, one line each, after checking them against what the
/// scenario wrote: exactly the `expected` (revision, type, key) in order,
/// each once, with `prev_kv` values where expected.
async fn events(
    stream: &mut WatchStream,
    expected: &[(i64, EventType, &str, Option<&str>)],
) -> anyhow::Result<Vec<String>> {
    let got = raw_events(stream, expected.len()).await?;
    let summary: Vec<(i64, EventType, String, Option<String>)> = got
        .iter()
        .map(|(_, e)| {
            let kv = e.kv();
            (
                kv.map_or(0, |kv| kv.mod_revision()),
                e.event_type(),
                kv.map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).unwrap_or_default(),
                e.prev_kv().map(|p| String::from_utf8_lossy(p.value()).into_owned()),
            )
        })
        .collect();
    let want: Vec<(i64, EventType, String, Option<String>)> = expected
        .iter()
        .map(|(rev, t, k, p)| (*rev, *t, (*k).to_owned(), p.map(str::to_owned)))
        .collect();
    anyhow::ensure!(summary == want, "watch events {summary:?}, expected {want:?}");
    Ok(got
        .iter()
        .map(|(id, e)| format!("watch {id}: {}", event(e)))
        .collect())
}

async fn next_response(stream: &mut WatchStream) -> anyhow::Result<WatchResponse> {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .context("no watch response within 10 s")??
        .context("watch stream ended")
}

async fn next(stream: &mut WatchStream) -> anyhow::Result<String> {
    Ok(describe(&next_response(stream).await?))
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
        let rev = |h: Option<&etcd_client::ResponseHeader>| h.map_or(0, |h| h.revision());
        let a2 = rev(c.put("w/a", "2", None).await?.header());
        let del_b = rev(c.delete("w/b", None).await?.header());
        c.put("other", "x", None).await?;
        let w_c = rev(c.put("w/c", "1", None).await?.header());
        use EventType::{Delete, Put};
        seen.extend(
            events(&mut now, &[(a2, Put, "w/a", Some("1")), (del_b, Delete, "w/b", Some("1")), (w_c, Put, "w/c", None)])
                .await?,
        );
        // History from revision 2 covers both puts before the watch, then the rest.
        seen.extend(
            events(
                &mut history,
                &[(2, Put, "w/a", None), (3, Put, "w/b", None), (a2, Put, "w/a", None), (del_b, Delete, "w/b", None), (w_c, Put, "w/c", None)],
            )
            .await?,
        );
        seen.extend(events(&mut no_put, &[(del_b, Delete, "w/b", None)]).await?);
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
        let cancel = next_response(&mut compacted).await?;
        anyhow::ensure!(
            cancel.canceled() && cancel.compact_revision() == 4 && cancel.events().is_empty(),
            "a watch from a compacted revision: {}",
            describe(&cancel)
        );
        seen.push(describe(&cancel));

        let mut w = c
            .watch("k", Some(WatchOptions::new().with_watch_id(7)))
            .await?;
        let created = next_response(&mut w).await?;
        anyhow::ensure!(created.created() && created.watch_id() == 7, "{}", describe(&created));
        seen.push(describe(&created));
        w.watch("k", Some(WatchOptions::new().with_watch_id(7)))
            .await?;
        seen.push(next(&mut w).await?);
        w.watch("j", None).await?;
        let j = next_response(&mut w).await?;
        anyhow::ensure!(j.created() && j.watch_id() != 7, "{}", describe(&j));
        seen.push(describe(&j));
        w.request_progress().await?;
        let progress = next_response(&mut w).await?;
        anyhow::ensure!(
            progress.events().is_empty() && progress.header().map(|h| h.revision()) == Some(6),
            "progress at the current revision 6: {}",
            describe(&progress)
        );
        seen.push(describe(&progress));
        w.cancel(7).await?;
        let canceled = next_response(&mut w).await?;
        anyhow::ensure!(canceled.canceled() && canceled.watch_id() == 7, "{}", describe(&canceled));
        seen.push(describe(&canceled));
        c.put("k", "after-cancel", None).await?;
        c.put("j", "1", None).await?;
        // Nothing for the canceled watch: the next event is j's, at revision 8.
        let after = next_response(&mut w).await?;
        let revs: Vec<(i64, i64)> = after
            .events()
            .iter()
            .map(|e| (after.watch_id(), e.kv().map_or(0, |kv| kv.mod_revision())))
            .collect();
        anyhow::ensure!(revs == [(j.watch_id(), 8)], "after the cancel: {}", describe(&after));
        seen.push(describe(&after));
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

/// A progress request made while a watcher is still replaying history is
/// answered once it has caught up, after every event, at the revision of
/// the last one, as etcd answers it from 3.4.31 and 3.5.13 (kube-apiserver
/// relies on it for consistent reads from its watch cache). Raftkv only:
/// Debian's etcd 3.4.23 predates that and drops the request.
#[tokio::test]
async fn a_progress_request_during_catch_up_is_answered_after_every_event() -> anyhow::Result<()> {
    const HISTORY: i64 = 3000;
    let server = Server::start(Flavor::Raftkv).await?;
    let mut c = server.client().await?;
    let mut first = 0;
    for i in 0..HISTORY {
        let r = c.put(format!("hist/{}", i % 10), format!("{i}"), None).await?;
        if i == 0 {
            first = r.header().map_or(0, |h| h.revision());
        }
    }
    let last = first + HISTORY - 1;
    let mut w = c.watch("hist/", Some(WatchOptions::new().with_prefix().with_start_revision(first))).await?;
    w.request_progress().await?;
    let mut expect = first;
    loop {
        let r = next_response(&mut w).await.with_context(|| format!("waiting for revision {expect} or the progress"))?;
        if r.created() {
            continue;
        }
        if r.events().is_empty() {
            let rev = r.header().map_or(0, |h| h.revision());
            anyhow::ensure!(
                r.watch_id() == -1 && expect == last + 1 && rev == last,
                "a progress response at revision {rev} (watch id {}) after the events up to {}, of {first}..={last}",
                r.watch_id(),
                expect - 1
            );
            return Ok(());
        }
        for e in r.events() {
            let rev = e.kv().map_or(0, |kv| kv.mod_revision());
            anyhow::ensure!(rev == expect, "got revision {rev}, expected {expect}");
            expect += 1;
        }
    }
}

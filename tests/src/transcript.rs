//! etcdctl transcripts of two servers, made comparable: what legitimately
//! differs between any two fresh clusters (ids, terms, timestamps, ports)
//! masked.

use std::sync::LazyLock;

use regex::Regex;

/// What legitimately differs between two fresh clusters, and its mask.
pub static MASKS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        // Header fields in `-w json`.
        (
            r#""(cluster_id|member_id|raft_term)":\d+"#,
            r#""$1":<masked>"#,
        ),
        // Header fields in `-w fields`.
        (
            r#""(ClusterID|MemberID|RaftTerm)" : \d+"#,
            r#""$1" : <masked>"#,
        ),
        // Member and lease ids printed in hex (%016x).
        (r"\b[0-9a-f]{16}\b", "<hex-id>"),
        // Member ids in `member list` (%x: fewer digits when they lead
        // with zeros).
        (r"(?m)^[0-9a-f]{1,15}, (started|unstarted),", "<hex-id>, $1,"),
        // etcdctl's retry warnings on stderr: time, client id, port.
        (r#""ts":"[^"]*""#, r#""ts":"<masked>""#),
        (
            r"client-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "client-<masked>",
        ),
        (r"127\.0\.0\.1:\d+", "127.0.0.1:<port>"),
    ]
    .into_iter()
    .map(|(pattern, mask)| {
        (
            Regex::new(pattern).expect("the mask patterns are valid"),
            mask,
        )
    })
    .collect()
});

pub fn mask(transcript: &str) -> String {
    MASKS
        .iter()
        .fold(transcript.to_owned(), |text, (re, mask)| {
            re.replace_all(&text, *mask).into_owned()
        })
}


//! Which backups of a schedule its retention prunes: pure, on the
//! schedule's backups as the controller lists them and a clock.
//!
//! Completed backups are kept newest first up to `count`, and while younger
//! than `maxAge`; with both, a backup goes once either says so. The newest
//! completed backup is never pruned, whatever its age: a schedule that
//! stopped succeeding keeps its last good backup. Failed backups older than
//! the newest completed one are pruned too (they stored nothing); pending
//! and running ones never are.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::crd::{BackupPhase, Retention};

/// One backup a schedule owns.
#[derive(Debug, Clone)]
pub struct Owned {
    pub name: String,
    /// When it was started (its creation time).
    pub started: Timestamp,
    pub phase: BackupPhase,
}

/// `maxAge`'s form (`30d`): a number and one of `s`, `m`, `h`, `d`, `w`.
pub fn parse_age(age: &str) -> Result<SignedDuration, String> {
    let bad = || format!("retention maxAge {age:?} is not a number and one of s, m, h, d, w");
    let (number, unit) = age.split_at(age.len().saturating_sub(1));
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: i64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(seconds).map(SignedDuration::from_secs).ok_or_else(bad)
}

/// The names of the backups to prune, oldest first.
pub fn prune(backups: &[Owned], retention: &Retention, now: Timestamp) -> Result<Vec<String>, String> {
    let max_age = retention.max_age.as_deref().map(parse_age).transpose()?;
    let mut completed: Vec<&Owned> = backups.iter().filter(|b| b.phase == BackupPhase::Completed).collect();
    completed.sort_by(|a, b| b.started.cmp(&a.started).then_with(|| b.name.cmp(&a.name)));
    let mut doomed: Vec<&Owned> = Vec::new();
    for (i, b) in completed.iter().enumerate() {
        if i == 0 {
            continue;
        }
        let over_count = retention.count.is_some_and(|n| i >= n as usize);
        let too_old = max_age.is_some_and(|age| now.duration_since(b.started) > age);
        if over_count || too_old {
            doomed.push(b);
        }
    }
    if let Some(newest) = completed.first() {
        doomed.extend(backups.iter().filter(|b| b.phase == BackupPhase::Failed && b.started < newest.started));
    }
    doomed.sort_by(|a, b| a.started.cmp(&b.started).then_with(|| a.name.cmp(&b.name)));
    Ok(doomed.into_iter().map(|b| b.name.clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hour: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + hour * 3600).expect("a time")
    }

    fn owned(name: &str, hour: i64, phase: BackupPhase) -> Owned {
        Owned { name: name.into(), started: at(hour), phase }
    }

    fn keep(count: Option<u32>, max_age: Option<&str>) -> Retention {
        Retention { count, max_age: max_age.map(Into::into) }
    }

    use BackupPhase::{Completed, Failed, Pending, Running};

    #[test]
    fn ages_parse_with_their_units_and_nonsense_does_not() {
        assert_eq!(parse_age("30d"), Ok(SignedDuration::from_hours(720)));
        assert_eq!(parse_age("90m"), Ok(SignedDuration::from_mins(90)));
        assert_eq!(parse_age("2w"), Ok(SignedDuration::from_hours(336)));
        for bad in ["", "d", "30", "30y", "-1d", "1.5h", "99999999999999999999d"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_count_keeps_the_newest_completed_backups() {
        let backups: Vec<Owned> = (0..6).map(|h| owned(&format!("b{h}"), h, Completed)).collect();
        assert_eq!(prune(&backups, &keep(Some(4), None), at(6)), Ok(vec!["b0".to_owned(), "b1".to_owned()]));
        assert_eq!(prune(&backups, &keep(Some(10), None), at(6)), Ok(vec![]));
    }

    #[test]
    fn an_age_prunes_older_backups_but_never_the_newest_complete_one() {
        let backups = vec![owned("old", 0, Completed), owned("mid", 20, Completed), owned("new", 30, Completed)];
        assert_eq!(prune(&backups, &keep(None, Some("12h")), at(36)), Ok(vec!["old".to_owned(), "mid".to_owned()]));
        // Every backup past its age: the newest stays, as the only good one.
        assert_eq!(prune(&backups, &keep(None, Some("1h")), at(100)), Ok(vec!["old".to_owned(), "mid".to_owned()]));
        let only = vec![owned("only", 0, Completed), owned("failed", 5, Failed)];
        assert_eq!(prune(&only, &keep(Some(1), Some("1h")), at(100)), Ok(vec![]));
    }

    #[test]
    fn with_count_and_age_either_prunes() {
        let backups: Vec<Owned> = (0..5).map(|h| owned(&format!("b{h}"), h * 10, Completed)).collect();
        // count 3 keeps b4 b3 b2; 25h from hour 46 keeps b4 b3 (b2, at 20, is 26h old).
        assert_eq!(prune(&backups, &keep(Some(3), Some("25h")), at(46)), Ok(vec!["b0".to_owned(), "b1".to_owned(), "b2".to_owned()]));
    }

    #[test]
    fn failed_backups_before_a_good_one_go_and_running_ones_stay() {
        let backups = vec![
            owned("failed-early", 0, Failed),
            owned("good", 1, Completed),
            owned("failed-late", 2, Failed),
            owned("pending", 3, Pending),
            owned("running", 4, Running),
        ];
        assert_eq!(prune(&backups, &keep(Some(1), None), at(5)), Ok(vec!["failed-early".to_owned()]));
        // No completed backup at all: nothing is pruned.
        let none_good = vec![owned("f1", 0, Failed), owned("f2", 1, Failed)];
        assert_eq!(prune(&none_good, &keep(Some(1), Some("1s")), at(50)), Ok(vec![]));
    }
}

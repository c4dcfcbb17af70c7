//! When a `KvBackupSchedule` takes its next backup: pure schedule math on a
//! clock the caller passes in, so that every case (suspend, immediate,
//! runs missed while the operator was down) is a unit test.
//!
//! The rules are a CronJob's with `concurrencyPolicy: Forbid`: never two
//! backups of a schedule at once; runs missed while the operator was down
//! (or while a backup ran) are caught up by one backup, not one per missed
//! time; a suspended schedule starts nothing and names no next time.

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::TimeZone;

/// A parsed cron expression (UTC).
#[derive(Debug, Clone)]
pub struct Schedule(croner::Cron);

impl Schedule {
    /// Five fields (minutes) or six (seconds first), or `@daily` and its
    /// kin; the error says what is wrong, for the schedule's condition.
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        // croner's default parser takes seconds as an optional sixth field.
        croner::parser::CronParser::new().parse(expr).map(Schedule).map_err(|e| format!("schedule {expr:?} does not parse: {e}"))
    }

    /// The first time the schedule names strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.0.find_next_occurrence(&t.to_zoned(TimeZone::UTC), false).ok().map(|z| z.timestamp())
    }

    /// The last time the schedule names at or before `t`.
    pub fn last_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        self.0.find_previous_occurrence(&t.to_zoned(TimeZone::UTC), true).ok().map(|z| z.timestamp())
    }
}

/// What the schedule knows of itself.
#[derive(Debug, Clone, Copy)]
pub struct State {
    pub suspend: bool,
    pub immediate: bool,
    pub created: Timestamp,
    /// When its last backup was started (status.lastScheduleTime).
    pub last_scheduled: Option<Timestamp>,
    /// Whether one of its backups is Pending or Running.
    pub running: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Start a backup now, for this scheduled time.
    pub start: Option<Timestamp>,
    /// The next time to look again, as status.nextScheduleTime.
    pub next: Option<Timestamp>,
}

pub fn decide(schedule: &Schedule, state: State, now: Timestamp) -> Decision {
    if state.suspend {
        return Decision { start: None, next: None };
    }
    let next = schedule.next_after(now);
    if state.running {
        return Decision { start: None, next };
    }
    let Some(since) = state.last_scheduled else {
        if state.immediate {
            return Decision { start: Some(now), next };
        }
        // The first run is the first time named after creation.
        let due = schedule.last_at_or_before(now).filter(|t| *t > state.created);
        return Decision { start: due, next };
    };
    let due = schedule.last_at_or_before(now).filter(|t| *t > since);
    Decision { start: due, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    fn state(created: &str) -> State {
        State { suspend: false, immediate: false, created: at(created), last_scheduled: None, running: false }
    }

    #[test]
    fn five_and_six_fields_and_nicknames_parse_and_nonsense_does_not() {
        let daily = Schedule::parse("0 3 * * *").expect("five fields");
        assert_eq!(daily.next_after(at("2026-12-06T05:00:00Z")), Some(at("2026-12-07T03:00:00Z")));
        let seconds = Schedule::parse("30 0 3 * * *").expect("six fields");
        assert_eq!(seconds.next_after(at("2026-12-06T05:00:00Z")), Some(at("2026-12-07T03:00:30Z")));
        let hourly = Schedule::parse("@hourly").expect("a nickname");
        assert_eq!(hourly.next_after(at("2026-12-06T05:10:00Z")), Some(at("2026-12-06T06:00:00Z")));
        for bad in ["", "every day", "61 * * * *", "* * * *", "0 0 32 * *"] {
            let e = Schedule::parse(bad).expect_err(bad);
            assert!(e.starts_with(&format!("schedule {bad:?} does not parse")), "{e}");
        }
    }

    #[test]
    fn the_first_backup_waits_for_the_schedule_unless_immediate() {
        let s = Schedule::parse("0 3 * * *").expect("parse");
        let st = state("2026-12-06T05:00:00Z");
        let d = decide(&s, st, at("2026-12-06T05:00:01Z"));
        assert_eq!(d, Decision { start: None, next: Some(at("2026-12-07T03:00:00Z")) });
        let d = decide(&s, State { immediate: true, ..st }, at("2026-12-06T05:00:01Z"));
        assert_eq!(d.start, Some(at("2026-12-06T05:00:01Z")));
        // Once the time comes (the controller woke a little late).
        let d = decide(&s, st, at("2026-12-07T03:00:02Z"));
        assert_eq!(d, Decision { start: Some(at("2026-12-07T03:00:00Z")), next: Some(at("2026-12-08T03:00:00Z")) });
    }

    #[test]
    fn a_run_is_taken_once_and_not_again_before_the_next_time() {
        let s = Schedule::parse("*/15 * * * *").expect("parse");
        let st = State { last_scheduled: Some(at("2026-12-06T05:15:00Z")), ..state("2026-12-01T00:00:00Z") };
        assert_eq!(decide(&s, st, at("2026-12-06T05:20:00Z")).start, None);
        assert_eq!(decide(&s, st, at("2026-12-06T05:30:00Z")).start, Some(at("2026-12-06T05:30:00Z")));
    }

    #[test]
    fn runs_missed_while_the_operator_was_down_are_caught_up_once() {
        let s = Schedule::parse("0 * * * *").expect("parse");
        // Down from 05:10 to 09:40: four hourly runs missed, one backup taken,
        // for the latest of them; then nothing until 10:00.
        let st = State { last_scheduled: Some(at("2026-12-06T05:00:00Z")), ..state("2026-12-01T00:00:00Z") };
        let d = decide(&s, st, at("2026-12-06T09:40:00Z"));
        assert_eq!(d, Decision { start: Some(at("2026-12-06T09:00:00Z")), next: Some(at("2026-12-06T10:00:00Z")) });
        let after = State { last_scheduled: d.start, ..st };
        assert_eq!(decide(&s, after, at("2026-12-06T09:41:00Z")).start, None);
    }

    #[test]
    fn a_running_backup_holds_the_next_and_suspend_stops_everything() {
        let s = Schedule::parse("0 * * * *").expect("parse");
        let st = State { last_scheduled: Some(at("2026-12-06T05:00:00Z")), running: true, ..state("2026-12-01T00:00:00Z") };
        let d = decide(&s, st, at("2026-12-06T06:00:05Z"));
        assert_eq!(d, Decision { start: None, next: Some(at("2026-12-06T07:00:00Z")) });
        // Once it finished, the held run is taken.
        let d = decide(&s, State { running: false, ..st }, at("2026-12-06T06:20:00Z"));
        assert_eq!(d.start, Some(at("2026-12-06T06:00:00Z")));
        let suspended = State { suspend: true, immediate: true, last_scheduled: None, running: false, ..st };
        assert_eq!(decide(&s, suspended, at("2026-12-06T06:20:00Z")), Decision { start: None, next: None });
    }
}

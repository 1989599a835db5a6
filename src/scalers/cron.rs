//! Cron scaler: asks for `desiredReplicas` inside a window that opens at each `start` and
//! closes at each `end` (5-field cron expressions in an IANA `timezone`), like KEDA's `cron`.
//!
//! The window logic is KEDA's: with `nextStart` and `nextEnd` the first start and end strictly
//! after now, the window is open unless the next start comes before the next end. So the window
//! is `[the last start before an end, that end)`, and a start repeated before the end (an hourly
//! start with a daily end) does not open it earlier. Inside, the value is `desiredReplicas`
//! (target 1, AverageValue, so the HPA asks for that many) and the trigger is active; outside
//! it the value is 0 and the trigger inactive, as in KEDA since 2.18 (before, KEDA served 1).
//!
//! Expressions follow robfig/cron's standard parser, which KEDA uses: `minute hour
//! day-of-month month day-of-week`, with `*`, `?`, lists, ranges, steps (`*/15`, `5/10`,
//! `1-5/2`) and names (`JAN`-`DEC`, `SUN`-`SAT`). As in robfig (and Vixie cron), when both
//! day-of-month and day-of-week are restricted a day matching either fires; when one is `*` or
//! `?`, both must match. Descriptors (`@daily`) and `TZ=` prefixes are rejected, as KEDA's parser
//! rejects descriptors; the zone comes from `timezone` only.
//!
//! Where spillway differs from KEDA, on purpose:
//! - Daylight-saving changes: every local time an expression names happens exactly once, at the
//!   first instant the zone's wall clock shows it or has passed it. A time skipped by a
//!   spring-forward (02:30 in Europe/Berlin on the last Sunday of March) fires when the clock
//!   jumps (03:00 CEST); robfig skips it, so KEDA's window for `30 2 * * *`-`0 6 * * *` stays
//!   open from the previous day's 06:00 to 06:00 that day. A time repeated by a fall-back fires at
//!   its first occurrence only; robfig fires it twice, which can reopen a window inside the
//!   repeated hour.
//! - A start and an end at the same instant count as open, as in KEDA, unless they are different
//!   local times collapsed onto one instant by a spring-forward (`15 2`-`45 2` on that night):
//!   that window did not exist on the wall clock, so it stays closed.
//! - `7` is accepted as Sunday. Expressions that can never fire (`0 0 30 2 *`) are rejected;
//!   robfig accepts them and its `Next` returns the zero time, which KEDA reads as "open".
//! - `desiredReplicas` must be at least 1 (KEDA only rejects 0).
//!
//! The scaler reads no network; time comes from a [`Clock`], so tests and dry runs can drive it.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::offset::LocalResult;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::{ActivationInput, Reading, Scaler, ScalerError, TriggerParams, normalize_metric_name};
use crate::secret::SecretSource;

/// The broker name in errors, logs and metric labels.
const BROKER: &str = "cron";
/// How far ahead the next start or end is looked for (two leap cycles, so `29 2` always fires).
const SEARCH_DAYS: i64 = 8 * 366 + 2;

/// A `cron` trigger: KEDA's parameter names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CronTrigger {
    /// IANA time zone name, e.g. `Europe/Berlin`.
    #[schemars(length(min = 1, max = 64))]
    pub timezone: String,
    /// 5-field cron expression at which the window opens.
    #[schemars(length(min = 1, max = 256))]
    pub start: String,
    /// 5-field cron expression at which the window closes.
    #[schemars(length(min = 1, max = 256))]
    pub end: String,
    /// Replicas asked for inside the window.
    #[schemars(range(min = 1))]
    pub desired_replicas: u32,
}

impl CronTrigger {
    /// The zone, start and end, parsed; errors name the field.
    pub fn window(&self) -> Result<CronWindow, ScalerError> {
        let timezone = Tz::from_str(self.timezone.trim()).map_err(|_| {
            ScalerError::invalid(
                BROKER,
                "timezone",
                format!("{:?} is not an IANA time zone name", self.timezone),
            )
        })?;
        let start = CronSchedule::parse(&self.start).map_err(|err| {
            ScalerError::invalid(
                BROKER,
                "start",
                format!("error parsing start schedule: {err}"),
            )
        })?;
        let end = CronSchedule::parse(&self.end).map_err(|err| {
            ScalerError::invalid(BROKER, "end", format!("error parsing end schedule: {err}"))
        })?;
        if self.start.trim() == self.end.trim() || start == end {
            return Err(ScalerError::invalid(
                BROKER,
                "end",
                "start and end can not have exactly same time input",
            ));
        }
        Ok(CronWindow {
            timezone,
            start,
            end,
        })
    }

    fn target(&self) -> String {
        format!(
            "{} {:?} to {:?}",
            self.timezone.trim(),
            self.start.trim(),
            self.end.trim()
        )
    }
}

/// KEDA's `parseCronTimeFormat`: makes an expression fit in a metric name.
fn metric_form(expression: &str) -> String {
    expression
        .replace(' ', "")
        .replace('*', "x")
        .replace('/', "Sl")
        .replace('?', "Qm")
        .replace(',', "Cm")
}

impl TriggerParams for CronTrigger {
    /// Target 1 per replica, so the HPA asks for `desiredReplicas` replicas.
    fn target_value(&self) -> f64 {
        1.0
    }

    /// 0: the value is `desiredReplicas` (at least 1) inside the window and 0 outside, so the
    /// trigger is active exactly inside it.
    fn activation_threshold(&self) -> f64 {
        0.0
    }

    fn metric_name(&self) -> String {
        normalize_metric_name(&format!(
            "cron-{}-{}-{}",
            self.timezone.trim(),
            metric_form(self.start.trim()),
            metric_form(self.end.trim())
        ))
    }

    fn validate(&self) -> Result<(), ScalerError> {
        self.window()?;
        if self.desired_replicas == 0 {
            return Err(ScalerError::invalid(
                BROKER,
                "desiredReplicas",
                "no desiredReplicas specified: must be at least 1",
            ));
        }
        Ok(())
    }

    fn secret_sources(&mut self) -> Vec<(&'static str, &mut SecretSource)> {
        let CronTrigger {
            timezone: _,
            start: _,
            end: _,
            desired_replicas: _,
        } = self;
        Vec::new()
    }
}

/// A parsed 5-field cron expression: one bit per allowed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CronSchedule {
    minutes: u64,
    hours: u32,
    /// Bits 1..=31.
    days_of_month: u32,
    /// Bits 1..=12.
    months: u16,
    /// Bits 0..=6, Sunday = 0.
    days_of_week: u8,
    /// Day-of-month or day-of-week is `*`/`?`: both must match (else either may).
    days_of_month_star: bool,
    days_of_week_star: bool,
}

/// One field's bounds and names, as in robfig/cron.
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
/// 7 is accepted as Sunday (folded onto 0 after parsing).
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day of week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

impl FieldSpec {
    fn value(&self, text: &str) -> Result<u32, String> {
        let lower = text.to_ascii_lowercase();
        if let Some(index) = self.names.iter().position(|n| *n == lower) {
            // Month names start at 1 (the field minimum), weekday names at 0.
            return Ok(index as u32 + self.min);
        }
        text.parse::<u32>()
            .map_err(|_| format!("{}: failed to parse int from {text:?}", self.name))
    }

    /// Parses one comma-separated field into a bit set; the flag says it was `*` or `?`.
    fn parse(&self, field: &str) -> Result<(u64, bool), String> {
        let mut bits = 0u64;
        let mut star = false;
        for part in field.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((range, step)) => {
                    if step.contains('/') {
                        return Err(format!("{}: too many slashes in {part:?}", self.name));
                    }
                    let step = step.parse::<u32>().ok().filter(|s| *s > 0).ok_or_else(|| {
                        format!(
                            "{}: step of range should be a positive number in {part:?}",
                            self.name
                        )
                    })?;
                    (range, Some(step))
                }
                None => (part, None),
            };
            let (start, end, is_star) = if range == "*" || range == "?" {
                (self.min, self.max, true)
            } else {
                match range.split_once('-') {
                    Some((low, high)) => {
                        if high.contains('-') {
                            return Err(format!("{}: too many hyphens in {part:?}", self.name));
                        }
                        (self.value(low)?, self.value(high)?, false)
                    }
                    // `N/step` means N through the maximum.
                    None => {
                        let value = self.value(range)?;
                        (value, if step.is_some() { self.max } else { value }, false)
                    }
                }
            };
            if start < self.min {
                return Err(format!(
                    "{}: beginning of range ({start}) below minimum ({})",
                    self.name, self.min
                ));
            }
            if end > self.max {
                return Err(format!(
                    "{}: end of range ({end}) above maximum ({})",
                    self.name, self.max
                ));
            }
            if start > end {
                return Err(format!(
                    "{}: beginning of range ({start}) beyond end of range ({end})",
                    self.name
                ));
            }
            let step = step.unwrap_or(1);
            star |= is_star && step == 1;
            for value in (start..=end).step_by(step as usize) {
                bits |= 1 << value;
            }
        }
        Ok((bits, star))
    }
}

impl CronSchedule {
    /// Parses `minute hour day-of-month month day-of-week`.
    pub fn parse(expression: &str) -> Result<Self, String> {
        let expression = expression.trim();
        if expression.starts_with('@') {
            return Err(format!(
                "descriptors such as {expression:?} are not accepted; write the 5 fields"
            ));
        }
        if expression.starts_with("TZ=") || expression.starts_with("CRON_TZ=") {
            return Err("a TZ= prefix is not accepted; set timezone instead".into());
        }
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let [minute, hour, day_of_month, month, day_of_week] = fields[..] else {
            return Err(format!(
                "expected exactly 5 fields (minute hour day-of-month month day-of-week), found {}: {expression:?}",
                fields.len()
            ));
        };
        let (minutes, _) = MINUTE.parse(minute)?;
        let (hours, _) = HOUR.parse(hour)?;
        let (days_of_month, days_of_month_star) = DAY_OF_MONTH.parse(day_of_month)?;
        let (months, _) = MONTH.parse(month)?;
        let (mut days_of_week, days_of_week_star) = DAY_OF_WEEK.parse(day_of_week)?;
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week & !(1 << 7)) | 1;
        }
        let schedule = Self {
            minutes,
            hours: hours as u32,
            days_of_month: days_of_month as u32,
            months: months as u16,
            days_of_week: days_of_week as u8,
            days_of_month_star,
            days_of_week_star,
        };
        if !schedule.can_fire() {
            return Err(format!(
                "{expression:?} never fires: no month in it has that day"
            ));
        }
        Ok(schedule)
    }

    /// False only when day-of-month alone decides and no chosen month has such a day.
    fn can_fire(&self) -> bool {
        if !self.days_of_week_star || self.days_of_month_star {
            // Day-of-week can match in any month (or both are `*`).
            return true;
        }
        (1..=12u32)
            .filter(|m| self.months & (1 << m) != 0)
            .any(|m| {
                let longest = match m {
                    2 => 29,
                    4 | 6 | 9 | 11 => 30,
                    _ => 31,
                };
                (1..=longest).any(|d| self.days_of_month & (1 << d) != 0)
            })
    }

    /// robfig's `dayMatches`: AND when either day field is `*`, else OR.
    fn day_matches(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().num_days_from_sunday()) != 0;
        if self.days_of_month_star || self.days_of_week_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first instant strictly after `now` at which this schedule fires in `tz`, or `None`
    /// when it does not fire within about eight years.
    pub fn next_after(&self, tz: Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_firing(tz, now).map(|f| f.at)
    }

    /// Like [`CronSchedule::next_after`], with the local time that fires.
    fn next_firing(&self, tz: Tz, now: DateTime<Utc>) -> Option<Firing> {
        // A local time at or before now's wall clock fires at or before now (see fire_instant),
        // so candidates start at the next whole minute of the wall clock.
        let local_now = now.with_timezone(&tz).naive_local();
        let first = local_now.with_second(0)?.with_nanosecond(0)? + TimeDelta::minutes(1);
        let first_date = first.date();
        for offset in 0..SEARCH_DAYS {
            let date = first_date + TimeDelta::days(offset);
            if !self.day_matches(date) {
                continue;
            }
            let same_day = date == first_date;
            for hour in (0..24u32).filter(|h| self.hours & (1 << h) != 0) {
                if same_day && hour < first.hour() {
                    continue;
                }
                for minute in (0..60u32).filter(|m| self.minutes & (1 << m) != 0) {
                    if same_day && hour == first.hour() && minute < first.minute() {
                        continue;
                    }
                    let local = date.and_hms_opt(hour, minute, 0)?;
                    let at = fire_instant(tz, local);
                    if at > now {
                        return Some(Firing { at, local });
                    }
                }
            }
        }
        None
    }
}

/// One firing of a schedule, ordered by instant, then by the local time it stands for (which
/// differs only for local times skipped by a spring-forward).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Firing {
    at: DateTime<Utc>,
    local: NaiveDateTime,
}

/// When the local time `local` happens in `tz`: the first instant whose wall clock shows it or
/// a later time. A repeated time (fall-back) is its first occurrence; a skipped time
/// (spring-forward) is the instant the clock jumps past it.
pub fn fire_instant(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            // Offsets lie within -12 h..+14 h, so the jump is inside local ± 15 h (as UTC);
            // the wall clock rises through it, so bisect for the first second at or past `local`.
            let as_utc = local.and_utc().timestamp();
            let (mut before, mut after) = (as_utc - 15 * 3600, as_utc + 15 * 3600);
            let wall = |s: i64| {
                DateTime::from_timestamp(s, 0)
                    .expect("in range")
                    .with_timezone(&tz)
                    .naive_local()
            };
            while after - before > 1 {
                let mid = before + (after - before) / 2;
                if wall(mid) >= local {
                    after = mid;
                } else {
                    before = mid;
                }
            }
            DateTime::from_timestamp(after, 0).expect("in range")
        }
    }
}

/// A trigger's zone and schedules, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CronWindow {
    /// The zone the expressions are read in.
    pub timezone: Tz,
    /// When the window opens.
    pub start: CronSchedule,
    /// When the window closes.
    pub end: CronSchedule,
}

/// Whether a window is open at some instant, and when that changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    /// The window is open.
    pub inside: bool,
    /// The first start strictly after the instant asked about.
    pub next_start: DateTime<Utc>,
    /// The first end strictly after the instant asked about.
    pub next_end: DateTime<Utc>,
}

impl CronWindow {
    /// KEDA's rule: open unless the next start comes strictly before the next end (a tie is
    /// open). `None` when a schedule does not fire within the search horizon.
    pub fn state_at(&self, now: DateTime<Utc>) -> Option<WindowState> {
        let next_start = self.start.next_firing(self.timezone, now)?;
        let next_end = self.end.next_firing(self.timezone, now)?;
        Some(WindowState {
            inside: next_end <= next_start,
            next_start: next_start.at,
            next_end: next_end.at,
        })
    }
}

/// Where the cron scaler gets the time from.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that shows what it is told: for tests and dry runs.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    /// A clock showing `now`.
    pub fn new(now: DateTime<Utc>) -> Self {
        Self(Mutex::new(now))
    }

    /// Moves the clock to `now` (backwards too).
    pub fn set(&self, now: DateTime<Utc>) {
        *self.0.lock().expect("manual clock") = now;
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().expect("manual clock");
        *now += TimeDelta::from_std(by).expect("duration in range");
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("manual clock")
    }
}

impl<C: Clock> Clock for Arc<C> {
    fn now(&self) -> DateTime<Utc> {
        (**self).now()
    }
}

/// Answers cron triggers from the clock; one instance serves them all.
pub struct CronScaler {
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for CronScaler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CronScaler").finish_non_exhaustive()
    }
}

impl CronScaler {
    /// A scaler reading time from `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self { clock }
    }

    /// The reading of one trigger at `now`.
    pub fn read(trigger: &CronTrigger, now: DateTime<Utc>) -> Result<Reading, ScalerError> {
        trigger.validate()?;
        let window = trigger.window()?;
        let state = window.state_at(now).ok_or_else(|| {
            ScalerError::invalid(
                BROKER,
                "start",
                format!(
                    "{} does not fire within {SEARCH_DAYS} days",
                    trigger.target()
                ),
            )
        })?;
        let value = if state.inside {
            f64::from(trigger.desired_replicas)
        } else {
            0.0
        };
        tracing::trace!(
            window = %trigger.target(),
            inside = state.inside,
            next_start = %state.next_start,
            next_end = %state.next_end,
            "cron window"
        );
        let mut reading =
            Reading::new(value, trigger.is_active(ActivationInput::value_only(value)));
        reading.timestamp = SystemTime::from(now);
        Ok(reading)
    }
}

impl Scaler for CronScaler {
    type Trigger = CronTrigger;

    const KIND: &'static str = BROKER;

    const CONFIG_KEY: &'static str = "cron";

    /// Every cron trigger shares one scaler: there is no connection.
    fn trigger_of(trigger: &super::Trigger) -> Option<&Self::Trigger> {
        match trigger {
            super::Trigger::Cron(t) => Some(t),
            _ => None,
        }
    }

    fn connection_key(_trigger: &Self::Trigger) -> String {
        BROKER.into()
    }

    fn connect(_trigger: &Self::Trigger) -> Result<Self, ScalerError> {
        Ok(Self::with_clock(Arc::new(SystemClock)))
    }

    async fn poll(&self, triggers: &[Self::Trigger]) -> Vec<Result<Reading, ScalerError>> {
        let now = self.clock.now();
        triggers.iter().map(|t| Self::read(t, now)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalers::Trigger;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn trigger(timezone: &str, start: &str, end: &str) -> CronTrigger {
        CronTrigger {
            timezone: timezone.into(),
            start: start.into(),
            end: end.into(),
            desired_replicas: 10,
        }
    }

    fn inside(t: &CronTrigger, at: &str) -> bool {
        t.window().unwrap().state_at(utc(at)).unwrap().inside
    }

    #[test]
    fn parses_robfig_syntax() {
        let s = CronSchedule::parse("*/15 9-17 ? JAN-mar,dec Mon-FRI").unwrap();
        assert_eq!(s.minutes, 1 | 1 << 15 | 1 << 30 | 1 << 45);
        assert_eq!(s.hours, (9..=17).map(|h| 1u32 << h).sum::<u32>());
        assert!(s.days_of_month_star && !s.days_of_week_star);
        assert_eq!(s.months, 1 << 1 | 1 << 2 | 1 << 3 | 1 << 12);
        assert_eq!(s.days_of_week, 0b0111110);
        let stepped = CronSchedule::parse("5/20 1-10/3 * * 7").unwrap();
        assert_eq!(stepped.minutes, 1 << 5 | 1 << 25 | 1 << 45);
        assert_eq!(stepped.hours, 1 << 1 | 1 << 4 | 1 << 7 | 1 << 10);
        assert_eq!(stepped.days_of_week, 1, "7 is Sunday");
        // A stepped star is not a star (robfig clears starBit when step > 1).
        assert!(
            !CronSchedule::parse("0 0 */2 * 1")
                .unwrap()
                .days_of_month_star
        );
    }

    #[test]
    fn rejects_bad_expressions() {
        for (expression, needle) in [
            ("0 6 * *", "exactly 5 fields"),
            ("0 0 6 * * *", "exactly 5 fields"),
            ("60 * * * *", "above maximum"),
            ("* 24 * * *", "above maximum"),
            ("* * 0 * *", "below minimum"),
            ("* * * 13 *", "above maximum"),
            ("* * * * 8", "above maximum"),
            ("5-1 * * * *", "beyond end"),
            ("*/0 * * * *", "positive number"),
            ("1-2-3 * * * *", "too many hyphens"),
            ("*/2/3 * * * *", "too many slashes"),
            ("x * * * *", "failed to parse int"),
            ("@daily", "descriptors"),
            ("CRON_TZ=UTC 0 6 * * *", "TZ="),
            ("0 0 30 2 *", "never fires"),
            ("0 0 31 4,6 *", "never fires"),
        ] {
            let err = CronSchedule::parse(expression).unwrap_err();
            assert!(err.contains(needle), "{expression}: {err}");
        }
        // Both day fields restricted: either may match, so the 30th of February is fine.
        CronSchedule::parse("0 0 30 2 MON").unwrap();
    }

    #[test]
    fn dom_and_dow_combine_like_robfig() {
        // 2025-06-13 is a Friday.
        let either = CronSchedule::parse("0 0 1 * FRI").unwrap();
        assert!(either.day_matches(NaiveDate::from_ymd_opt(2025, 6, 13).unwrap()));
        assert!(either.day_matches(NaiveDate::from_ymd_opt(2025, 6, 1).unwrap()));
        assert!(!either.day_matches(NaiveDate::from_ymd_opt(2025, 6, 12).unwrap()));
        let both = CronSchedule::parse("0 0 * * FRI").unwrap();
        assert!(!both.day_matches(NaiveDate::from_ymd_opt(2025, 6, 1).unwrap()));
        assert!(both.day_matches(NaiveDate::from_ymd_opt(2025, 6, 13).unwrap()));
    }

    #[test]
    fn next_after_is_strictly_after() {
        let s = CronSchedule::parse("0 6 * * *").unwrap();
        let tz = Tz::UTC;
        assert_eq!(
            s.next_after(tz, utc("2025-06-01T05:59:59.5Z")),
            Some(utc("2025-06-01T06:00:00Z"))
        );
        assert_eq!(
            s.next_after(tz, utc("2025-06-01T06:00:00Z")),
            Some(utc("2025-06-02T06:00:00Z"))
        );
        let leap = CronSchedule::parse("0 0 29 2 *").unwrap();
        assert_eq!(
            leap.next_after(tz, utc("2025-03-01T00:00:00Z")),
            Some(utc("2028-02-29T00:00:00Z"))
        );
    }

    #[test]
    fn windows_open_and_close_like_keda() {
        // KEDA's documented example: 06:00 to 20:00 in Asia/Kolkata (UTC+05:30).
        let day = trigger("Asia/Kolkata", "0 6 * * *", "0 20 * * *");
        for (at, want) in [
            ("2025-06-01T00:29:59Z", false), // 05:59:59 IST
            ("2025-06-01T00:30:00Z", true),  // 06:00 IST: the start itself is inside
            ("2025-06-01T14:29:59Z", true),  // 19:59:59 IST
            ("2025-06-01T14:30:00Z", false), // 20:00 IST: the end itself is outside
        ] {
            assert_eq!(inside(&day, at), want, "{at}");
        }
        // Across midnight: 22:00 to 06:00 UTC.
        let night = trigger("UTC", "0 22 * * *", "0 6 * * *");
        for (at, want) in [
            ("2025-06-01T21:59:00Z", false),
            ("2025-06-01T23:00:00Z", true),
            ("2025-06-02T05:59:59Z", true),
            ("2025-06-02T06:00:00Z", false),
        ] {
            assert_eq!(inside(&night, at), want, "{at}");
        }
        // An hourly start with a daily end: only the last hour before the end is open (KEDA).
        let hourly = trigger("UTC", "0 * * * *", "0 20 * * *");
        assert!(!inside(&hourly, "2025-06-01T10:30:00Z"));
        assert!(inside(&hourly, "2025-06-01T19:30:00Z"));
        // Weekdays only: closed over the weekend (2025-06-07 is a Saturday).
        let office = trigger("Europe/Berlin", "0 8 * * 1-5", "0 18 * * 1-5");
        assert!(inside(&office, "2025-06-06T10:00:00Z"));
        assert!(!inside(&office, "2025-06-07T10:00:00Z"));
    }

    #[test]
    fn spring_forward_opens_a_skipped_start_when_the_clock_jumps() {
        // Europe/Berlin, 2025-03-30: 02:00 CET jumps to 03:00 CEST at 01:00 UTC.
        let t = trigger("Europe/Berlin", "30 2 * * *", "0 6 * * *");
        let tz = Tz::Europe__Berlin;
        let skipped = NaiveDate::from_ymd_opt(2025, 3, 30)
            .unwrap()
            .and_hms_opt(2, 30, 0)
            .unwrap();
        assert_eq!(fire_instant(tz, skipped), utc("2025-03-30T01:00:00Z"));
        for (at, want) in [
            ("2025-03-29T10:00:00Z", false), // KEDA (robfig) reads this as open
            ("2025-03-30T00:59:59Z", false), // 01:59:59 CET
            ("2025-03-30T01:00:00Z", true),  // 03:00 CEST
            ("2025-03-30T03:59:59Z", true),  // 05:59:59 CEST
            ("2025-03-30T04:00:00Z", false), // 06:00 CEST
            ("2025-03-31T00:30:00Z", true),  // next day, 02:30 CEST
        ] {
            assert_eq!(inside(&t, at), want, "{at}");
        }
        // A window wholly inside the skipped hour stays closed that day.
        let vanished = trigger("Europe/Berlin", "15 2 * * *", "45 2 * * *");
        assert!(!inside(&vanished, "2025-03-30T00:50:00Z"));
        assert!(!inside(&vanished, "2025-03-30T01:00:00Z"));
        assert!(inside(&vanished, "2025-03-31T00:30:00Z"));
    }

    #[test]
    fn fall_back_fires_a_repeated_time_once() {
        // Europe/Berlin, 2025-10-26: 03:00 CEST goes back to 02:00 CET at 01:00 UTC.
        let tz = Tz::Europe__Berlin;
        let repeated = NaiveDate::from_ymd_opt(2025, 10, 26)
            .unwrap()
            .and_hms_opt(2, 30, 0)
            .unwrap();
        assert_eq!(fire_instant(tz, repeated), utc("2025-10-26T00:30:00Z"));
        let t = trigger("Europe/Berlin", "30 2 * * *", "0 3 * * *");
        for (at, want) in [
            ("2025-10-26T00:29:59Z", false), // 02:29:59 CEST
            ("2025-10-26T00:30:00Z", true),  // 02:30 CEST
            ("2025-10-26T01:15:00Z", true),  // 02:15 CET, the repeated hour: still open
            ("2025-10-26T01:45:00Z", true),  // 02:45 CET
            ("2025-10-26T02:00:00Z", false), // 03:00 CET
        ] {
            assert_eq!(inside(&t, at), want, "{at}");
        }
        let s = CronSchedule::parse("30 2 * * *").unwrap();
        assert_eq!(
            s.next_after(tz, utc("2025-10-26T00:30:00Z")),
            Some(utc("2025-10-27T01:30:00Z")),
            "02:30 CET on the same night does not fire again"
        );
    }

    #[test]
    fn validation_and_metric_names_follow_keda() {
        let t = trigger("Asia/Kolkata", "0 6 * * *", "0 20 * * *");
        t.validate().unwrap();
        assert_eq!(t.metric_name(), "cron-asia-kolkata-06xxx-020xxx");
        assert_eq!(t.target_value(), 1.0);
        let stepped = trigger("UTC", "*/30 9 ? * 1,3", "0 17 * * *");
        assert_eq!(stepped.metric_name(), "cron-utc-xsl309qmx1cm3-017xxx");
        for (t, field) in [
            (
                trigger("Mars/Olympus", "0 6 * * *", "0 7 * * *"),
                "timezone",
            ),
            (trigger("UTC", "0 6 * *", "0 7 * * *"), "start"),
            (trigger("UTC", "0 6 * * *", "0 77 * * *"), "end"),
            (trigger("UTC", "0 6 * * *", "0 6 * * *"), "end"),
            (trigger("UTC", "0 6 * * *", "0  6 * * ?"), "end"),
            (
                CronTrigger {
                    desired_replicas: 0,
                    ..trigger("UTC", "0 6 * * *", "0 7 * * *")
                },
                "desiredReplicas",
            ),
        ] {
            match t.validate() {
                Err(ScalerError::InvalidTrigger { field: f, .. }) => assert_eq!(f, field, "{t:?}"),
                other => panic!("{t:?}: expected InvalidTrigger on {field}, got {other:?}"),
            }
        }
        let unknown = serde_json::from_value::<CronTrigger>(serde_json::json!({
            "timezone": "UTC", "start": "0 6 * * *", "end": "0 7 * * *", "desiredReplicas": 2, "minReplicas": 1
        }));
        assert!(unknown.is_err(), "unknown fields are rejected");
    }

    #[test]
    fn readings_carry_desired_replicas_and_the_clock_time() {
        let t = trigger("UTC", "0 6 * * *", "0 20 * * *");
        let open = CronScaler::read(&t, utc("2025-06-01T12:00:00Z")).unwrap();
        assert_eq!((open.value, open.active), (10.0, true));
        assert_eq!(
            open.timestamp,
            SystemTime::from(utc("2025-06-01T12:00:00Z"))
        );
        let closed = CronScaler::read(&t, utc("2025-06-01T21:00:00Z")).unwrap();
        assert_eq!((closed.value, closed.active), (0.0, false));
    }

    #[test]
    fn plan_decides_activity_from_the_value_as_the_scaler_does() {
        let t = trigger("UTC", "0 6 * * *", "0 20 * * *");
        for now in ["2025-06-01T12:00:00Z", "2025-06-01T21:00:00Z"] {
            let read = CronScaler::read(&t, utc(now)).unwrap();
            let planned =
                Trigger::Cron(t.clone()).is_active(ActivationInput::value_only(read.value));
            assert_eq!(planned, read.active, "{now}");
        }
    }
}

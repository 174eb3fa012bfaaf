//! Five-field cron expressions (extensions §5), evaluated in UTC.
//!
//! `minute hour day-of-month month day-of-week` (0 = Sunday). Each field is `*`, `N`,
//! `N-M`, `*/S`, `N-M/S` or a comma list of those. A time matches when all five fields
//! match (day-of-month AND day-of-week, as the reference does, not cron's usual OR). The
//! next fire is the first whole minute strictly after a given instant, searched up to 366
//! days ahead.

/// How far ahead [`Cron::next_after`] searches.
pub const HORIZON_DAYS: i64 = 366;

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

/// A parsed expression: one bit set per field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
}

/// The expression is not five valid fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidCron;

fn field(text: &str, min: u32, max: u32) -> Result<u64, InvalidCron> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (number(a)?, number(b)?)
        } else {
            let n = number(range)?;
            // `N/S` is not one of the forms the spec names.
            if step.is_some() {
                return Err(InvalidCron);
            }
            (n, n)
        };
        let step = match step {
            Some(s) => number(s)?,
            None => 1,
        };
        if lo < min || hi > max || lo > hi || step == 0 {
            return Err(InvalidCron);
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

fn number(s: &str) -> Result<u32, InvalidCron> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InvalidCron);
    }
    s.parse().map_err(|_| InvalidCron)
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31) (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl Cron {
    /// Parses an expression; anything but five valid fields is [`InvalidCron`].
    pub fn parse(expr: &str) -> Result<Cron, InvalidCron> {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let [mi, h, dom, mo, dow] = fields[..] else {
            return Err(InvalidCron);
        };
        Ok(Cron {
            minutes: field(mi, 0, 59)?,
            hours: field(h, 0, 23)? as u32,
            days: field(dom, 1, 31)? as u32,
            months: field(mo, 1, 12)? as u16,
            weekdays: field(dow, 0, 6)? as u8,
        })
    }

    /// The first whole minute strictly after `after_ms` (epoch ms, UTC) that matches, or
    /// `None` when none does within [`HORIZON_DAYS`].
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let start = (after_ms.div_euclid(MINUTE_MS) + 1) * MINUTE_MS;
        let first_day = start.div_euclid(DAY_MS);
        let start_minute_of_day = (start - first_day * DAY_MS) / MINUTE_MS;
        for day in first_day..=first_day + HORIZON_DAYS {
            let (_, month, dom) = civil(day);
            // 1970-01-01 was a Thursday (4).
            let weekday = (day + 4).rem_euclid(7) as u32;
            if self.months & (1 << month) == 0
                || self.days & (1 << dom) == 0
                || self.weekdays & (1 << weekday) == 0
            {
                continue;
            }
            let from = if day == first_day {
                start_minute_of_day
            } else {
                0
            };
            for minute_of_day in from..1440 {
                let (h, m) = (minute_of_day / 60, minute_of_day % 60);
                if self.hours & (1 << h) != 0 && self.minutes & (1 << m) != 0 {
                    return Some(day * DAY_MS + minute_of_day * MINUTE_MS);
                }
            }
        }
        None
    }

    /// The next fire after `after_ms` that is at least `min_period_ms` after `previous_ms`
    /// (the fire before it): the minimum cron period is enforced at each fire, whatever
    /// the expression's own spacing.
    pub fn next_spaced(&self, after_ms: i64, previous_ms: i64, min_period_ms: i64) -> Option<i64> {
        // t >= previous + period  <=>  t > previous + period - 1 (t is a whole minute).
        self.next_after(after_ms.max(previous_ms + min_period_ms - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01T14:17:30Z, a Tuesday.
    const T: i64 = 1_796_134_650_000;

    fn at(iso_minute_offset: i64) -> i64 {
        (T / MINUTE_MS) * MINUTE_MS + iso_minute_offset * MINUTE_MS
    }

    #[test]
    fn the_reference_instant_is_what_the_tests_assume() {
        assert_eq!(crate::ids::iso8601_ms(T), "2026-12-01T14:17:30.000Z");
        assert_eq!(((T / DAY_MS) + 4).rem_euclid(7), 2, "a Tuesday");
    }

    #[test]
    fn every_minute_is_the_next_whole_minute() {
        let c = Cron::parse("* * * * *").unwrap();
        assert_eq!(c.next_after(T), Some(at(1)));
        // Exactly on a minute: strictly after.
        assert_eq!(c.next_after(at(1)), Some(at(2)));
    }

    #[test]
    fn steps_ranges_and_lists() {
        let c = Cron::parse("*/15 * * * *").unwrap();
        assert_eq!(
            crate::ids::iso8601_ms(c.next_after(T).unwrap()),
            "2026-12-01T14:30:00.000Z"
        );
        let c = Cron::parse("5,10-12 9-17/4 * * *").unwrap();
        assert_eq!(
            crate::ids::iso8601_ms(c.next_after(T).unwrap()),
            "2026-12-01T17:05:00.000Z"
        );
        let c = Cron::parse("0 0 1 1 *").unwrap();
        assert_eq!(
            crate::ids::iso8601_ms(c.next_after(T).unwrap()),
            "2027-01-01T00:00:00.000Z"
        );
        let c = Cron::parse("30 8 * * 1-5").unwrap();
        assert_eq!(
            crate::ids::iso8601_ms(c.next_after(T).unwrap()),
            "2026-12-02T08:30:00.000Z"
        );
        let c = Cron::parse("0 12 * * 0").unwrap();
        assert_eq!(
            crate::ids::iso8601_ms(c.next_after(T).unwrap()),
            "2026-12-06T12:00:00.000Z"
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_must_both_match() {
        // The 13th that is a Friday: 2027-08-13.
        let c = Cron::parse("0 0 13 * 5").unwrap();
        assert_eq!(
            crate::ids::iso8601_ms(c.next_after(T).unwrap()),
            "2027-08-13T00:00:00.000Z"
        );
    }

    #[test]
    fn no_match_within_the_horizon_is_none() {
        let c = Cron::parse("0 0 31 2 *").unwrap();
        assert_eq!(c.next_after(T), None);
        // 29 February on a Monday is more than 366 days away from 2026.
        let c = Cron::parse("0 0 29 2 1").unwrap();
        assert_eq!(c.next_after(T), None);
    }

    #[test]
    fn invalid_expressions() {
        for bad in [
            "",
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * 32 * *",
            "* * * 13 *",
            "* * * * 7",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
            "1,,2 * * * *",
            "5/2 * * * *",
            "-1 * * * *",
            "@hourly",
        ] {
            assert_eq!(Cron::parse(bad), Err(InvalidCron), "{bad:?}");
        }
    }

    #[test]
    fn the_minimum_period_spaces_fires() {
        let c = Cron::parse("* * * * *").unwrap();
        // A one-minute minimum changes nothing for an every-minute expression.
        assert_eq!(c.next_spaced(at(1), at(1), 60_000), Some(at(2)));
        // A five-minute minimum skips to the first match five minutes after the last fire.
        assert_eq!(c.next_spaced(at(1), at(1), 300_000), Some(at(6)));
        let c = Cron::parse("0,1 * * * *").unwrap();
        assert_eq!(
            crate::ids::iso8601_ms(c.next_spaced(at(43), at(43), 120_000).unwrap()),
            "2026-12-01T16:00:00.000Z"
        );
    }
}

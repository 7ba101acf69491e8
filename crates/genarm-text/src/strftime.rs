//! `strftime`: C/Python-style date formatting of a UTC time, for the templates' `strftime_now`.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

const WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// The current time formatted with [`strftime_utc`] (`strftime_now(format)` in chat templates;
/// transformers formats local time, servers here format UTC).
pub fn strftime_now(format: &str) -> String {
    let secs = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    strftime_utc(format, secs)
}

/// Formats the UTC time `unix_secs` like C's `strftime` in the C locale.
///
/// Supported: `%a %A %b %B %h %c %C %d %D %e %F %H %I %j %m %M %n %p %R %S %t %T %u %w %x %X %y
/// %Y %z %Z %%`, with glibc's `-` flag (`%-d`: no padding). Anything else is copied unchanged.
pub fn strftime_utc(format: &str, unix_secs: i64) -> String {
    let t = CivilTime::from_unix(unix_secs);
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let no_pad = chars.peek() == Some(&'-');
        if no_pad {
            chars.next();
        }
        let Some(spec) = chars.next() else {
            out.push('%');
            if no_pad {
                out.push('-');
            }
            break;
        };
        let num = |out: &mut String, v: i64, width: usize, pad: char| {
            if no_pad {
                write!(out, "{v}").expect("writing to a String");
            } else if pad == '0' {
                write!(out, "{v:0width$}").expect("writing to a String");
            } else {
                write!(out, "{v:>width$}").expect("writing to a String");
            }
        };
        match spec {
            'a' => out.push_str(&WEEKDAYS[t.weekday as usize][..3]),
            'A' => out.push_str(WEEKDAYS[t.weekday as usize]),
            'b' | 'h' => out.push_str(&MONTHS[t.month as usize - 1][..3]),
            'B' => out.push_str(MONTHS[t.month as usize - 1]),
            'c' => out.push_str(&strftime_utc("%a %b %e %H:%M:%S %Y", unix_secs)),
            'C' => num(&mut out, t.year.div_euclid(100), 2, '0'),
            'd' => num(&mut out, t.day, 2, '0'),
            'D' | 'x' => out.push_str(&strftime_utc("%m/%d/%y", unix_secs)),
            'e' => num(&mut out, t.day, 2, ' '),
            'F' => out.push_str(&strftime_utc("%Y-%m-%d", unix_secs)),
            'H' => num(&mut out, t.hour, 2, '0'),
            'I' => num(&mut out, (t.hour + 11) % 12 + 1, 2, '0'),
            'j' => num(&mut out, t.day_of_year, 3, '0'),
            'm' => num(&mut out, t.month, 2, '0'),
            'M' => num(&mut out, t.minute, 2, '0'),
            'n' => out.push('\n'),
            'p' => out.push_str(if t.hour < 12 { "AM" } else { "PM" }),
            'R' => out.push_str(&strftime_utc("%H:%M", unix_secs)),
            'S' => num(&mut out, t.second, 2, '0'),
            't' => out.push('\t'),
            'T' | 'X' => out.push_str(&strftime_utc("%H:%M:%S", unix_secs)),
            'u' => num(&mut out, if t.weekday == 0 { 7 } else { t.weekday }, 1, '0'),
            'w' => num(&mut out, t.weekday, 1, '0'),
            'y' => num(&mut out, t.year.rem_euclid(100), 2, '0'),
            'Y' => write!(out, "{}", t.year).expect("writing to a String"),
            'z' => out.push_str("+0000"),
            'Z' => out.push_str("UTC"),
            '%' => out.push('%'),
            other => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
        }
    }
    out
}

/// A UTC calendar time broken into fields.
struct CivilTime {
    year: i64,
    /// 1..=12
    month: i64,
    /// 1..=31
    day: i64,
    /// 1..=366
    day_of_year: i64,
    /// 0 = Sunday
    weekday: i64,
    hour: i64,
    minute: i64,
    second: i64,
}

impl CivilTime {
    /// Splits seconds since the Unix epoch (proleptic Gregorian calendar, Howard Hinnant's
    /// `civil_from_days`).
    fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy_from_march = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy_from_march + 2) / 153;
        let day = doy_from_march - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let day_of_year = CUM[month as usize - 1] + day + i64::from(leap && month > 2);
        CivilTime {
            year,
            month,
            day,
            day_of_year,
            weekday: (days + 4).rem_euclid(7),
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        // 2024-07-26 (Friday) 13:05:09 UTC, the date Llama 3.1's template hard-codes.
        let t = 1_721_999_109;
        assert_eq!(strftime_utc("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(
            strftime_utc("%A %B %-d, %Y %H:%M:%S %p %j %%", t),
            "Friday July 26, 2024 13:05:09 PM 208 %"
        );
        assert_eq!(strftime_utc("%F %T %I %e %y %u %w %Z", t), "2024-07-26 13:05:09 01 26 24 5 5 UTC");
        assert_eq!(strftime_utc("%c", 0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(strftime_utc("%Y-%m-%d %j", 951_782_400), "2000-02-29 060");
        assert_eq!(strftime_utc("%Y-%m-%d %a", -86_400), "1969-12-31 Wed");
        assert_eq!(strftime_utc("%q %-q x%", 0), "%q %-q x%");
    }

    #[test]
    fn now_is_plausible() {
        let year: i64 = strftime_now("%Y").parse().unwrap();
        assert!(year >= 2024, "{year}");
    }
}

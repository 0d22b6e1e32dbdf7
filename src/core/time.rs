//! Showing times and durations: one formatter for every duration a person reads (flag errors,
//! `status`, `check`, resource messages) and RFC 3339 for instants.

use std::time::{Duration, SystemTime};

/// A duration exactly, in compact units that `--flag` parsing accepts back: `1d`, `1h30m`,
/// `45s`, `1s500ms`, `0s`. Below a millisecond is dropped.
pub(crate) fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    let parts = [
        (s / 86_400, "d"),
        (s / 3600 % 24, "h"),
        (s / 60 % 60, "m"),
        (s % 60, "s"),
        (u64::from(d.subsec_millis()), "ms"),
    ];
    let out: String = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if out.is_empty() { "0s".into() } else { out }
}

/// A duration in its two largest units, truncated: `2d3h`, `11h58m`, `5m`, `42s`.
pub(crate) fn span(d: Duration) -> String {
    let s = d.as_secs();
    let unit = if s >= 86_400 {
        3600
    } else if s >= 3600 {
        60
    } else {
        1
    };
    // Under an hour: minutes only once past a minute (`5m`, not `5m12s`).
    let kept = if (60..3600).contains(&s) {
        s / 60 * 60
    } else {
        s / unit * unit
    };
    format_duration(Duration::from_secs(kept))
}

/// `in 11h58m` or `5m ago`.
pub(crate) fn relative(t: SystemTime, now: SystemTime) -> String {
    match t.duration_since(now) {
        Ok(ahead) => format!("in {}", span(ahead)),
        Err(past) => format!("{} ago", span(past.duration())),
    }
}

/// RFC 3339 in UTC with seconds, for annotations, status and logs.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (secs, expected) in [
            (0, "0s"),
            (42, "42s"),
            (312, "5m"),
            (3600, "1h"),
            (43_080, "11h58m"),
            (43_199, "11h59m"),
            (90_000, "1d1h"),
            (86_400 * 3 + 59, "3d"),
        ] {
            assert_eq!(span(Duration::from_secs(secs)), expected, "{secs}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(relative(t0 + Duration::from_secs(43_080), t0), "in 11h58m");
        assert_eq!(relative(t0 - Duration::from_secs(300), t0), "5m ago");
        assert_eq!(rfc3339(t0), "2027-01-15T08:00:00Z");
    }
}

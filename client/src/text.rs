//! Text a peer wrote (chat, names, search results), made safe for a
//! terminal: every character that could move the cursor, erase a line,
//! start an escape sequence or reorder what is shown is replaced by its
//! visible escape (`\u{1b}`), so a message can never fake another sender
//! or hide part of itself.
//!
//! Escaped: the C0 controls (U+0000..U+001F, tab and newline included: one
//! message shows on one line), DEL (U+007F), the C1 controls
//! (U+0080..U+009F, CSI among them), the bidirectional formatting characters
//! (U+061C, U+200E, U+200F, U+202A..U+202E, U+2066..U+2069) and the line and
//! paragraph separators (U+2028, U+2029). Everything else is kept.
//!
//! Times are shown to people by [`ago`] (the CLI and the terminal UI
//! alike): "just now", "2 min ago", "3 h ago", then a UTC date.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` is escaped by [`for_terminal`].
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// `text` with every unsafe character replaced by its escape; borrowed
/// unchanged when there is none.
pub fn for_terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_unsafe(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A past unix time `then` (seconds) as a person reads it at `now`:
/// "just now" (under 10 s, or a clock a little ahead), "42 s ago",
/// "2 min ago", "3 h ago" (under a day), "yesterday 14:03", then
/// "2026-11-28 14:03 UTC"; "never" for 0 or less (no time known).
pub fn ago(then: i64, now: i64) -> String {
    if then <= 0 {
        return "never".to_owned();
    }
    let age = now - then;
    match age {
        ..10 => "just now".to_owned(),
        10..60 => format!("{age} s ago"),
        60..3600 => format!("{} min ago", age / 60),
        3600..86_400 => format!("{} h ago", age / 3600),
        _ if now.div_euclid(86_400) - then.div_euclid(86_400) == 1 => {
            format!("yesterday {}", clock(then))
        }
        _ => date_time(then),
    }
}

/// `secs` (unix time) as "YYYY-MM-DD HH:MM UTC".
pub fn date_time(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02} {} UTC", clock(secs))
}

/// The "HH:MM" (UTC) of unix time `secs`.
fn clock(secs: i64) -> String {
    let of_day = secs.rem_euclid(86_400);
    format!("{:02}:{:02}", of_day / 3600, of_day % 3600 / 60)
}

/// (year, month, day) of a count of days since 1970-01-01, proleptic
/// Gregorian (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_people_say_them() {
        let now = 1_796_148_717; // 2026-12-01 18:11:57 UTC
        assert_eq!(ago(0, now), "never");
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now + 5, now), "just now", "a clock a little ahead");
        assert_eq!(ago(now - 42, now), "42 s ago");
        assert_eq!(ago(now - 150, now), "2 min ago");
        assert_eq!(ago(now - 3 * 3600 - 5, now), "3 h ago");
        assert_eq!(ago(now - 20 * 3600, now), "20 h ago");
        assert_eq!(ago(now - 30 * 3600, now), "yesterday 12:11");
        assert_eq!(ago(now - 4 * 86_400, now), "2026-11-27 18:11 UTC");
        assert_eq!(date_time(59 * 86_400), "1970-03-01 00:00 UTC");
        assert_eq!(date_time(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(date_time(1_796_148_717), "2026-12-01 18:11 UTC");
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for s in ["hello bob", "grüße, 你好 👋", "tab-free; quotes \" ' \\"] {
            assert!(matches!(for_terminal(s), Cow::Borrowed(t) if t == s));
        }
    }

    #[test]
    fn a_faked_sender_line_is_shown_escaped() {
        let got = for_terminal("\r\x1b[2Kmallory: hi");
        assert_eq!(got, "\\u{d}\\u{1b}[2Kmallory: hi");
        assert!(!got.chars().any(is_unsafe));
    }

    #[test]
    fn every_control_and_bidi_character_is_escaped() {
        let unsafe_chars = (0u32..0x20)
            .chain([0x7f])
            .chain(0x80..0xa0)
            .chain([0x061c, 0x200e, 0x200f, 0x2028, 0x2029])
            .chain(0x202a..=0x202e)
            .chain(0x2066..=0x2069)
            .filter_map(char::from_u32);
        for c in unsafe_chars {
            let text = format!("a{c}b");
            let got = for_terminal(&text);
            assert_eq!(
                got,
                format!("a\\u{{{:x}}}b", u32::from(c)),
                "{:#x}",
                u32::from(c)
            );
            assert!(!got.chars().any(is_unsafe));
        }
        // Neighbours of the escaped ranges are kept.
        for c in [' ', '~', '\u{a0}', '\u{202f}', '\u{2065}', '\u{206a}', 'é'] {
            assert!(!is_unsafe(c), "{:#x}", u32::from(c));
        }
    }
}

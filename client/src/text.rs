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

#[cfg(test)]
mod tests {
    use super::*;

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

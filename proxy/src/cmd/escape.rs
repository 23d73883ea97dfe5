//! Escaping for output read by people: text that came from users (process
//! names, paths, reasons, user and group names) is shown with every
//! character that could move the cursor, recolour the terminal or reorder
//! what a reviewer sees written as a visible escape, e.g. `\x1b`, `\n`,
//! `\u{202e}`. Backslashes are doubled, so the output is unambiguous.
//! Printable text, ASCII or not ("Zoë", "日本"), stays as is. JSON output
//! is never escaped this way: it keeps the exact values.

use std::fmt::{self, Display, Write as _};

/// Shows `T` (any [`Display`]) with terminal controls escaped.
///
/// Width and alignment flags (`{:<10}`) are not applied; pad the
/// [`to_string`](ToString::to_string) instead.
#[derive(Debug, Clone, Copy)]
pub(super) struct Escaped<T>(pub T);

impl<T: Display> Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapingWriter(f), "{}", self.0)
    }
}

/// Writes what it is given to a formatter, escaped.
struct EscapingWriter<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for EscapingWriter<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for c in text.chars() {
            write_escaped(self.0, c)?;
        }
        Ok(())
    }
}

/// Writes `c` as it is, or as an escape if it is not safe to show raw.
fn write_escaped(out: &mut fmt::Formatter<'_>, c: char) -> fmt::Result {
    match c {
        '\\' => out.write_str("\\\\"),
        '\t' => out.write_str("\\t"),
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        // C0 controls (ESC, BEL, backspace, ...) and DEL.
        c if c.is_ascii_control() => write!(out, "\\x{:02x}", u32::from(c)),
        // C1 controls (U+0080..=U+009F) and the characters below.
        c if c.is_control() || reorders_or_breaks_lines(c) => {
            write!(out, "\\u{{{:x}}}", u32::from(c))
        }
        c => out.write_char(c),
    }
}

/// Unicode bidi controls (marks, embeddings, overrides, isolates), which
/// can make text read in another order than it is stored, and the line and
/// paragraph separators, which some terminals and viewers break lines at.
fn reorders_or_breaks_lines(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(text: &str) -> String {
        Escaped(text).to_string()
    }

    #[test]
    fn terminal_escape_sequences_are_shown_not_run() {
        assert_eq!(escaped("\x1b[2K\x1b[1Aevil"), "\\x1b[2K\\x1b[1Aevil");
        assert_eq!(escaped("\x1b]0;title\x07"), "\\x1b]0;title\\x07");
        assert_eq!(escaped("a\x08\x00\x7f"), "a\\x08\\x00\\x7f");
    }

    #[test]
    fn line_breaks_and_tabs_are_shown() {
        assert_eq!(
            escaped("no grant\r\nfor\tuid 1001"),
            "no grant\\r\\nfor\\tuid 1001"
        );
        assert_eq!(escaped("a\u{2028}b\u{2029}c"), "a\\u{2028}b\\u{2029}c");
    }

    #[test]
    fn c1_controls_are_shown() {
        // U+009B is CSI: the one-character form of ESC [.
        assert_eq!(escaped("\u{9b}2K\u{80}\u{9f}"), "\\u{9b}2K\\u{80}\\u{9f}");
    }

    #[test]
    fn bidi_controls_are_shown() {
        assert_eq!(escaped("exe\u{202e}fdp.sh"), "exe\\u{202e}fdp.sh");
        for c in [
            '\u{061c}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}',
            '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
        ] {
            assert_eq!(
                escaped(&c.to_string()),
                format!("\\u{{{:x}}}", u32::from(c))
            );
        }
    }

    #[test]
    fn backslashes_are_doubled_so_escapes_cannot_be_faked() {
        assert_eq!(escaped(r"C:\x1b"), r"C:\\x1b");
        assert_ne!(escaped(r"\x1b"), escaped("\x1b"));
    }

    #[test]
    fn printable_text_stays_as_is() {
        for text in [
            "",
            "curl (4242)",
            "/usr/bin/python3.11",
            "Zoë",
            "日本",
            "عربي",
            "👩‍💻",
            "INC-1234: deploy → rollback",
            "12↑ 34↓",
        ] {
            assert_eq!(escaped(text), text);
        }
    }

    #[test]
    fn any_display_is_escaped() {
        let path = std::path::Path::new("/sys/fs/cgroup/a\x1bb");
        assert_eq!(
            Escaped(path.display()).to_string(),
            "/sys/fs/cgroup/a\\x1bb"
        );
        assert_eq!(format!("<{}>", Escaped(42)), "<42>");
    }
}

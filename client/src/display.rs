//! Showing text that came from a peer (notice titles and bodies, chat, reasons, file
//! names) on a terminal without letting it change what the terminal shows.
//!
//! A title such as `"\x1b[2J\x1b[H..."` would clear the screen and draw text of the
//! sender's choosing (an approver could be shown other content than what they sign); a
//! carriage return or backspace overwrites what was printed before it; Unicode
//! bidirectional overrides reorder what follows. Every such character is replaced by its
//! escape, `\u{1b}`, so it is visible and changes nothing. Account ids cannot carry any
//! (a-z, 0-9, `.`, `_`, `-` only). JSON output is escaped by its encoder and needs none of
//! this.

/// The name a value serializes to (the snake_case names of the protocol's and the
/// library's enums: `quorum_reached`, `payment_instruction`, `rate_limited`), for text
/// shown to people: never Rust's `Debug` form.
pub fn name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "unknown".to_owned(),
    }
}

/// Whether `c` could change how the surrounding text is displayed: C0 and C1 control
/// characters (escape sequences, carriage return, backspace, ...), DEL, the Unicode
/// bidirectional marks, embeddings, overrides and isolates, and the line and paragraph
/// separators.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

fn escape(s: &str, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_unsafe(c) && !(keep_newlines && c == '\n') {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Peer text shown on one line (a title, a reason, a file name): every unsafe
/// character, newlines included, escaped.
pub fn line(s: &str) -> String {
    escape(s, false)
}

/// Peer text that may span several lines (a notice or chat body): as [`line`], but
/// newlines are kept.
pub fn text(s: &str) -> String {
    escape(s, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_escaped() {
        assert_eq!(line("plain text, ok"), "plain text, ok");
        assert_eq!(line("\u{1b}[2J\u{1b}[Hpay X"), "\\u{1b}[2J\\u{1b}[Hpay X");
        assert_eq!(line("a\rb\u{8}c\u{7f}"), "a\\u{d}b\\u{8}c\\u{7f}");
        assert_eq!(line("two\nlines"), "two\\u{a}lines");
        assert_eq!(
            text("two\nlines\u{1b}]0;t\u{7}"),
            "two\nlines\\u{1b}]0;t\\u{7}"
        );
        assert_eq!(line("IBAN \u{202e}0 00"), "IBAN \\u{202e}0 00");
        assert_eq!(line("\u{9b}31m"), "\\u{9b}31m", "C1 CSI");
        assert_eq!(line("café → ok"), "café → ok");
    }
}

//! Text that came from a peer (an id, an error message, an event), made
//! safe to print to a log or a terminal: control characters escaped as
//! `ls -b` does (`\n`, `\033`), bidirectional overrides too, and the length
//! bounded, so that no peer can forge a line, drive a terminal or flood a log.

use std::fmt;

/// `text` as it may be printed, at most [`SHOWN_CHARS`] characters of it.
pub fn shown(text: &str) -> Shown<'_> {
    Shown {
        text,
        max: SHOWN_CHARS,
    }
}

/// `text` as it may be printed, at most `max` characters of it.
pub fn shown_up_to(text: &str, max: usize) -> Shown<'_> {
    Shown { text, max }
}

/// `text` as it may be printed, whole (for names a user asked to see).
pub fn shown_whole(text: &str) -> Shown<'_> {
    Shown {
        text,
        max: usize::MAX,
    }
}

/// Characters that make text print as something else: control characters
/// (a newline splits `ls | while read`, an escape drives the terminal) and
/// bidirectional marks and overrides (which reorder what a terminal shows).
pub fn misleading(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Characters shown of a text before it is cut.
pub const SHOWN_CHARS: usize = 80;

pub struct Shown<'a> {
    text: &'a str,
    max: usize,
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.text.char_indices();
        for (_, c) in chars.by_ref().take(self.max) {
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() => {
                    let mut utf8 = [0; 4];
                    for b in c.encode_utf8(&mut utf8).bytes() {
                        write!(f, "\\{b:03o}")?;
                    }
                }
                // Reordering marks make a terminal show text in another order.
                c if misleading(c) => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => fmt::Write::write_char(f, c)?,
            }
        }
        if let Some((at, _)) = chars.next() {
            write!(f, "...({} bytes more)", self.text.len() - at)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_long_text_cut() {
        assert_eq!(shown("ou_1a2b").to_string(), "ou_1a2b");
        assert_eq!(
            shown("a\nFAKE: ok\x1b]0;title\x07\u{202e}x\\").to_string(),
            "a\\nFAKE: ok\\033]0;title\\007\\u{202e}x\\\\"
        );
        assert_eq!(shown("\u{85}").to_string(), "\\302\\205");
        let long = "é".repeat(200);
        let cut = shown(&long).to_string();
        assert!(cut.starts_with(&"é".repeat(SHOWN_CHARS)), "{cut}");
        assert!(cut.ends_with("...(240 bytes more)"), "{cut}");
        assert_eq!(shown_whole(&long).to_string(), long);
    }
}

//! Text that travels through SQS: capped in length, and made of characters SQS accepts.
//!
//! SQS accepts, in bodies and attribute values, only `#x9 | #xA | #xD | #x20-#xD7FF |
//! #xE000-#xFFFD | #x10000-#x10FFFF` (the XML 1.0 character set); anything else (the
//! non-characters U+FFFE and U+FFFF, C0 controls) makes `SendMessage` fail with
//! `InvalidMessageContents`. A result that echoes such a character would never be
//! published, so the controller escapes them instead.

use std::borrow::Cow;

/// Whether SQS accepts `c` in a message body or attribute value.
pub fn sqs_allows(c: char) -> bool {
    matches!(c,
        '\u{9}' | '\u{A}' | '\u{D}'
        | '\u{20}'..='\u{D7FF}'
        | '\u{E000}'..='\u{FFFD}'
        | '\u{10000}'..='\u{10FFFF}')
}

/// `text` itself if it has at most `max_chars` characters; else its first `max_chars`
/// characters and a note of how long it was.
pub fn cap(text: &str, max_chars: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!(
            "{}… [cut: {} bytes in all]",
            &text[..end],
            text.len()
        )),
    }
}

/// A JSON text with every character SQS refuses written as a JSON `\uXXXX` escape.
///
/// Correct for any JSON text: outside strings JSON has only ASCII structure and
/// whitespace, which SQS accepts, so every refused character is inside a string, where
/// its escape means the same character. Characters SQS refuses are all in the BMP, so one
/// `\uXXXX` each suffices.
pub fn escape_json_for_sqs(json: &str) -> Cow<'_, str> {
    if json.chars().all(sqs_allows) {
        return Cow::Borrowed(json);
    }
    let mut escaped = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if sqs_allows(c) {
            escaped.push(c);
        } else {
            escaped.push_str(&format!("\\u{:04x}", c as u32));
        }
    }
    Cow::Owned(escaped)
}

/// Plain text (a message attribute value, not JSON) with every character SQS refuses
/// written as `\u{XXXX}`, capped at `max_chars`.
pub fn sqs_attribute(text: &str, max_chars: usize) -> Cow<'_, str> {
    let capped = cap(text, max_chars);
    if capped.chars().all(sqs_allows) {
        return capped;
    }
    Cow::Owned(
        capped
            .chars()
            .map(|c| {
                if sqs_allows(c) {
                    c.to_string()
                } else {
                    format!("\\u{{{:04x}}}", c as u32)
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqs_character_set() {
        for c in [
            '\t', '\n', '\r', ' ', 'é', '\u{D7FF}', '\u{E000}', '\u{FFFD}', '😀',
        ] {
            assert!(sqs_allows(c), "{c:?}");
        }
        for c in ['\u{0}', '\u{8}', '\u{B}', '\u{1F}', '\u{FFFE}', '\u{FFFF}'] {
            assert!(!sqs_allows(c), "{c:?}");
        }
    }

    #[test]
    fn capping_keeps_short_text_and_cuts_long_text_on_a_character_boundary() {
        assert!(matches!(cap("short", 10), Cow::Borrowed("short")));
        assert!(matches!(cap("exact", 5), Cow::Borrowed(_)));
        let cut = cap("ééééé", 2);
        assert_eq!(cut, "éé… [cut: 10 bytes in all]");
    }

    #[test]
    fn escaping_json_keeps_its_meaning() {
        let original = serde_json::json!({"text": "a\u{FFFF}b\u{FFFE}c", "ok": "😀é"});
        let json = serde_json::to_string(&original).unwrap();
        assert!(!json.chars().all(sqs_allows), "serde_json writes them raw");
        let escaped = escape_json_for_sqs(&json);
        assert!(escaped.chars().all(sqs_allows));
        let back: serde_json::Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back, original);
        assert!(matches!(
            escape_json_for_sqs(r#"{"a":1}"#),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn attributes_are_capped_and_escaped() {
        assert_eq!(sqs_attribute("a\u{FFFF}b", 10), "a\\u{ffff}b");
        assert!(sqs_attribute(&"x".repeat(1000), 100).len() < 200);
    }
}

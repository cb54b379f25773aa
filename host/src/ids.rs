//! Event ids as text: the `reprise-event-id` header every relayed event and every command
//! carries. Hot on both ends (every publish formats one, every delivery parses one), so
//! both directions work in place without intermediate allocations.

use reprise_core::EventId;

/// `id.to_string()` (the UUID layout of [`EventId`]'s `Display`), built in one
/// allocation: every relayed event and every command carries one in its headers.
#[must_use]
pub fn format_event_id(id: EventId) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [b'-'; 36];
    let mut at = 0;
    for digit in 0..32u32 {
        if matches!(digit, 8 | 12 | 16 | 20) {
            at += 1;
        }
        let nibble = (id.0 >> (124 - 4 * digit)) & 0xf;
        text[at] = HEX[nibble as usize];
        at += 1;
    }
    // ASCII by construction; the check is cheaper than the lossy conversion's scan.
    std::str::from_utf8(&text)
        .expect("hex digits and dashes")
        .to_owned()
}

/// Parses an [`EventId`] as formatted by its `Display` (UUID layout) or `Debug` (32 hex).
#[must_use]
pub fn parse_event_id(text: &str) -> Option<EventId> {
    // Hot (every delivery and every checked offset): parse in place, no allocation.
    let mut value: u128 = 0;
    let mut digits = 0;
    for byte in text.bytes() {
        if byte == b'-' {
            continue;
        }
        let digit = char::from(byte).to_digit(16)?;
        digits += 1;
        if digits > 32 {
            return None;
        }
        value = (value << 4) | u128::from(digit);
    }
    (digits == 32).then_some(EventId(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_format_as_display_does() {
        for id in [
            EventId(0),
            EventId(u128::MAX),
            EventId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            EventId(0xf00d),
        ] {
            assert_eq!(format_event_id(id), id.to_string());
        }
    }

    #[test]
    fn event_ids_parse_from_both_formats() {
        let id = EventId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(parse_event_id(&id.to_string()), Some(id));
        assert_eq!(parse_event_id(&format!("{id:?}")), Some(id));
        assert_eq!(parse_event_id("xyz"), None);
        assert_eq!(parse_event_id(""), None);
        assert_eq!(parse_event_id("0123456789abcdef0123456789abcdef0"), None);
    }
}

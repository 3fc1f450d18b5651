//! Domain types: typed ids and inputs parsed once at the edge.
//!
//! A value of [`Username`], [`Password`] or [`DisplayName`] is valid by construction;
//! code past the handler never re-checks it.

use std::fmt;

use serde::Serialize;

use crate::error::ErrorCode;

pub use switchboard_actors::ids::{ConnId, ConversationId, EventId, FileId, MessageId, SessionId, TransferId, UserId};

/// Why an input was refused; `code` is stable for clients, `message` says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidInput {
    pub code: ErrorCode,
    pub message: String,
}

fn invalid(code: ErrorCode, message: impl Into<String>) -> InvalidInput {
    InvalidInput { code, message: message.into() }
}

/// A username: 3–32 characters of `[a-z0-9_.-]`, stored lower-cased so that `Alice` and
/// `alice` are the same account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    pub const MIN: usize = 3;
    pub const MAX: usize = 32;

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let s = raw.trim().to_ascii_lowercase();
        let n = s.chars().count();
        if !(Self::MIN..=Self::MAX).contains(&n) {
            return Err(invalid(
                ErrorCode::InvalidUsername,
                format!("username must be {} to {} characters", Self::MIN, Self::MAX),
            ));
        }
        if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')) {
            return Err(invalid(ErrorCode::InvalidUsername, "username may contain only letters a-z, digits and _ . -"));
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password: 8–1024 bytes. Never printed.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub const MIN: usize = 8;
    pub const MAX: usize = 1024;

    pub fn parse(raw: String) -> Result<Self, InvalidInput> {
        if raw.len() < Self::MIN || raw.len() > Self::MAX {
            return Err(invalid(
                ErrorCode::InvalidPassword,
                format!("password must be {} to {} bytes", Self::MIN, Self::MAX),
            ));
        }
        Ok(Self(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([redacted])")
    }
}

/// A display name: 1–64 characters after trimming, no control characters. Defaults to
/// the username.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct DisplayName(String);

/// Characters a name shown to people may not hold: Unicode format characters (general
/// category Cf: bidi overrides and isolates such as U+202E, which make
/// `invoice\u{202E}fdp.exe` show as `invoiceexe.pdf`, invisible ones such as U+200B and
/// U+2060, tags) and the line and paragraph separators. Two Cf characters are allowed:
/// the zero-width joiner and non-joiner (U+200D, U+200C), which Persian and Indic names
/// and emoji sequences need and which cannot reorder text, and only between two other
/// characters (see [`check_visible_name`]). Also refused: the other default-ignorable
/// characters that render as nothing (U+034F, the Hangul fillers U+115F, U+1160, U+3164,
/// U+FFA0, U+17B4–17B5, the Mongolian variation selectors, the tag and supplementary
/// variation-selector plane U+E0000–E0FFF) and the blank Braille pattern U+2800; the
/// emoji variation selectors U+FE00–FE0F stay (emoji need them). (Unicode 16.0.)
pub fn is_hidden_format_char(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'
            | '\u{200E}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{034F}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180D}'
            | '\u{180F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// Checks a name shown to people beyond control characters: no hidden or text-direction
/// characters ([`is_hidden_format_char`]), a joiner (U+200C, U+200D) only between two
/// other visible characters, and at least one visible character in all.
pub fn check_visible_name(s: &str) -> Result<(), &'static str> {
    let joiner = |c: char| matches!(c, '\u{200C}' | '\u{200D}');
    let invisible = |c: char| c.is_whitespace() || joiner(c) || ('\u{FE00}'..='\u{FE0F}').contains(&c);
    if s.chars().any(is_hidden_format_char) {
        return Err("may not contain invisible or text-direction characters (such as U+202E)");
    }
    let chars: Vec<char> = s.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if joiner(*c) {
            let before = i.checked_sub(1).and_then(|j| chars.get(j));
            let after = chars.get(i + 1);
            if before.is_none_or(|b| invisible(*b)) || after.is_none_or(|a| invisible(*a)) {
                return Err("may use a zero-width joiner only between two visible characters");
            }
        }
    }
    if !chars.iter().any(|c| !invisible(*c)) {
        return Err("must contain a visible character");
    }
    Ok(())
}

impl DisplayName {
    pub const MAX: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let s = raw.trim();
        let n = s.chars().count();
        if n == 0 || n > Self::MAX {
            return Err(invalid(
                ErrorCode::InvalidDisplayName,
                format!("display name must be 1 to {} characters", Self::MAX),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(invalid(ErrorCode::InvalidDisplayName, "display name may not contain control characters"));
        }
        if let Err(why) = check_visible_name(s) {
            return Err(invalid(ErrorCode::InvalidDisplayName, format!("display name {why}")));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&Username> for DisplayName {
    fn from(u: &Username) -> Self {
        Self(u.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_bidi_and_invisible_characters_but_keep_joiners() {
        for bad in [
            "invoice\u{202E}fdp.exe",
            "a\u{200B}b",
            "\u{2066}x\u{2069}",
            "x\u{FEFF}",
            "tag\u{E0041}",
            "l\u{2028}n",
            "\u{3164}",
            "\u{2800}\u{2800}",
            "admin\u{200D}",
            "\u{200C}",
            "a\u{034F}b",
            "\u{FE0F}",
        ] {
            assert!(DisplayName::parse(bad).is_err(), "{bad:?}");
        }
        for good in ["Ana María", "محمد\u{200C}رضا", "👩\u{200D}💻 Dev", "李小龙", "I \u{2764}\u{FE0F} tea"]
        {
            assert!(DisplayName::parse(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn usernames_are_lowercased_and_bounded() {
        assert_eq!(Username::parse("Alice").map(|u| u.0), Ok("alice".to_owned()));
        assert_eq!(Username::parse("  a.b-c_9 ").map(|u| u.0), Ok("a.b-c_9".to_owned()));
        assert!(Username::parse("ab").is_err());
        assert!(Username::parse(&"a".repeat(33)).is_err());
        assert!(Username::parse(&"a".repeat(32)).is_ok());
        for bad in ["al ice", "alice!", "élise", "al/ice", "a\u{0}bc", ""] {
            assert!(Username::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn passwords_are_bounded_in_bytes() {
        assert!(Password::parse("1234567".into()).is_err());
        assert!(Password::parse("12345678".into()).is_ok());
        assert!(Password::parse("x".repeat(1024)).is_ok());
        assert!(Password::parse("x".repeat(1025)).is_err());
        // 4 × 2-byte characters = 8 bytes.
        assert!(Password::parse("éééé".into()).is_ok());
        assert!(!format!("{:?}", Password::parse("secret-pass".into())).contains("secret"));
    }

    #[test]
    fn display_names_are_trimmed_and_bounded() {
        assert_eq!(DisplayName::parse("  Ann  ").map(|d| d.0), Ok("Ann".to_owned()));
        assert!(DisplayName::parse("   ").is_err());
        assert!(DisplayName::parse(&"é".repeat(64)).is_ok());
        assert!(DisplayName::parse(&"é".repeat(65)).is_err());
        assert!(DisplayName::parse("a\nb").is_err());
        // Markup is allowed as text; templates and clients escape it.
        assert!(DisplayName::parse("<b>x</b>").is_ok());
    }

    #[test]
    fn ids_parse_only_uuids() {
        assert!(UserId::parse("not-a-uuid").is_none());
        let id = UserId::new();
        assert_eq!(UserId::parse(&id.to_string()), Some(id));
    }
}

//! User names: what a name may hold, its normal form, and the skeletons that make a name that
//! looks like another's count as taken.
//!
//! A name is stored in Unicode normal form NFKC (fullwidth `ａｄｍｉｎ` is `admin`, a ligature `ﬁ`
//! is `fi`, `é` is one character whichever way it was typed). It must not hold anything a reader
//! cannot see: control and format characters (zero-width spaces and joiners, the word joiner,
//! the byte-order mark, the soft hyphen, text-direction controls …), the other
//! default-ignorable code points (variation selectors, Hangul fillers …), blank look-alikes of
//! a space, private-use and unassigned code points, spaces at either end or two in a row, a
//! combining mark with nothing to sit on, or a tower of them. The one exception is the glue of
//! an emoji sequence: a zero-width joiner between two emoji (👩‍💻) and a variation selector
//! after one (❤️), which draw one visible picture.
//!
//! Two names are the same name when their confusable skeletons (Unicode TS #39) are equal:
//! `demо` with a Cyrillic `о` is `demo`, `adrnin` is `admin`, `Ⅰ` (after NFKC `I`) is `l`. And
//! when the skeletons of their lowercase forms are equal: `Admin` is `admin`. Both skeletons
//! are kept in unique columns of the user table.

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeEmoji, UnicodeGeneralCategory};

/// Longest user name accepted, in characters (Unicode scalar values, after NFKC).
pub(crate) const MAX_USER_NAME: usize = 32;
/// Most combining marks in a row a name may have (Thai, Hebrew with points and Tibetan stacks
/// need three or four; more is a tower drawn over the lines around it).
pub(crate) const MAX_MARKS_IN_A_ROW: usize = 4;

/// Why a name is refused at registration; the message is the client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NameError {
    #[error("userName must be 1 to {MAX_USER_NAME} characters")]
    Length,
    #[error("userName must not have invisible, control or text-direction characters, or spaces at its ends or two in a row")]
    Invisible,
    #[error("userName must not start with a combining mark or have more than {MAX_MARKS_IN_A_ROW} in a row")]
    Marks,
}

/// A name fit to register: its normal form and its two skeletons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Name {
    /// NFKC, as stored and shown.
    pub name: String,
    /// The UTS #39 skeleton of `name`.
    pub(crate) skeleton: String,
    /// The skeleton of `name` in lowercase.
    pub(crate) skeleton_ci: String,
}

/// The name `raw` registers as, or why it cannot.
pub(crate) fn normalize(raw: &str) -> Result<Name, NameError> {
    // The stored form is counted: NFKC composes (`e` + U+0301 is `é`) and expands (`㍿` is 4
    // characters). What is sent is bounded first, so normalizing an oversized name costs little.
    if raw.is_empty() || raw.chars().count() > 4 * MAX_USER_NAME {
        return Err(NameError::Length);
    }
    let name = nfkc(raw);
    if name.chars().count() > MAX_USER_NAME {
        return Err(NameError::Length);
    }
    check_characters(&name)?;
    let (skeleton, skeleton_ci) = skeletons(&name);
    Ok(Name { name, skeleton, skeleton_ci })
}

/// `s` in Unicode normal form NFKC.
pub(crate) fn nfkc(s: &str) -> String {
    s.nfkc().collect()
}

/// The UTS #39 skeleton of `name`, and that of its lowercase form. The two are kept apart
/// because folding case first would lose the capital look-alikes: `I` is confusable with `l`,
/// and Cyrillic `ВОВ` with `BOB`, but `i` is not with `l`, nor `в` with `b`.
pub(crate) fn skeletons(name: &str) -> (String, String) {
    let skeleton = unicode_security::skeleton(name).collect();
    let lower: String = name.chars().flat_map(char::to_lowercase).collect();
    (skeleton, unicode_security::skeleton(&lower).collect())
}

/// Whether a login may look `raw` up at all: the rules names have always had (no control or
/// text-direction characters, no surrounding spaces), so accounts registered before the
/// stricter rules can still log in, and the length a registration may send. Any other name is
/// no one's.
pub(crate) fn may_log_in(raw: &str) -> bool {
    !raw.is_empty()
        && raw.chars().count() <= 4 * MAX_USER_NAME
        && raw.trim() == raw
        && !raw.chars().any(|c| c.is_control() || is_bidi_control(c))
}

fn check_characters(name: &str) -> Result<(), NameError> {
    if name.starts_with(' ') || name.ends_with(' ') || name.contains("  ") {
        return Err(NameError::Invisible);
    }
    let chars: Vec<char> = name.chars().collect();
    let mut marks = 0;
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1).copied();
        if c != ' ' && is_invisible(c) && !emoji_glue(prev, c, next) {
            return Err(NameError::Invisible);
        }
        if c.general_category_group() == GeneralCategoryGroup::Mark {
            marks += 1;
            if i == 0 || marks > MAX_MARKS_IN_A_ROW {
                return Err(NameError::Marks);
            }
        } else {
            marks = 0;
        }
    }
    Ok(())
}

/// Characters that draw nothing, or nothing a reader can tell from a space: controls, format
/// characters (Cf: zero-width space and joiners, word joiner, BOM, soft hyphen, bidi
/// controls, tags …), separators other than the plain space, private-use and unassigned code
/// points, the default-ignorable ones of other categories (variation selectors, Hangul
/// fillers, the combining grapheme joiner …) and the blank Braille pattern.
fn is_invisible(c: char) -> bool {
    use GeneralCategory::*;
    matches!(
        c.general_category(),
        Control
            | Format
            | Surrogate
            | PrivateUse
            | Unassigned
            | SpaceSeparator
            | LineSeparator
            | ParagraphSeparator
    ) || is_default_ignorable(c)
        || c == '\u{2800}'
}

/// A zero-width joiner between two emoji (👩‍💻, 🏳️‍🌈, 👩🏽‍💻), or a variation selector after one
/// (❤️, 1️⃣): parts of one visible emoji. Their skeletons drop them, so `👩‍💻` and `👩💻` are
/// one name.
fn emoji_glue(prev: Option<char>, c: char, next: Option<char>) -> bool {
    let emoji = |c: char| !c.is_ascii() && c.is_emoji_char() && !c.is_emoji_component();
    let modifier = |c: char| matches!(c, '\u{1F3FB}'..='\u{1F3FF}');
    match c {
        '\u{200D}' => {
            prev.is_some_and(|p| emoji(p) || modifier(p) || p == '\u{FE0F}') && next.is_some_and(emoji)
        }
        '\u{FE0E}' | '\u{FE0F}' => prev.is_some_and(|p| p.is_emoji_char()),
        _ => false,
    }
}

/// Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt): code points a renderer
/// draws nothing for when it does not support them. A test checks this list against the one
/// the skeletons use.
fn is_default_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// Unicode's Bidi_Control characters: invisible, and able to make a name show as another.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Name {
        normalize(name).unwrap_or_else(|e| panic!("{name:?}: {e}"))
    }

    /// Whether two names may not both exist.
    fn collide(a: &str, b: &str) -> bool {
        let (a, b) = (key(a), key(b));
        a.name == b.name || a.skeleton == b.skeleton || a.skeleton_ci == b.skeleton_ci
    }

    #[test]
    fn invisible_and_format_characters_are_refused() {
        for name in [
            "admin\u{200B}", // zero-width space
            "\u{FEFF}demo",  // byte-order mark
            "de\u{AD}mo",    // soft hyphen
            "te\u{2060}st",  // word joiner
            "\u{3164}",      // Hangul filler
            "a\u{115F}",     // Hangul choseong filler
            "a\u{1160}b",    // Hangul jungseong filler
            "a\u{FFA0}",     // halfwidth Hangul filler
            "a\u{200C}b",    // zero-width non-joiner
            "a\u{200D}b",    // zero-width joiner outside an emoji
            "a\u{200D}👩",   // … or after a letter
            "👩\u{200D}",    // … or at the end
            "a\u{34F}b",     // combining grapheme joiner
            "a\u{FE0F}",     // a variation selector after a letter
            "a\u{E0041}",    // a tag
            "a\u{202E}b",    // right-to-left override
            "a\u{2066}b",    // left-to-right isolate
            "a\u{200F}",     // right-to-left mark
            "a\u{61C}b",     // Arabic letter mark
            "a\u{180E}b",    // Mongolian vowel separator
            "a\u{2800}b",    // blank Braille pattern
            "a\u{1680}b",    // Ogham space mark
            "a\u{2028}b",    // line separator
            "a\u{E000}",     // private use
            "a\u{378}",      // unassigned
            "a\u{0}",        // controls
            "a\u{1B}[31m",
            "a\u{85}",
            "tab\tname",
            " admin", // spaces at the ends, or two in a row
            "admin ",
            "ad  min",
            "admin\u{A0}", // NFKC makes these spaces
            "admin\u{3000}",
            "ad\u{2002}\u{2002}min",
            "\u{3000}",
        ] {
            assert_eq!(normalize(name), Err(NameError::Invisible), "{name:?}");
        }
    }

    #[test]
    fn combining_marks_need_a_base_and_stay_low() {
        assert_eq!(normalize("\u{301}"), Err(NameError::Marks));
        assert_eq!(normalize("\u{301}abc"), Err(NameError::Marks));
        // (`q` has no precomposed form with any of them.)
        assert_eq!(normalize("q\u{300}\u{301}\u{302}\u{303}\u{304}"), Err(NameError::Marks));
        key("q\u{300}\u{301}\u{302}\u{303}");
        // Thai with a vowel and a tone mark; Hebrew with points.
        key("กี่");
        key("שָׁלוֹם");
    }

    #[test]
    fn lengths_are_counted_in_characters_of_the_normal_form() {
        assert_eq!(normalize(""), Err(NameError::Length));
        assert_eq!(normalize(&"a".repeat(33)), Err(NameError::Length));
        key(&"a".repeat(32));
        key(&"😀".repeat(32));
        // Composes to 32 characters.
        assert_eq!(key(&"e\u{301}".repeat(32)).name, "\u{e9}".repeat(32));
        assert_eq!(normalize(&"q\u{301}".repeat(17)), Err(NameError::Length));
        assert_eq!(normalize(&"e\u{301}".repeat(65)), Err(NameError::Length), "sent: 130 characters");
        assert_eq!(normalize(&"\u{337F}".repeat(9)), Err(NameError::Length), "㍿ is 4 characters");
    }

    #[test]
    fn names_are_stored_in_nfkc() {
        assert_eq!(key("ａｄｍｉｎ").name, "admin");
        assert_eq!(key("\u{FB01}sh").name, "fish");
        assert_eq!(key("e\u{301}").name, "\u{E9}");
        assert_eq!(key("Ⅻ").name, "XII");
        assert_eq!(key("張三").name, "張三");
    }

    #[test]
    fn ordinary_names_of_every_script_register() {
        for name in [
            "alice",
            "Alice Smith",
            "张三",
            "Иван",
            "Ελένη",
            "שלום",
            "محمد",
            "नमस्ते",
            "さくら",
            "김민준",
            "O'Brien-2",
            "user_1.x",
            "😀",
            "👩\u{200D}👩\u{200D}👧",
            "👩\u{1F3FD}\u{200D}💻",
            "🏳\u{FE0F}\u{200D}🌈",
            "❤\u{FE0F}",
            "1\u{FE0F}\u{20E3}",
        ] {
            key(name);
        }
    }

    #[test]
    fn look_alikes_collide() {
        for (a, b) in [
            ("admin", "Admin"),
            ("admin", "ADMIN"),
            ("demo", "dem\u{43E}"),           // Cyrillic о
            ("admin", "adrnin"),              // rn looks like m
            ("llya", "Ilya"),                 // capital I looks like l
            ("BOB", "\u{412}\u{41E}\u{412}"), // Cyrillic ВОВ
            ("paypal", "\u{440}\u{430}ypal"), // Cyrillic р and а
            ("admin", "ａｄｍｉｎ"),
            ("alice", "\u{251}lice"), // Latin alpha
            ("👩\u{200D}💻", "👩💻"),
            ("Ελένη", "ΕΛΈΝΗ"),
        ] {
            assert!(collide(a, b), "{a:?} and {b:?} should be one name");
        }
    }

    #[test]
    fn different_names_do_not_collide() {
        for (a, b) in
            [("alice", "alicia"), ("admin", "admins"), ("张三", "张四"), ("Иван", "Иоан"), ("ab", "a b")]
        {
            assert!(!collide(a, b), "{a:?} {b:?}");
        }
    }

    #[test]
    fn logins_keep_the_old_rules() {
        assert!(may_log_in("admin\u{200B}"), "accounts registered before the rules");
        assert!(may_log_in("ａｄｍｉｎ"));
        assert!(may_log_in(&"e\u{301}".repeat(32)), "é typed decomposed");
        for name in ["", " a", "a\u{202E}", "a\n", &"a".repeat(129)] {
            assert!(!may_log_in(name), "{name:?}");
        }
    }

    /// The list above is the one the skeletons drop, code point for code point.
    #[test]
    fn default_ignorables_match_the_skeleton_tables() {
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            let dropped = unicode_security::skeleton(&c.to_string()).next().is_none();
            assert_eq!(is_default_ignorable(c), dropped, "U+{:04X}", c as u32);
        }
    }
}

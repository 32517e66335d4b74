//! Shell-style globs of `*` (any run of characters, none included) and `?` (one character),
//! compiled once and matched without allocating.

/// A compiled glob. Every other character matches itself, case-sensitively; there is no
/// escape, no `[...]` and no `**` (two stars are one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Char(char),
    One,
    Any,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        let mut tokens = Vec::with_capacity(pattern.len());
        for c in pattern.chars() {
            let token = match c {
                '*' => Token::Any,
                '?' => Token::One,
                c => Token::Char(c),
            };
            if token == Token::Any && tokens.last() == Some(&Token::Any) {
                continue;
            }
            tokens.push(token);
        }
        Self { pattern: tokens }
    }

    /// Whether the whole of `text` matches. The classic greedy walk with one backtrack point
    /// (the last `*` seen): time O(pattern × text) at worst, no recursion, no allocation.
    pub fn matches(&self, text: &str) -> bool {
        let pattern = &self.pattern;
        let (mut p, mut t) = (0, 0);
        // Where the last `*` was, and where in the text it was tried against.
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            let c = next_char(text, t);
            match pattern.get(p) {
                Some(Token::Any) => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                Some(Token::One) => {
                    p += 1;
                    t += c.len_utf8();
                    continue;
                }
                Some(Token::Char(expected)) if *expected == c => {
                    p += 1;
                    t += c.len_utf8();
                    continue;
                }
                _ => {}
            }
            match star {
                // Let the last `*` take one more character, and try again after it.
                Some((star_p, star_t)) => {
                    let taken = star_t + next_char(text, star_t).len_utf8();
                    star = Some((star_p, taken));
                    p = star_p + 1;
                    t = taken;
                }
                None => return false,
            }
        }
        pattern[p..].iter().all(|token| *token == Token::Any)
    }
}

fn next_char(text: &str, at: usize) -> char {
    text[at..]
        .chars()
        .next()
        .expect("`at` is a char boundary before the end")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition, by recursion over chars: slow and obviously right.
    fn reference(pattern: &[char], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('*', rest)) => (0..=text.len()).any(|skip| reference(rest, &text[skip..])),
            Some(('?', rest)) => !text.is_empty() && reference(rest, &text[1..]),
            Some((c, rest)) => text.first() == Some(c) && reference(rest, &text[1..]),
        }
    }

    #[test]
    fn stars_and_question_marks_match_as_in_a_shell() {
        for (pattern, text, expected) in [
            ("gpt-4*", "gpt-4o-mini", true),
            ("gpt-4*", "gpt-3.5", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("openai/*", "openai/gpt-4o", true),
            ("*/claude-*", "anthropic/claude-3-5-haiku", true),
            ("claude-?-opus", "claude-3-opus", true),
            ("claude-?-opus", "claude-35-opus", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("*é?", "caféé!", true),
            ("GPT*", "gpt-4", false),
            ("**a", "bba", true),
        ] {
            assert_eq!(
                Glob::new(pattern).matches(text),
                expected,
                "{pattern:?} against {text:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn the_matcher_agrees_with_the_definition(
            pattern in "[ab*?é]{0,8}",
            text in "[abé]{0,12}",
        ) {
            let p: Vec<char> = pattern.chars().collect();
            let t: Vec<char> = text.chars().collect();
            prop_assert_eq!(Glob::new(&pattern).matches(&text), reference(&p, &t));
        }

        #[test]
        fn any_pattern_and_text_are_matched_without_panicking(pattern in ".{0,20}", text in ".{0,40}") {
            let _ = Glob::new(&pattern).matches(&text);
        }
    }
}

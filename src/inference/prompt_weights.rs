//! A1111's prompt emphasis syntax: `(word)` × 1.1, `((word))` × 1.21, `(word:1.3)`,
//! `[word]` ÷ 1.1, `\(` for a literal bracket, and `BREAK` to start a new 77-token window.
//!
//! The parser turns a prompt into fragments of text, each with one weight, merged where
//! neighbours share a weight, exactly as A1111's `parse_prompt_attention` splits them:
//! unbalanced brackets close at the end of the prompt, a `)` or `]` with nothing open is
//! plain text, and a `:` not followed by a number and `)` is plain text too. The
//! encoder multiplies each token's hidden state by its weight and then restores the
//! window's mean (see `conditioning.rs`).

/// One piece of a parsed prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Fragment {
    /// Text and the weight of every token it gives.
    Text(String, f32),
    /// `BREAK`: the next text starts a new window.
    Break,
}

/// `(…)` multiplies by this, `[…]` divides by it.
const ROUND: f32 = 1.1;

/// What the scanner recognises, in A1111's order of precedence.
#[derive(Debug, PartialEq)]
enum Lexeme<'a> {
    /// `\(`, `\)`, `\[`, `\]`, `\\`: the character itself; a lone `\` gives nothing.
    Escaped(&'a str),
    Open,
    OpenSquare,
    /// `:1.3)` (spaces allowed around the number), and the characters matched.
    WeightClose(f32, &'a str),
    Close,
    CloseSquare,
    /// A run of other characters, or a lone `:`.
    Plain(&'a str),
}

fn lex(text: &str) -> Vec<Lexeme<'_>> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        match bytes[i] {
            b'\\' => {
                let next = rest[1..].chars().next();
                match next {
                    Some(c @ ('(' | ')' | '[' | ']' | '\\')) => {
                        out.push(Lexeme::Escaped(&rest[1..1 + c.len_utf8()]));
                        i += 1 + c.len_utf8();
                    }
                    _ => {
                        out.push(Lexeme::Escaped(""));
                        i += 1;
                    }
                }
            }
            b'(' => {
                out.push(Lexeme::Open);
                i += 1;
            }
            b'[' => {
                out.push(Lexeme::OpenSquare);
                i += 1;
            }
            b')' => {
                out.push(Lexeme::Close);
                i += 1;
            }
            b']' => {
                out.push(Lexeme::CloseSquare);
                i += 1;
            }
            b':' => match weight_close(rest) {
                Some((weight, len)) => {
                    out.push(Lexeme::WeightClose(weight, &rest[..len]));
                    i += len;
                }
                None => {
                    out.push(Lexeme::Plain(&rest[..1]));
                    i += 1;
                }
            },
            _ => {
                let len = rest
                    .find(['\\', '(', ')', '[', ']', ':'])
                    .unwrap_or(rest.len());
                out.push(Lexeme::Plain(&rest[..len]));
                i += len;
            }
        }
    }
    out
}

/// `:\s*([+-]?[.\d]+)\s*\)` at the start of `text`: the weight and the bytes matched.
fn weight_close(text: &str) -> Option<(f32, usize)> {
    let after_colon = &text[1..];
    let number_start = after_colon.len() - after_colon.trim_start().len();
    let number_text = &after_colon[number_start..];
    let sign = usize::from(number_text.starts_with(['+', '-']));
    let digits = number_text[sign..]
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(number_text.len() - sign);
    if digits == 0 {
        return None;
    }
    let number = &number_text[..sign + digits];
    let tail = &number_text[sign + digits..];
    let spaces = tail.len() - tail.trim_start().len();
    if !tail[spaces..].starts_with(')') {
        return None;
    }
    // A1111 would fail on "1.2.3"; here it stays plain text.
    let weight: f32 = number.parse().ok()?;
    Some((weight, 1 + number_start + sign + digits + spaces + 1))
}

/// Splits plain text on the word `BREAK` (uppercase, whole word), eating the spaces
/// around it.
fn split_breaks(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("BREAK") {
        let at = search + found;
        let end = at + "BREAK".len();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        let before = text[..at].chars().next_back();
        let after = text[end..].chars().next();
        if word(before) || word(after) {
            search = end;
            continue;
        }
        parts.push(text[start..at].trim_end());
        start = end + (text[end..].len() - text[end..].trim_start().len());
        search = start;
    }
    parts.push(&text[start..]);
    parts
}

/// Parses a prompt into weighted fragments (never empty: `""` gives one empty fragment).
pub fn parse(prompt: &str) -> Vec<Fragment> {
    // Weights are kept per fragment while parsing; brackets multiply ranges of them.
    let mut parts: Vec<(String, f32, bool)> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |parts: &mut Vec<(String, f32, bool)>, from: usize, by: f32| {
        for part in &mut parts[from..] {
            if !part.2 {
                part.1 *= by;
            }
        }
    };
    for lexeme in lex(prompt) {
        match lexeme {
            Lexeme::Escaped(text) => parts.push((text.to_string(), 1.0, false)),
            Lexeme::Open => round.push(parts.len()),
            Lexeme::OpenSquare => square.push(parts.len()),
            Lexeme::WeightClose(weight, _) if !round.is_empty() => {
                let from = round.pop().expect("checked");
                multiply(&mut parts, from, weight);
            }
            Lexeme::Close if !round.is_empty() => {
                let from = round.pop().expect("checked");
                multiply(&mut parts, from, ROUND);
            }
            Lexeme::CloseSquare if !square.is_empty() => {
                let from = square.pop().expect("checked");
                multiply(&mut parts, from, 1.0 / ROUND);
            }
            other => {
                // Closers with nothing open are kept as the characters they are.
                let text = match other {
                    Lexeme::Plain(t) | Lexeme::WeightClose(_, t) => t,
                    Lexeme::Close => ")",
                    Lexeme::CloseSquare => "]",
                    _ => "",
                };
                for (i, piece) in split_breaks(text).into_iter().enumerate() {
                    if i > 0 {
                        parts.push((String::new(), 1.0, true));
                    }
                    parts.push((piece.to_string(), 1.0, false));
                }
            }
        }
    }
    for from in round {
        multiply(&mut parts, from, ROUND);
    }
    for from in square {
        multiply(&mut parts, from, 1.0 / ROUND);
    }
    // Neighbours with the same weight become one fragment (breaks never merge).
    let mut merged: Vec<(String, f32, bool)> = Vec::new();
    for part in parts {
        match merged.last_mut() {
            Some(last) if !last.2 && !part.2 && last.1 == part.1 => last.0.push_str(&part.0),
            _ => merged.push(part),
        }
    }
    if merged.is_empty() {
        return vec![Fragment::Text(String::new(), 1.0)];
    }
    merged
        .into_iter()
        .map(|(text, weight, is_break)| {
            if is_break {
                Fragment::Break
            } else {
                Fragment::Text(text, weight)
            }
        })
        .collect()
}

/// Whether a parsed prompt needs the weighted path (some weight other than 1, or a break).
pub fn is_plain(fragments: &[Fragment]) -> bool {
    fragments
        .iter()
        .all(|f| matches!(f, Fragment::Text(_, w) if *w == 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &str, w: f32) -> Fragment {
        Fragment::Text(t.into(), w)
    }

    fn close(a: &[Fragment], b: &[Fragment]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| match (x, y) {
                (Fragment::Text(s, v), Fragment::Text(t, w)) => s == t && (v - w).abs() < 1e-5,
                (Fragment::Break, Fragment::Break) => true,
                _ => false,
            })
    }

    #[track_caller]
    fn check(prompt: &str, want: &[Fragment]) {
        let got = parse(prompt);
        assert!(close(&got, want), "{prompt:?}: got {got:?}, want {want:?}");
    }

    // The examples of A1111's own docstring of parse_prompt_attention.
    #[test]
    fn a1111_documented_examples() {
        check("normal text", &[text("normal text", 1.0)]);
        check(
            "an (important) word",
            &[text("an ", 1.0), text("important", 1.1), text(" word", 1.0)],
        );
        check("(unbalanced", &[text("unbalanced", 1.1)]);
        check("\\(literal\\]", &[text("(literal]", 1.0)]);
        check("(unnecessary)(parens)", &[text("unnecessaryparens", 1.1)]);
        check(
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            &[
                text("a ", 1.0),
                text("house", 1.5730),
                text(" ", 1.1),
                text("on", 1.0),
                text(" a ", 1.1),
                text("hill", 0.55),
                text(", sun, ", 1.1),
                text("sky", 1.4641),
                text(".", 1.1),
            ],
        );
    }

    #[test]
    fn nesting_and_square_brackets() {
        check("((word))", &[text("word", 1.21)]);
        check("[word]", &[text("word", 1.0 / 1.1)]);
        check("[[word]]", &[text("word", 1.0 / 1.21)]);
        check("(word:1.3)", &[text("word", 1.3)]);
        check("(word: 0.5 )", &[text("word", 0.5)]);
        check(
            "(a (b:2) c)",
            &[text("a ", 1.1), text("b", 2.2), text(" c", 1.1)],
        );
    }

    #[test]
    fn unbalanced_and_stray_brackets() {
        check("a) b] c", &[text("a) b] c", 1.0)]);
        check("[unclosed", &[text("unclosed", 1.0 / 1.1)]);
        check("time: 5pm", &[text("time: 5pm", 1.0)]);
        check("x:2) y", &[text("x:2) y", 1.0)]);
        // As in A1111, a number before the closing bracket is a weight.
        check("(ratio 16:9)", &[text("ratio 16", 9.0)]);
        check("(ratio 16:9 wide)", &[text("ratio 16:9 wide", 1.1)]);
        check("a \\ b", &[text("a  b", 1.0)]);
        check("\\\\", &[text("\\", 1.0)]);
        check("", &[text("", 1.0)]);
        check("()", &[text("", 1.0)]);
    }

    #[test]
    fn break_starts_a_new_window() {
        check(
            "a cat BREAK a dog",
            &[text("a cat", 1.0), Fragment::Break, text("a dog", 1.0)],
        );
        check(
            "BREAKFAST and BREAK",
            &[text("BREAKFAST and", 1.0), Fragment::Break, text("", 1.0)],
        );
        check(
            "(red BREAK blue)",
            &[text("red", 1.1), Fragment::Break, text("blue", 1.1)],
        );
        check(
            "break is lowercase here",
            &[text("break is lowercase here", 1.0)],
        );
    }

    #[test]
    fn plain_prompts_stay_plain() {
        assert!(is_plain(&parse("a photo of a cat, highly detailed")));
        assert!(is_plain(&parse("(cat:1.0)")));
        assert!(!is_plain(&parse("(cat)")));
        assert!(!is_plain(&parse("a BREAK b")));
    }
}

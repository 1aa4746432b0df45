//! Errors as the user reads them: one line, of bounded length, whatever the input echoed in it.

/// The longest line [`one_line`] returns, in characters (an `error: ` before it stays under
/// 300).
pub const MAX_LINE: usize = 280;
/// The longest run without whitespace kept whole in a line (a path, a value): longer ones keep
/// their start and end around an ellipsis.
pub const MAX_WORD: usize = 120;
/// How short [`one_line`] may make a word to fit the line.
pub const MIN_WORD: usize = 40;
/// The longest user value echoed in a message ([`cut`]).
pub const MAX_ECHO: usize = 80;

/// The error chain on one line: `outer: inner: cause`, whitespace folded, each over-long word
/// shortened ([`MAX_WORD`]) and the whole at most [`MAX_LINE`] characters — a 1 MB path or
/// sampler name is echoed as its first and last characters, and the fix at the end survives.
pub fn one_line(e: &anyhow::Error) -> String {
    let parts: Vec<String> = e
        .chain()
        .map(|c| c.to_string())
        .filter(|s| !s.is_empty())
        .collect();
    bounded_line(&parts.join(": "))
}

/// `text` folded onto one line and bounded as [`one_line`] does: over-long words first (the
/// longest is shortened, down to [`MIN_WORD`], until the line fits), so a message naming two
/// long paths keeps every word of its sentence; only a line of many short words loses its
/// middle.
pub fn bounded_line(text: &str) -> String {
    let mut words: Vec<String> = text.split_whitespace().map(|w| cut(w, MAX_WORD)).collect();
    let width = |words: &[String]| -> usize {
        words.iter().map(|w| w.chars().count()).sum::<usize>() + words.len().saturating_sub(1)
    };
    loop {
        let total = width(&words);
        let longest = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.chars().count(), i))
            .max();
        match longest {
            Some((len, i)) if total > MAX_LINE && len > MIN_WORD => {
                let keep = len.saturating_sub(total - MAX_LINE).max(MIN_WORD);
                words[i] = cut(&words[i], keep);
            }
            _ => break,
        }
    }
    let line = words.join(" ");
    let chars = line.chars().count();
    if chars <= MAX_LINE {
        return line;
    }
    // Keep the start (what failed) and the end (the fix).
    let tail = 100;
    let head: String = line.chars().take(MAX_LINE - tail - 3).collect();
    let end: String = line.chars().skip(chars - tail).collect();
    format!("{head} … {end}")
}

/// `value` as echoed in a message: at most `max` characters, its start and end kept around an
/// ellipsis when longer.
pub fn cut(value: &str, max: usize) -> String {
    let chars = value.chars().count();
    if chars <= max {
        return value.to_owned();
    }
    let keep = max.saturating_sub(1);
    let head: String = value.chars().take(keep * 2 / 3).collect();
    let tail: String = value.chars().skip(chars - (keep - keep * 2 / 3)).collect();
    format!("{head}…{tail}")
}

/// A user value echoed in a message, cut to [`MAX_ECHO`] characters.
pub fn echo(value: &str) -> String {
    cut(value, MAX_ECHO)
}

/// A number as written in a message: short (`1e-300`, not 300 zeros — Rust's `{}` writes every
/// digit of a tiny or huge float).
pub fn num(v: f64) -> String {
    let plain = v.to_string();
    if plain.len() <= 16 {
        return plain;
    }
    // Five significant digits, trailing zeros dropped: `2e300`, `1.2346e-300`.
    let short = format!("{v:.4e}");
    match short.split_once('e') {
        Some((mantissa, exponent)) if mantissa.contains('.') => {
            let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
            format!("{mantissa}e{exponent}")
        }
        _ => short,
    }
}

/// Any value as written in a message: a number short ([`num`]), anything else cut ([`echo`]).
pub fn shown(value: impl std::fmt::Display) -> String {
    let text = value.to_string();
    match text.parse::<f64>() {
        Ok(v) if text.len() > 16 => num(v),
        _ => echo(&text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_values_are_bounded() {
        let long = "x".repeat(1_000_000);
        let e = anyhow::anyhow!("sampler `{long}` is unknown — list them with `hiresfix plugins`");
        let line = one_line(&e);
        assert!(line.chars().count() <= MAX_LINE, "{}", line.len());
        assert!(
            line.ends_with("list them with `hiresfix plugins`"),
            "{line}"
        );
        let many = "word ".repeat(10_000) + "— the fix";
        let line = one_line(&anyhow::anyhow!(many));
        assert_eq!(line.chars().count(), MAX_LINE);
        assert!(line.ends_with("— the fix"));
        // Two long paths: they are shortened, every word of the sentence stays.
        let path = format!("/tmp/{}/model.pth", "d".repeat(110));
        let e = anyhow::anyhow!("upscaler `x` is {path}, a pickle: run `hiresfix convert {path}`");
        let line = one_line(&e);
        assert!(line.chars().count() <= MAX_LINE, "{line}");
        assert!(
            line.contains(", a pickle: run `hiresfix convert /tmp/"),
            "{line}"
        );
        assert!(line.ends_with("model.pth`"), "{line}");
        assert_eq!(cut("abcdef", 6), "abcdef");
        assert_eq!(cut("abcdefghij", 7), "abcd…ij");
        assert_eq!(cut("ééééé", 3), "é…é");
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(num(1e-300), "1e-300");
        assert_eq!(num(0.35), "0.35");
        assert_eq!(num(1e300), "1e300");
        assert_eq!(num(1.9999999999999998e300), "2e300");
        assert_eq!(num(-1.23456789e-300), "-1.2346e-300");
        assert_eq!(num(f64::NAN), "NaN");
        assert_eq!(shown(1e-300), "1e-300");
        assert_eq!(shown(5u32), "5");
        assert_eq!(shown("a".repeat(200)).chars().count(), MAX_ECHO);
    }
}

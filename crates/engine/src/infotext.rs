//! A1111 "parameters" text (what PNG Info and Civitai read): prompt, `Negative prompt:` line,
//! then one line of `Key: value` pairs, values quoted when they hold `,` `:` or `"`.

/// A number as A1111 prints it: `7`, `7.5`, `0.35`.
pub fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    let a = v.abs();
    if !v.is_finite() || (1e-4..1e16).contains(&a) {
        return format!("{v}");
    }
    // Python's repr past its plain range: shortest digits, a signed exponent of two digits
    // or more (`1e-300`, `1.5e-05`, `2e+20`), never hundreds of zeros.
    let short = format!("{v:e}");
    let (mantissa, exponent) = short.split_once('e').unwrap_or((&short, "0"));
    let (sign, digits) = match exponent.strip_prefix('-') {
        Some(d) => ('-', d),
        None => ('+', exponent),
    };
    format!("{mantissa}e{sign}{digits:0>2}")
}

/// Builds the text from the prompt, negative prompt and ordered pairs.
pub fn format(prompt: &str, negative: &str, pairs: &[(String, String)]) -> String {
    let mut text = prompt.to_owned();
    if !negative.is_empty() {
        text.push_str("\nNegative prompt: ");
        text.push_str(negative);
    }
    let line = pairs
        .iter()
        .map(|(k, v)| format!("{k}: {}", quote(v)))
        .collect::<Vec<_>>()
        .join(", ");
    text.push('\n');
    text.push_str(&line);
    text
}

pub fn quote(value: &str) -> String {
    if value.contains([',', ':', '"', '\n']) {
        let escaped = value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        format!("\"{escaped}\"")
    } else {
        value.to_owned()
    }
}

/// Parsed parameters text.
#[derive(Debug, Default, PartialEq)]
pub struct Parameters {
    pub prompt: String,
    pub negative: String,
    pub pairs: Vec<(String, String)>,
}

impl Parameters {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses A1111 parameters text (the inverse of [`format`]).
pub fn parse(text: &str) -> Parameters {
    let mut lines: Vec<&str> = text.lines().collect();
    let last = lines.pop().unwrap_or("");
    let mut out = Parameters {
        pairs: parse_pairs(last),
        ..Default::default()
    };
    let mut in_negative = false;
    let (mut prompt, mut negative) = (Vec::new(), Vec::new());
    for line in lines {
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            in_negative = true;
            negative.push(rest.trim_start());
        } else if in_negative {
            negative.push(line);
        } else {
            prompt.push(line);
        }
    }
    out.prompt = prompt.join("\n");
    out.negative = negative.join("\n");
    out
}

fn parse_pairs(line: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = line.trim();
    while let Some((key, after)) = rest.split_once(':') {
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, other)) => value.push(other),
                        None => {}
                    },
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            let next = quoted[end..]
                .trim_start()
                .strip_prefix(',')
                .unwrap_or(&quoted[end..]);
            (value, next)
        } else {
            match after.split_once(',') {
                Some((v, next)) => (v.trim().to_owned(), next),
                None => (after.trim().to_owned(), ""),
            }
        };
        pairs.push((key.trim().to_owned(), value));
        rest = next.trim_start();
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_as_python_writes_floats() {
        assert_eq!(num(7.0), "7");
        assert_eq!(num(0.35), "0.35");
        assert_eq!(num(1e-300), "1e-300");
        assert_eq!(num(1.5e-5), "1.5e-05");
        assert_eq!(num(2.5e20), "2.5e+20");
        assert_eq!(num(0.0001), "0.0001");
    }

    #[test]
    fn quoted_values_round_trip() {
        let pairs = vec![
            ("Steps".to_owned(), "20".to_owned()),
            ("Hires prompt".to_owned(), "a \"red\", fox: 1".to_owned()),
            ("Size".to_owned(), "512x512".to_owned()),
        ];
        let text = format("a cat\nsecond line", "blurry, lowres", &pairs);
        let parsed = parse(&text);
        assert_eq!(parsed.prompt, "a cat\nsecond line");
        assert_eq!(parsed.negative, "blurry, lowres");
        assert_eq!(parsed.pairs, pairs);
    }

    #[test]
    fn reads_an_a1111_line() {
        let p = parse("cat\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x768");
        assert_eq!(p.get("Sampler"), Some("DPM++ 2M"));
        assert_eq!(p.get("Size"), Some("512x768"));
        assert_eq!(p.negative, "");
    }
}

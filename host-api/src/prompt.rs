//! A1111's extra-network tags in prompts (modules/extra_networks.py `re_extra_net`):
//! `<lora:name>`, `<lora:name:w>`, `<lora:name:te:unet>`, `<lora:name:te=0.5:unet=1>`. The host
//! resolves the LoRA files; backends only need the tags gone from the text they encode.

/// A `<lora:…>` tag found in a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraTag {
    pub name: String,
    /// Multiplier of the text-encoder layers.
    pub te: f64,
    /// Multiplier of the UNet layers (A1111: the te multiplier unless given).
    pub unet: f64,
    /// The tag as written, for messages.
    pub text: String,
}

/// A prompt with its tags taken out.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tags {
    /// The text the encoder sees.
    pub text: String,
    pub loras: Vec<LoraTag>,
    /// Other extra-network tags (`<hypernet:…>`, ...), as written.
    pub others: Vec<String>,
}

/// Strips every `<type:args>` tag (A1111 `re_extra_net`: `<(\w+):([^>]+)>`) and returns the
/// `<lora:…>` ones parsed; an error names a tag whose numbers do not parse.
pub fn extract_loras(prompt: &str) -> Result<(String, Vec<LoraTag>), String> {
    let tags = extract_tags(prompt)?;
    Ok((tags.text, tags.loras))
}

/// [`extract_loras`], keeping the other tags. Linear in the prompt's length: each `<` reads only
/// its own word run, and the position of the next `>` is found once and reused until passed
/// (a prompt of a million `<a:` is no slower than one of a million letters).
pub fn extract_tags(prompt: &str) -> Result<Tags, String> {
    let mut out = Tags::default();
    let mut at = 0;
    // The next `>` at or after a position; `None` once there is none left.
    let mut close: Option<usize> = Some(0);
    while let Some(offset) = prompt[at..].find('<') {
        let open = at + offset;
        out.text.push_str(&prompt[at..open]);
        let kind_end = prompt[open + 1..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(prompt.len(), |n| open + 1 + n);
        let colon =
            (kind_end > open + 1 && prompt[kind_end..].starts_with(':')).then_some(kind_end);
        if close.is_some_and(|c| c <= open) {
            close = prompt[open..].find('>').map(|n| open + n);
        }
        match (colon, close) {
            (Some(colon), Some(end)) if end > colon + 1 => {
                let (kind, args) = (&prompt[open + 1..colon], &prompt[colon + 1..end]);
                let text = format!("<{kind}:{args}>");
                match kind {
                    "lora" => out.loras.push(parse_lora_args(args, text)?),
                    _ => out.others.push(text),
                }
                at = end + 1;
            }
            _ => {
                out.text.push('<');
                at = open + 1;
            }
        }
    }
    out.text.push_str(&prompt[at..]);
    Ok(out)
}

/// `name[:te[:unet]]`, numbers positional or as `te=`/`unet=` (A1111 `ExtraNetworkParams`).
fn parse_lora_args(args: &str, text: String) -> Result<LoraTag, String> {
    let mut parts = args.split(':');
    let name = parts.next().unwrap_or_default().trim().to_string();
    let (mut te, mut unet) = (None, None);
    for (i, part) in parts.enumerate() {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None if i == 0 => ("te", part.trim()),
            None if i == 1 => ("unet", part.trim()),
            None => continue, // A1111's third position (dyn dim) does not apply here.
        };
        let number = value
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| {
                format!("{text}: weight `{value}` is not a number — write <lora:{name}:0.8>")
            })?;
        match key {
            "te" => te = Some(number),
            "unet" => unet = Some(number),
            other => {
                return Err(format!(
                    "{text}: `{other}=` is not a LoRA option (use te= or unet=)"
                ))
            }
        }
    }
    if name.is_empty() {
        return Err(format!(
            "{text}: the LoRA has no name — write <lora:name:0.8>"
        ));
    }
    let te = te.unwrap_or(1.0);
    Ok(LoraTag {
        name,
        te,
        unet: unet.unwrap_or(te),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_tags_are_stripped_and_parsed_as_a1111_does() {
        let tags = extract_tags(
            "a cat <lora:detail:0.6>, <lora:style> <hypernet:x:1>end <lora:both:0.8:0.3>",
        )
        .unwrap();
        assert_eq!(tags.text, "a cat ,  end ");
        let got: Vec<(&str, f64, f64)> = tags
            .loras
            .iter()
            .map(|l| (l.name.as_str(), l.te, l.unet))
            .collect();
        assert_eq!(
            got,
            [
                ("detail", 0.6, 0.6),
                ("style", 1.0, 1.0),
                ("both", 0.8, 0.3)
            ]
        );
        assert_eq!(tags.others, ["<hypernet:x:1>"]);
        let named = extract_loras("<lora:n:unet=0.5:te=0.2>").unwrap().1;
        assert_eq!((named[0].te, named[0].unet), (0.2, 0.5));
        assert!(extract_loras("<lora:x:abc>")
            .unwrap_err()
            .contains("weight `abc` is not a number"));
        assert_eq!(extract_loras("a < b > c").unwrap().0, "a < b > c");
        // `[^>]+` takes a `<` into the arguments, as A1111's regex does.
        assert_eq!(extract_loras("<lora:a<b>").unwrap().1[0].name, "a<b");
        assert_eq!(extract_tags("<x:>y<é_1:z>").unwrap().others, ["<é_1:z>"]);
        assert_eq!(extract_tags("<x:>y<é_1:z>").unwrap().text, "<x:>y");
    }

    #[test]
    fn a_prompt_of_unclosed_tags_is_read_in_linear_time() {
        // Quadratic scanning would take minutes on 4 MB; linear takes milliseconds.
        let prompt = "<lora:".repeat(700_000);
        let tags = extract_tags(&prompt).unwrap();
        assert_eq!(tags.text.len(), prompt.len());
        assert!(tags.loras.is_empty());
        let closed = format!("{}>", "<a:".repeat(1_000_000));
        let tags = extract_tags(&closed).unwrap();
        assert_eq!(tags.others.len(), 1);
        assert_eq!(tags.others[0].len(), closed.len());
    }
}

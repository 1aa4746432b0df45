//! The latent a preview PNG carries (`generate --passes K`, `save_passes`), so that
//! `hiresfix finish` continues exactly where the run stopped: a zTXt chunk
//! `hiresfix-latent` holding
//!
//! ```text
//! hiresfix-latent 1
//! pass 1
//! shape 1 4 64 64
//! <base64 of the fp32 values, little-endian, row-major>
//! ```
//!
//! fp32 is what the passes hand each other, so a finished image is bit-identical to a
//! one-shot run; zTXt's deflate undoes most of base64's growth.
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use host_api::tch::{Device, Kind, Tensor};

pub const CHUNK: &str = "hiresfix-latent";
const MAGIC: &str = "hiresfix-latent 1";

/// Channels of a stored latent (SD 1.x/2.x/XL have 4; 16 leaves room for others).
pub const MAX_CHANNELS: i64 = 16;
/// Cells along either side: the largest image side over the VAE's factor of 8.
pub const MAX_CELLS: i64 = crate::defaults::MAX_SIZE as i64 / 8;
/// Bytes of the first three lines (magic, pass, shape), at most.
pub const MAX_HEAD_LEN: usize = 256;
/// Bytes of the whole chunk text for the largest allowed latent: 1 × 16 × 2048 × 2048 fp32
/// values (256 MiB) in base64 (≈ 341 MiB). A chunk is bounded by the shape it declares.
pub const MAX_TEXT_LEN: usize =
    MAX_HEAD_LEN + base64_len((MAX_CHANNELS * MAX_CELLS * MAX_CELLS * 4) as usize);

const fn base64_len(bytes: usize) -> usize {
    bytes.div_ceil(3) * 4
}

/// The shape line's numbers checked against what hiresfix stores: batch 1, 1 to 16 channels,
/// 1 to [`MAX_CELLS`] cells a side. `Err` says what is off.
fn checked_shape(shape: &[i64]) -> Result<[i64; 4], String> {
    let [batch, channels, h, w] = shape else {
        return Err(format!("shape has {} numbers, not 4", shape.len()));
    };
    if *batch != 1 {
        return Err(format!("batch {batch}, hiresfix stores 1"));
    }
    if !(1..=MAX_CHANNELS).contains(channels) {
        return Err(format!("{channels} channels, at most {MAX_CHANNELS}"));
    }
    if !(1..=MAX_CELLS).contains(h) || !(1..=MAX_CELLS).contains(w) {
        return Err(format!("{w}x{h} cells, each side 1 to {MAX_CELLS}"));
    }
    Ok([*batch, *channels, *h, *w])
}

/// The length of the whole chunk text that `head` (its first bytes) declares with its shape
/// line, if the lines parse and the shape is one hiresfix stores (a trailing newline allowed).
pub fn declared_text_len(head: &[u8]) -> Option<usize> {
    let head = std::str::from_utf8(head.get(..MAX_HEAD_LEN.min(head.len()))?).ok()?;
    let mut lines = head.split_inclusive('\n');
    let magic = lines.next()?;
    let pass = lines.next()?;
    let shape_line = lines.next()?;
    if magic != format!("{MAGIC}\n") || !pass.starts_with("pass ") || !shape_line.ends_with('\n') {
        return None;
    }
    let shape: Vec<i64> = shape_line
        .strip_prefix("shape ")?
        .trim_end()
        .split(' ')
        .map(|d| d.parse().ok())
        .collect::<Option<_>>()?;
    let [_, c, h, w] = checked_shape(&shape).ok()?;
    let values = (c * h * w * 4) as usize;
    Some(magic.len() + pass.len() + shape_line.len() + base64_len(values) + 1)
}

/// A latent and the (1-based) pass that produced it.
pub struct StoredLatent {
    pub pass: usize,
    pub latent: Tensor,
}

impl StoredLatent {
    /// The latent against its model's `channels`; `shown` names the image.
    pub fn check_channels(&self, channels: u32, shown: &str) -> Result<()> {
        let got = self.latent.size().get(1).copied().unwrap_or(0);
        if got != i64::from(channels) {
            bail!("{shown}: its stored latent has {got} channels but the model's latents have {channels} — it was made by another model; finish it with that model or with --ignore-latent");
        }
        Ok(())
    }
}

/// The chunk text for `latent`, pass `pass`'s result.
pub fn encode(latent: &Tensor, pass: usize) -> Result<String> {
    let cpu = latent
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();
    let values = Vec::<f32>::try_from(cpu.flatten(0, -1)).context("cannot read the latent")?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let shape: Vec<String> = cpu.size().iter().map(i64::to_string).collect();
    let data = base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(format!(
        "{MAGIC}\npass {pass}\nshape {}\n{data}",
        shape.join(" ")
    ))
}

/// Reads a chunk written by [`encode`]; `shown` names the image in errors.
pub fn decode(text: &str, shown: &str) -> Result<StoredLatent> {
    let bad = |what: &str| {
        anyhow!("{shown}: its stored latent is damaged ({what}); finish it as a plain image with --ignore-latent")
    };
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        bail!("{shown}: its stored latent has an unknown format (from a newer hiresfix?); update hiresfix or finish it with --ignore-latent");
    }
    let field = |line: Option<&str>, key: &str| {
        line.and_then(|l| l.strip_prefix(key))
            .and_then(|l| l.strip_prefix(' '))
            .map(str::to_owned)
            .ok_or_else(|| bad(&format!("no `{key}` line")))
    };
    let pass: usize = field(lines.next(), "pass")?
        .parse()
        .map_err(|_| bad("pass"))?;
    let shape: Vec<i64> = field(lines.next(), "shape")?
        .split(' ')
        .map(|d| d.parse::<i64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("shape"))?;
    let shape = checked_shape(&shape).map_err(|what| bad(&what))?;
    if !(1..=crate::limits::MAX_PASSES).contains(&pass) {
        return Err(bad(&format!("pass {pass}")));
    }
    let data = lines.next().ok_or_else(|| bad("no values"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|_| bad("values are not base64"))?;
    if shape.iter().product::<i64>() * 4 != bytes.len() as i64 {
        return Err(bad("its size does not match its shape"));
    }
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(StoredLatent {
        pass,
        latent: Tensor::from_slice(&values).view(shape.as_slice()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latent_round_trips_bit_for_bit() {
        let latent = Tensor::randn([1, 4, 3, 5], (Kind::Float, Device::Cpu)) * 1e3;
        let text = encode(&latent, 2).unwrap();
        assert!(text.starts_with("hiresfix-latent 1\npass 2\nshape 1 4 3 5\n"));
        let back = decode(&text, "x.png").unwrap();
        assert_eq!(back.pass, 2);
        assert!(back.latent.equal(&latent));
    }

    #[test]
    fn damaged_chunks_are_refused_with_the_image_named() {
        let text = encode(&Tensor::zeros([1, 4, 2, 2], (Kind::Float, Device::Cpu)), 1).unwrap();
        let cut = &text[..text.len() - 8];
        let err = decode(cut, "x.png").err().unwrap().to_string();
        assert!(
            err.starts_with("x.png: its stored latent is damaged"),
            "{err}"
        );
        let err = decode("hiresfix-latent 9\n", "x.png")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unknown format"), "{err}");
        let huge = "hiresfix-latent 1\npass 1\nshape 1 4 99999999 99999999\nAAAA";
        assert!(decode(huge, "x.png").is_err());
    }
}

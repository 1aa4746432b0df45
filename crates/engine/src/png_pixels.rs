//! A PNG's pixels as RGB8, whatever its colour type and bit depth (`finish`'s input image),
//! its size checked from the header before anything is allocated.
use std::path::Path;

use anyhow::{bail, Context, Result};

/// An RGB8 image.
#[derive(Clone, Debug, PartialEq)]
pub struct Rgb8 {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// Pixels of a PNG that is decoded (`finish`'s input): the largest side squared.
pub const MAX_PIXELS: u64 = crate::defaults::MAX_SIZE as u64 * crate::defaults::MAX_SIZE as u64;

/// Decodes a PNG of any colour type and bit depth as RGB8: `(width, height, pixels)`. As PIL's
/// `Image.convert("RGB")` (what A1111 does to an input): palette and low bit depths are
/// expanded, 16-bit samples keep their high byte, grey is copied to R, G and B, and alpha
/// (an alpha channel or a tRNS colour) is dropped, not composited. The header's size is
/// checked against [`crate::defaults::MAX_SIZE`] before anything is allocated.
pub fn read_rgb8(path: &Path) -> Result<(u32, u32, Vec<u8>)> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    decode_rgb8(std::io::BufReader::new(file), &path.display())
}

/// [`read_rgb8`] of PNG bytes in memory (a request's image); `shown` names it in errors.
pub fn rgb8_from_bytes(bytes: &[u8], shown: &str) -> Result<(u32, u32, Vec<u8>)> {
    decode_rgb8(std::io::Cursor::new(bytes), &shown)
}

fn decode_rgb8<R: std::io::BufRead + std::io::Seek>(
    mut file: R,
    shown: &dyn std::fmt::Display,
) -> Result<(u32, u32, Vec<u8>)> {
    let mut head = [0u8; 24];
    std::io::Read::read_exact(&mut file, &mut head)
        .ok()
        .filter(|_| &head[..8] == b"\x89PNG\r\n\x1a\n" && &head[12..16] == b"IHDR")
        .ok_or_else(|| anyhow::anyhow!("{shown} is not a readable PNG"))?;
    let width = u32::from_be_bytes([head[16], head[17], head[18], head[19]]);
    let height = u32::from_be_bytes([head[20], head[21], head[22], head[23]]);
    let max = crate::defaults::MAX_SIZE;
    if width > max || height > max || u64::from(width) * u64::from(height) > MAX_PIXELS {
        bail!("{shown}: its header says {width}x{height} px, over the {max} px limit a side — resize it first");
    }
    std::io::Seek::rewind(&mut file)?;
    let mut decoder = png::Decoder::new(file);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    // Pixels only: text is read by `read_text_chunks` (bounded), colour profiles are not used.
    decoder.set_ignore_text_chunk(true);
    decoder.set_ignore_iccp_chunk(true);
    // RGBA at 16 bits before STRIP_16, plus the decoder's rows: within this bound.
    let most = u64::from(width) * u64::from(height) * 8 + (64 << 20);
    decoder.set_limits(png::Limits {
        bytes: usize::try_from(most).unwrap_or(usize::MAX),
    });
    let not_png = |e: png::DecodingError| anyhow::anyhow!("{shown} is not a readable PNG ({e})");
    let mut reader = decoder.read_info().map_err(not_png)?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).map_err(not_png)?;
    buf.truncate(frame.buffer_size());
    let rgb = to_rgb8(frame.color_type, &buf).ok_or_else(|| {
        anyhow::anyhow!(
            "{shown}: PNG colour type {:?} at {:?} bits is not supported",
            frame.color_type,
            frame.bit_depth
        )
    })?;
    Ok((frame.width, frame.height, rgb))
}

/// 8-bit samples of `color` as RGB8 (see [`read_rgb8`]: alpha dropped, grey copied).
pub fn to_rgb8(color: png::ColorType, samples: &[u8]) -> Option<Vec<u8>> {
    use png::ColorType::*;
    let rgb = match color {
        Rgb => samples.to_vec(),
        Rgba => samples
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        Grayscale => samples.iter().flat_map(|&g| [g, g, g]).collect(),
        GrayscaleAlpha => samples
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        Indexed => return None, // EXPAND turns palettes into RGB(A)
    };
    Some(rgb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::encode_png;

    /// A 4x2 PNG of `color` at `depth` from `data` (and a palette / tRNS when given).
    fn encoded(
        color: png::ColorType,
        depth: png::BitDepth,
        data: &[u8],
        palette: Option<&[u8]>,
        trns: Option<&[u8]>,
    ) -> std::path::PathBuf {
        let mut bytes = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut bytes, 4, 2);
            encoder.set_color(color);
            encoder.set_depth(depth);
            if let Some(p) = palette {
                encoder.set_palette(p.to_vec());
            }
            if let Some(t) = trns {
                encoder.set_trns(t.to_vec());
            }
            let mut writer = encoder.write_header().unwrap();
            writer.write_image_data(data).unwrap();
        }
        let name = format!(
            "hiresfix-rgb8-{}-{:?}-{:?}-{}.png",
            std::process::id(),
            color,
            depth,
            trns.is_some()
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn every_colour_type_and_depth_decodes_as_pil_converts_to_rgb() {
        use png::{BitDepth::*, ColorType::*};
        let rgb: Vec<u8> = (0..24).map(|i| (i * 10 + 5) as u8).collect();
        let grey: Vec<u8> = (0..8).map(|i| (i * 30 + 3) as u8).collect();
        let grey_rgb: Vec<u8> = grey.iter().flat_map(|&g| [g, g, g]).collect();
        let alpha = |px: &[u8], n: usize| -> Vec<u8> {
            px.chunks(n)
                .flat_map(|p| [p, &[7u8][..]].concat())
                .collect()
        };
        let wide = |px: &[u8]| -> Vec<u8> { px.iter().flat_map(|&v| [v, 0x5a]).collect() };
        // 1-bit grey 10110010 / 01000001: expanded to 0 and 255.
        let bits: Vec<u8> = [1, 0, 1, 1, 0, 0, 1, 0]
            .iter()
            .flat_map(|&b| [b * 255; 3])
            .collect();
        // A palette of the eight colours of `rgb`, indices 0..8 at 4 bits.
        let cases: Vec<(&str, std::path::PathBuf, Vec<u8>)> = vec![
            ("rgb8", encoded(Rgb, Eight, &rgb, None, None), rgb.clone()),
            (
                "rgba8",
                encoded(Rgba, Eight, &alpha(&rgb, 3), None, None),
                rgb.clone(),
            ),
            (
                "rgb16",
                encoded(Rgb, Sixteen, &wide(&rgb), None, None),
                rgb.clone(),
            ),
            (
                "rgba16",
                encoded(Rgba, Sixteen, &wide(&alpha(&rgb, 3)), None, None),
                rgb.clone(),
            ),
            (
                "grey8",
                encoded(Grayscale, Eight, &grey, None, None),
                grey_rgb.clone(),
            ),
            (
                "grey-alpha8",
                encoded(GrayscaleAlpha, Eight, &alpha(&grey, 1), None, None),
                grey_rgb.clone(),
            ),
            (
                "grey16",
                encoded(Grayscale, Sixteen, &wide(&grey), None, None),
                grey_rgb.clone(),
            ),
            (
                "grey1",
                encoded(Grayscale, One, &[0b1011_0000, 0b0010_0000], None, None),
                bits,
            ),
            (
                "grey4",
                encoded(Grayscale, Four, &[0x0f, 0x10, 0x88, 0xf0], None, None),
                [0, 255, 17, 0, 136, 136, 255, 0]
                    .iter()
                    .flat_map(|&g| [g; 3])
                    .collect(),
            ),
            (
                "palette4",
                encoded(Indexed, Four, &[0x01, 0x23, 0x45, 0x67], Some(&rgb), None),
                rgb.clone(),
            ),
            (
                "palette8+tRNS",
                encoded(
                    Indexed,
                    Eight,
                    &[0, 1, 2, 3, 4, 5, 6, 7],
                    Some(&rgb),
                    Some(&[0, 128]),
                ),
                rgb.clone(),
            ),
            (
                "rgb8+tRNS",
                encoded(Rgb, Eight, &rgb, None, Some(&[0, 5, 0, 15, 0, 25])),
                rgb.clone(),
            ),
        ];
        for (name, path, want) in cases {
            let got = read_rgb8(&path);
            std::fs::remove_file(&path).unwrap();
            let (w, h, px) = got.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((w, h), (4, 2), "{name}");
            assert_eq!(px, want, "{name}");
        }
        assert_eq!(
            to_rgb8(GrayscaleAlpha, &[9, 1, 200, 0]).unwrap(),
            [9, 9, 9, 200, 200, 200]
        );
        assert_eq!(to_rgb8(Rgba, &[1, 2, 3, 0]).unwrap(), [1, 2, 3]);
    }

    #[test]
    fn a_header_past_the_size_limit_is_refused_before_decoding() {
        let mut png = encode_png(8, 8, &[0; 192], "", "", None).unwrap();
        png[16..20].copy_from_slice(&1_000_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&1_000_000u32.to_be_bytes());
        let path = std::env::temp_dir().join(format!("hiresfix-huge-{}.png", std::process::id()));
        std::fs::write(&path, png).unwrap();
        let err = read_rgb8(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.ends_with("its header says 1000000x1000000 px, over the 16384 px limit a side — resize it first"), "{err}");
    }
}

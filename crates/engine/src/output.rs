//! PNG output: A1111 `parameters` chunk plus the resolved profile, written to a temporary name
//! and linked into place so a taken name is never overwritten and no partial file is left.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub const PROFILE_CHUNK: &str = "hiresfix-profile";

/// Expands `{seed}` and `{n}` in the output template.
pub fn expand(template: &str, seed: i64, n: usize) -> PathBuf {
    PathBuf::from(
        template
            .replace("{seed}", &seed.to_string())
            .replace("{n}", &n.to_string()),
    )
}

/// The output template as it will be used, checked before anything runs: not empty, a folder
/// (an existing one, or a name ending in `/`) means `{seed}-{n}.png` inside it, the name ends in
/// `.png` (the only format written), and the folder it lands in can be written.
pub fn checked_template(template: &str) -> Result<String> {
    let trimmed = template.trim();
    if trimmed.is_empty() {
        bail!("output is empty — set it to a file name such as \"out/{{seed}}-{{n}}.png\"");
    }
    let is_folder = trimmed.ends_with('/') || Path::new(trimmed).is_dir();
    let template = match is_folder {
        true => format!("{}/{{seed}}-{{n}}.png", trimmed.trim_end_matches('/')),
        false => trimmed.to_owned(),
    };
    let png = Path::new(&template)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !png {
        bail!("output `{template}`: hiresfix writes PNG files — end the name in .png");
    }
    let first = expand(&template, 0, 0);
    let folder = first
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    check_writable(folder)?;
    Ok(template)
}

/// Whether files can be created in `folder`, or in the nearest folder above it that exists
/// (where the missing ones would be created). Leaves nothing behind.
fn check_writable(folder: &Path) -> Result<()> {
    let mut existing = folder;
    while !existing.exists() {
        existing = match existing.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => parent,
            None => Path::new("."),
        };
        if existing == Path::new(".") {
            break;
        }
    }
    if !existing.is_dir() {
        bail!(
            "output folder {}: {} is a file, not a folder — choose another output path",
            folder.display(),
            existing.display()
        );
    }
    let probe = existing.join(format!(".hiresfix-write-test-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!(
            "output folder {}: cannot write there ({e}) — choose another output path",
            existing.display()
        ),
    }
}

/// For an error in the middle of a batch: which files were written before it stopped.
pub fn written_so_far(written: &[PathBuf], batch: usize) -> String {
    if written.is_empty() {
        return "nothing was written".into();
    }
    let shown: Vec<String> = written
        .iter()
        .take(4)
        .map(|p| p.display().to_string())
        .collect();
    let more = match written.len() {
        n if n > 4 => format!(" and {} more", n - 4),
        _ => String::new(),
    };
    format!(
        "{} file(s) of a batch of {batch} were written before it stopped: {}{more}",
        written.len(),
        shown.join(", ")
    )
}

fn is_latin1(text: &str) -> bool {
    text.chars().all(|c| (c as u32) < 256 && c != '\0')
}

/// Encodes an RGB8 image with the two text chunks (an empty one is left out), and the stored latent (a zTXt chunk, see
/// [`crate::stored_latent`]) when given.
pub fn encode_png(
    width: u32,
    height: u32,
    rgb: &[u8],
    parameters: &str,
    profile: &str,
    latent: Option<&str>,
) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (key, text) in [("parameters", parameters), (PROFILE_CHUNK, profile)] {
            if text.is_empty() {
                continue;
            }
            if is_latin1(text) {
                encoder.add_text_chunk(key.to_owned(), text.to_owned())?;
            } else {
                encoder.add_itxt_chunk(key.to_owned(), text.to_owned())?;
            }
        }
        if let Some(latent) = latent {
            encoder.add_ztxt_chunk(crate::stored_latent::CHUNK.to_owned(), latent.to_owned())?;
        }
        let mut writer = encoder.write_header()?;
        writer.write_image_data(rgb)?;
        writer.finish()?;
    }
    Ok(bytes)
}

/// `png` with one more tEXt chunk (`key`: Latin-1 `text`) right after its header.
pub fn add_text_chunk(png: &[u8], key: &str, text: &str) -> Result<Vec<u8>> {
    const SIGNATURE: usize = 8;
    const IHDR: usize = 8 + 13 + 4; // length + type, 13 data bytes, CRC
    let keyword = (1..=79).contains(&key.len()) && is_latin1(key);
    if png.len() < SIGNATURE + IHDR
        || &png[..SIGNATURE] != b"\x89PNG\r\n\x1a\n"
        || &png[12..16] != b"IHDR"
        || !is_latin1(text)
        || !keyword
    {
        bail!("cannot add the {key} chunk: not a PNG this writer made, or the text is not Latin-1");
    }
    let mut data = Vec::with_capacity(key.len() + 1 + text.len());
    // tEXt is Latin-1: one byte per character (checked above), not UTF-8.
    data.extend(key.chars().map(|c| c as u8));
    data.push(0);
    data.extend(text.chars().map(|c| c as u8));
    let mut crc = crc32fast::Hasher::new();
    crc.update(b"tEXt");
    crc.update(&data);
    let at = SIGNATURE + IHDR;
    let mut out = Vec::with_capacity(png.len() + data.len() + 12);
    out.extend_from_slice(&png[..at]);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(b"tEXt");
    out.extend_from_slice(&data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out.extend_from_slice(&png[at..]);
    Ok(out)
}

/// Reads the text chunks of a PNG (tEXt, zTXt and iTXt).
pub fn read_text_chunks(path: &Path) -> Result<Vec<(String, String)>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    read_text_chunks_from(std::io::BufReader::new(file), &path.display().to_string())
}

/// Reads the text chunks (tEXt, zTXt and iTXt) of the PNG that `reader` holds; `shown`
/// names it in errors. Bounded: see [`crate::png_text`].
pub fn read_text_chunks_from<R: std::io::BufRead + std::io::Seek>(
    reader: R,
    shown: &str,
) -> Result<Vec<(String, String)>> {
    crate::png_text::read(reader, shown)
}

/// Writes `bytes` at `wanted`, or at `stem-1.ext`, `stem-2.ext`, ... if taken. Returns the path.
pub fn write_new_file(wanted: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let dir = wanted
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output folder {}", dir.display()))?;
    let stem = wanted
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let ext = wanted
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    let tmp = dir.join(format!(".{stem}.{}.tmp", std::process::id()));
    {
        let mut file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write in {}", dir.display()))?;
        file.write_all(bytes)
            .and_then(|_| file.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
    }
    let result = (0..10_000)
        .map(|i| {
            if i == 0 {
                wanted.with_file_name(format!("{stem}.{ext}"))
            } else {
                wanted.with_file_name(format!("{stem}-{i}.{ext}"))
            }
        })
        .find_map(|candidate| match std::fs::hard_link(&tmp, &candidate) {
            Ok(()) => Some(Ok(candidate)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
            Err(e) => Some(Err(e)),
        });
    let _ = std::fs::remove_file(&tmp);
    match result {
        Some(Ok(path)) => Ok(path),
        Some(Err(e)) => {
            Err(e).with_context(|| format!("cannot place the image in {}", dir.display()))
        }
        None => anyhow::bail!("no free file name for {} (10000 taken)", wanted.display()),
    }
}

/// Pixels of a PNG that is decoded (`finish`'s input): the largest side squared.
pub const MAX_PIXELS: u64 = crate::defaults::MAX_SIZE as u64 * crate::defaults::MAX_SIZE as u64;

/// Decodes a PNG of any colour type and bit depth as RGB8: `(width, height, pixels)`. As PIL's
/// `Image.convert("RGB")` (what A1111 does to an input): palette and low bit depths are
/// expanded, 16-bit samples keep their high byte, grey is copied to R, G and B, and alpha
/// (an alpha channel or a tRNS colour) is dropped, not composited. The header's size is
/// checked against [`crate::defaults::MAX_SIZE`] before anything is allocated.
pub fn read_rgb8(path: &Path) -> Result<(u32, u32, Vec<u8>)> {
    let shown = path.display();
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut file = std::io::BufReader::new(file);
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

    #[test]
    fn text_chunks_are_read_back_from_memory() {
        let png = encode_png(1, 1, &[0, 0, 0], "a cat\nSteps: 20", "seed = 1 # 猫", None).unwrap();
        let chunks = read_text_chunks_from(std::io::Cursor::new(png), "mem.png").unwrap();
        assert_eq!(
            chunks,
            [
                ("parameters".to_owned(), "a cat\nSteps: 20".to_owned()),
                (PROFILE_CHUNK.to_owned(), "seed = 1 # 猫".to_owned()),
            ]
        );
        let err = read_text_chunks_from(std::io::Cursor::new(b"GIF89a"), "mem.gif").unwrap_err();
        assert_eq!(err.to_string(), "mem.gif is not a readable PNG");
    }

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

    #[test]
    fn a_taken_name_gets_a_suffix() {
        let dir = std::env::temp_dir().join(format!("hiresfix-out-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = write_new_file(&dir.join("x.png"), b"one").unwrap();
        let b = write_new_file(&dir.join("x.png"), b"two").unwrap();
        assert_eq!(a, dir.join("x.png"));
        assert_eq!(b, dir.join("x-1.png"));
        assert_eq!(std::fs::read(&a).unwrap(), b"one");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

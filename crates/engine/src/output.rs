//! PNG output: A1111 `parameters` chunk plus the resolved profile, written to a temporary name
//! and linked into place so a taken name is never overwritten and no partial file is left.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub use crate::png_pixels::{read_rgb8, to_rgb8, MAX_PIXELS};

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

//! The text chunks of a PNG (tEXt, zTXt, iTXt), read with bounds: every path that reads PNG
//! metadata (`replay`, `finish`, `replay --to-profile`, the server's png-info, `batch`'s
//! resume check) goes through [`read`]. The chunks are walked by hand up to IEND: each text
//! chunk's CRC is checked (as PIL does: a bad one is a damaged file), compressed text is
//! inflated through a hard limit per chunk and per file, and the number of chunks is bounded,
//! so a 2 MiB file that inflates to gigabytes is refused after reading at most one limit's
//! worth.
use std::io::{BufRead, Read, Seek, SeekFrom};

use anyhow::{bail, Result};

use crate::stored_latent;

/// Inflated bytes of one text chunk (a profile or infotext is a few kB; prompts are at most
/// 20000 characters).
pub const MAX_TEXT_CHUNK: usize = 16 << 20;
/// Inflated bytes of all text chunks of one file, the stored latent's excepted (it is bounded
/// by the shape its own first lines declare, at most [`stored_latent::MAX_TEXT_LEN`]).
pub const MAX_TEXT_FILE: usize = 64 << 20;
/// Text chunks in one file.
pub const MAX_TEXT_CHUNKS: usize = 1_000;
/// Chunks of any kind in one file (a 16384² image written in 8 kB IDAT chunks has ~100,000).
pub const MAX_CHUNKS: usize = 1_000_000;

const SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

fn mib(n: usize) -> String {
    format!("{} MiB", n.div_ceil(1 << 20))
}

/// A keyword as shown in errors: Latin-1, at most 79 characters by the PNG spec (cut here too).
fn keyword_text(bytes: &[u8]) -> String {
    bytes.iter().take(79).map(|&b| b as char).collect()
}

/// The text chunks of the PNG `reader` holds, in file order; `shown` names it in errors.
pub fn read<R: BufRead + Seek>(mut reader: R, shown: &str) -> Result<Vec<(String, String)>> {
    let not_png = || anyhow::anyhow!("{shown} is not a readable PNG");
    let end = reader.seek(SeekFrom::End(0)).map_err(|_| not_png())?;
    reader.seek(SeekFrom::Start(0)).map_err(|_| not_png())?;
    let mut signature = [0u8; 8];
    if reader.read_exact(&mut signature).is_err() || &signature != SIGNATURE {
        bail!(not_png());
    }
    let mut at = 8u64;
    let mut out = Vec::new();
    let (mut chunks, mut inflated, mut latent_seen) = (0usize, 0usize, false);
    loop {
        if at == end && chunks > 0 {
            break; // no IEND: the text before the cut is still whole (PIL reads it too)
        }
        let mut head = [0u8; 8];
        if reader.read_exact(&mut head).is_err() {
            bail!("{shown} is not a readable PNG (truncated at byte {at} of {end})");
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as u64;
        let kind = [head[4], head[5], head[6], head[7]];
        let name = String::from_utf8_lossy(&kind).into_owned();
        if !kind.iter().all(u8::is_ascii_alphabetic) {
            bail!("{shown} is not a readable PNG (a chunk at byte {at} has no valid type)");
        }
        if chunks == 0 && &kind != b"IHDR" {
            bail!("{shown} is not a readable PNG (it does not start with IHDR)");
        }
        if len > i32::MAX as u64 || at + 12 + len > end {
            bail!("{shown} is not a readable PNG: chunk {name} at byte {at} claims {len} bytes, past the end of the file ({end} bytes) — it is truncated or damaged");
        }
        chunks += 1;
        if chunks > MAX_CHUNKS {
            bail!("{shown}: more than {MAX_CHUNKS} PNG chunks — not an image file any encoder writes; refused");
        }
        at += 12 + len;
        match &kind {
            b"IEND" => break,
            b"tEXt" | b"zTXt" | b"iTXt" => {}
            _ => {
                reader
                    .seek(SeekFrom::Current(len as i64 + 4))
                    .map_err(|_| not_png())?;
                continue;
            }
        }
        if out.len() >= MAX_TEXT_CHUNKS {
            bail!("{shown}: more than {MAX_TEXT_CHUNKS} PNG text chunks — not an image this tool or A1111 wrote; refused");
        }
        let start = at - 12 - len;
        // The keyword first: the stored latent's compressed size is bounded by its inflated
        // one (deflate grows incompressible data by a few bytes per 16 kB), any other by
        // MAX_TEXT_CHUNK's; nothing past that is read into memory.
        let mut data = Vec::new();
        (&mut reader).take(len.min(80)).read_to_end(&mut data)?;
        let Some(zero) = data.iter().position(|&b| b == 0) else {
            bail!("{shown}: PNG {name} chunk at byte {start} has no keyword of 1 to 79 bytes — the file is damaged");
        };
        let key = keyword_text(&data[..zero]);
        if zero == 0 {
            bail!("{shown}: PNG {name} chunk at byte {start} has an empty keyword — the file is damaged");
        }
        let latent = key == stored_latent::CHUNK && !latent_seen;
        let cap = match latent {
            true => stored_latent::MAX_TEXT_LEN,
            false => MAX_TEXT_CHUNK,
        };
        if len as usize > cap + (cap >> 10) + 1024 {
            bail!(
                "{shown}: PNG {name} chunk `{key}` is {} — past any text this tool reads; refused",
                mib(len as usize)
            );
        }
        (&mut reader)
            .take(len - data.len() as u64)
            .read_to_end(&mut data)?;
        let mut crc = [0u8; 4];
        if data.len() as u64 != len || reader.read_exact(&mut crc).is_err() {
            bail!("{shown} is not a readable PNG (truncated in chunk {name})");
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&kind);
        hasher.update(&data);
        if hasher.finalize() != u32::from_be_bytes(crc) {
            bail!("{shown}: PNG {name} chunk `{key}` at byte {start} has a bad CRC — the file is damaged");
        }
        let rest = &data[zero + 1..];
        let limit = |budget: usize| match latent {
            true => stored_latent::MAX_TEXT_LEN,
            false => MAX_TEXT_CHUNK.min(budget),
        };
        let budget = MAX_TEXT_FILE - inflated;
        let too_big = |limit: usize| {
            match limit < MAX_TEXT_CHUNK && !latent {
                true => anyhow::anyhow!("{shown}: PNG text chunks inflate past {} in all — not an image this tool or A1111 wrote; refused", mib(MAX_TEXT_FILE)),
                false => anyhow::anyhow!("{shown}: PNG text chunk `{key}` inflates past {} — not an image this tool or A1111 wrote; refused", mib(limit)),
            }
        };
        let text = match &kind {
            b"tEXt" => {
                if rest.len() > limit(budget) {
                    return Err(too_big(limit(budget)));
                }
                latin1(rest)
            }
            b"zTXt" => {
                let Some((&0, compressed)) = rest.split_first() else {
                    bail!("{shown}: PNG zTXt chunk `{key}` has an unknown compression method — the file is damaged");
                };
                let bytes = match latent {
                    true => inflate_latent(compressed, shown)?,
                    false => inflate(compressed, limit(budget), shown, &key)?
                        .ok_or_else(|| too_big(limit(budget)))?,
                };
                latin1(&bytes)
            }
            _ => {
                // flag, method, language\0, translated keyword\0, text
                let parsed = (|| {
                    let (&flag, rest) = rest.split_first()?;
                    let (&method, rest) = rest.split_first()?;
                    let lang = rest.iter().position(|&b| b == 0)?;
                    let rest = &rest[lang + 1..];
                    let translated = rest.iter().position(|&b| b == 0)?;
                    Some((flag, method, &rest[translated + 1..]))
                })();
                let Some((flag, method, body)) = parsed else {
                    bail!("{shown}: PNG iTXt chunk `{key}` is malformed — the file is damaged");
                };
                let bytes = match (flag, method) {
                    (0, _) if body.len() > limit(budget) => return Err(too_big(limit(budget))),
                    (0, _) => body.to_vec(),
                    (1, 0) => inflate(body, limit(budget), shown, &key)?
                        .ok_or_else(|| too_big(limit(budget)))?,
                    _ => bail!("{shown}: PNG iTXt chunk `{key}` has an unknown compression — the file is damaged"),
                };
                String::from_utf8_lossy(&bytes).into_owned()
            }
        };
        match latent {
            true => latent_seen = true,
            false => inflated += text.len(),
        }
        out.push((key, text));
    }
    Ok(out)
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// `compressed` (zlib) inflated, or `None` past `limit` bytes; memory never past `limit`.
fn inflate(compressed: &[u8], limit: usize, shown: &str, key: &str) -> Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::ZlibDecoder::new(compressed).take(limit as u64 + 1);
    if decoder.read_to_end(&mut out).is_err() {
        bail!("{shown}: PNG text chunk `{key}` does not inflate (bad zlib data) — the file is damaged");
    }
    Ok((out.len() <= limit).then_some(out))
}

/// The stored latent's text: its first lines declare its shape, which bounds the rest (a
/// chunk whose lines do not parse gets [`MAX_TEXT_CHUNK`]; decoding it then says what is wrong).
fn inflate_latent(compressed: &[u8], shown: &str) -> Result<Vec<u8>> {
    let key = stored_latent::CHUNK;
    let damaged = || {
        anyhow::anyhow!("{shown}: PNG text chunk `{key}` does not inflate (bad zlib data) — the file is damaged; finish it with --ignore-latent")
    };
    let mut decoder = flate2::read::ZlibDecoder::new(compressed);
    let mut head = Vec::new();
    (&mut decoder)
        .take(stored_latent::MAX_HEAD_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|_| damaged())?;
    let limit = match stored_latent::declared_text_len(&head) {
        Some(len) => len,
        None => MAX_TEXT_CHUNK,
    };
    let mut rest = decoder.take((limit + 1).saturating_sub(head.len()) as u64);
    rest.read_to_end(&mut head).map_err(|_| damaged())?;
    if head.len() > limit {
        bail!("{shown}: PNG text chunk `{key}` inflates past the {limit} bytes its shape line declares — not an image this tool wrote; refused");
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        [
            &(data.len() as u32).to_be_bytes()[..],
            kind,
            data,
            &crc.finalize().to_be_bytes(),
        ]
        .concat()
    }

    fn png(chunks: &[Vec<u8>]) -> Vec<u8> {
        let ihdr = chunk(b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0]);
        let mut out = SIGNATURE.to_vec();
        out.extend(ihdr);
        for c in chunks {
            out.extend(c);
        }
        out.extend(chunk(b"IEND", &[]));
        out
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn filler(n: usize) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        let block = vec![b'a'; 1 << 20];
        for _ in 0..n >> 20 {
            e.write_all(&block).unwrap();
        }
        e.finish().unwrap()
    }

    fn read_png(bytes: Vec<u8>) -> Result<Vec<(String, String)>> {
        read(Cursor::new(bytes), "x.png")
    }

    #[test]
    fn all_three_kinds_are_read_in_order() {
        let z = [&b"b\0\0"[..], &zlib(b"two")].concat();
        let i = [&b"c\0\x01\0en\0\0"[..], &zlib("三".as_bytes())].concat();
        let plain_i = b"d\0\0\0\0\0four".to_vec();
        let bytes = png(&[
            chunk(b"tEXt", b"a\0one\xe9"),
            chunk(b"zTXt", &z),
            chunk(b"iTXt", &i),
            chunk(b"iTXt", &plain_i),
        ]);
        let got = read_png(bytes).unwrap();
        let want = [("a", "oneé"), ("b", "two"), ("c", "三"), ("d", "four")];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_chunk_past_its_limit_is_refused_without_inflating_it_all() {
        let z = [&b"parameters\0\0"[..], &filler(MAX_TEXT_CHUNK + (1 << 20))].concat();
        let err = read_png(png(&[chunk(b"zTXt", &z)]))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "x.png: PNG text chunk `parameters` inflates past 16 MiB — not an image this tool or A1111 wrote; refused");
        // Five chunks under the per-chunk limit pass it in all.
        let fifteen = [&b"k\0\0"[..], &filler(15 << 20)].concat();
        let many: Vec<Vec<u8>> = (0..5).map(|_| chunk(b"zTXt", &fifteen)).collect();
        let err = read_png(png(&many)).unwrap_err().to_string();
        assert!(err.contains("inflate past 64 MiB in all"), "{err}");
    }

    #[test]
    fn damaged_chunks_are_refused() {
        let mut bad = chunk(b"tEXt", b"a\0b");
        *bad.last_mut().unwrap() ^= 1;
        let err = read_png(png(&[bad])).unwrap_err().to_string();
        assert!(err.contains("has a bad CRC"), "{err}");
        let mut long = png(&[chunk(b"tEXt", b"a\0b")]);
        long[33..37].copy_from_slice(&1000u32.to_be_bytes());
        let err = read_png(long).unwrap_err().to_string();
        assert!(err.contains("claims 1000 bytes, past the end"), "{err}");
        let z = [&b"k\0\0"[..], b"not zlib"].concat();
        let err = read_png(png(&[chunk(b"zTXt", &z)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not inflate"), "{err}");
        assert!(read_png(b"GIF89a".to_vec()).is_err());
    }

    #[test]
    fn the_stored_latent_is_bounded_by_its_declared_shape() {
        let head = "hiresfix-latent 1\npass 1\nshape 1 4 1 1\n";
        let exact = format!("{head}AAAAAAAAAAAAAAAAAAAAAA==");
        let z = [b"hiresfix-latent\0\0", &zlib(exact.as_bytes())[..]].concat();
        let got = read_png(png(&[chunk(b"zTXt", &z)])).unwrap();
        assert_eq!(got[0].1, exact);
        let long = format!("{head}{}", "A".repeat(1000));
        let z = [b"hiresfix-latent\0\0", &zlib(long.as_bytes())[..]].concat();
        let err = read_png(png(&[chunk(b"zTXt", &z)]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("inflates past the 64 bytes its shape line declares"),
            "{err}"
        );
    }
}

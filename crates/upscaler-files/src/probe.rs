//! What a model file is, from its header alone (no tensor data read): the keys and shapes of a
//! `.safetensors` header, or of a `.pth`/`.pt` state dict's pickle read by the restricted
//! reader of `torch-pickle` (which executes nothing and refuses any global but a tensor
//! state dict's), then [`arch::infer`]. A listing learns a file's scale this way, and a
//! pickle a tensor state dict would not hold is refused before anything else reads it.
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use torch_pickle::pickle::{self, Pickle};
use zip::{CompressionMethod, ZipArchive};

use crate::arch::{self, cut, Arch, Shapes};

/// The largest header read: a safetensors header or a state dict's pickle takes kilobytes.
const MAX_HEADER: u64 = 64 << 20;

type Check<T> = std::result::Result<T, String>;

/// Whether `path` is named as a PyTorch pickle (`.pth` / `.pt`).
pub fn is_pickle(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("pth") || e.eq_ignore_ascii_case("pt"))
}

/// The architecture of the model file at `path` (its scale, blocks, widths), or why it is not
/// one hiresfix runs (one line, without the file's name).
pub fn arch_of(path: &Path) -> Check<Arch> {
    let shapes = match is_pickle(path) {
        true => pickle_shapes(path)?,
        false => safetensors_shapes(path)?,
    };
    arch::infer(&shapes)
}

/// A torch-pickle error as one line for an upscaler file: its own reason, the convert wording
/// replaced by what it means here.
pub fn pickle_reason(e: &anyhow::Error) -> String {
    let text = format!("{e:#}").replace('\n', " ");
    let text = text
        .replace(
            " — only tensor state dicts convert (also under params_ema, params or state_dict)",
            " — an upscaler file holds only tensors (also under params_ema, params or state_dict)",
        )
        .replace(
            " — only tensor state dicts convert",
            " — hiresfix runs nothing a model file names and never loads this file: remove it, or get the model as .safetensors",
        );
    cut_line(&text)
}

/// `text` cut to 240 characters with an ellipsis (one line stays short).
fn cut_line(text: &str) -> String {
    match text.char_indices().nth(240) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

fn unreadable(e: impl std::fmt::Display) -> String {
    format!("cannot be read ({})", cut(&e.to_string()))
}

/// The shapes of a `.safetensors` header: 8 bytes of length, then JSON
/// `{name: {dtype, shape, data_offsets}, "__metadata__": {...}}`.
fn safetensors_shapes(path: &Path) -> Check<Shapes> {
    let damaged = |why: &str| {
        format!("not a readable safetensors file ({why}) — it is cut or damaged; download it again")
    };
    let mut file = File::open(path).map_err(unreadable)?;
    let len = file.metadata().map_err(unreadable)?.len();
    let mut head = [0u8; 8];
    file.read_exact(&mut head)
        .map_err(|_| damaged("shorter than its header"))?;
    let n = u64::from_le_bytes(head);
    if n > MAX_HEADER || n > len.saturating_sub(8) {
        return Err(damaged("its header claims more bytes than the file holds"));
    }
    let mut json = Vec::with_capacity(n as usize);
    file.take(n)
        .read_to_end(&mut json)
        .map_err(|_| damaged("its header ends early"))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&json).map_err(|_| damaged("its header is not a JSON object"))?;
    let mut shapes = Shapes::new();
    for (key, entry) in header {
        if key == "__metadata__" {
            continue;
        }
        let shape = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|dims| {
                dims.iter()
                    .map(|d| d.as_u64().and_then(|d| i64::try_from(d).ok()))
                    .collect::<Option<Vec<i64>>>()
            })
            .ok_or_else(|| damaged(&format!("tensor `{}` has no shape", cut(&key))))?;
        shapes.insert(key, shape);
    }
    Ok(shapes)
}

/// The shapes of a torch.save file's state dict, from its pickle only.
fn pickle_shapes(path: &Path) -> Check<Shapes> {
    let format = torch_pickle::sniff(path).map_err(|e| pickle_reason(&e))?;
    let pickle = match format {
        torch_pickle::Format::Zip => zip_pickle(path)?,
        torch_pickle::Format::Legacy => legacy_pickle(path)?,
    };
    state_dict_shapes(&pickle)
}

/// `<archive>/data.pkl` of torch's zip, unpickled (refusing what a state dict does not use).
fn zip_pickle(path: &Path) -> Check<Pickle> {
    let file = File::open(path).map_err(unreadable)?;
    let mut archive = ZipArchive::new(BufReader::new(file)).map_err(|e| {
        format!(
            "not a readable zip archive ({}) — the file is truncated or damaged; download it again",
            cut(&e.to_string())
        )
    })?;
    let name = archive
        .file_names()
        .find(|n| {
            n.strip_suffix("data.pkl")
                .is_some_and(|p| p.ends_with('/') && p.matches('/').count() == 1)
        })
        .map(str::to_owned)
        .ok_or("a zip without <archive>/data.pkl, not a torch.save checkpoint")?;
    let entry = archive
        .by_name(&name)
        .map_err(|e| format!("{}: {}", pickle::printable(&name), cut(&e.to_string())))?;
    if entry.compression() != CompressionMethod::Stored || entry.size() > MAX_HEADER {
        return Err(format!(
            "{} is compressed or too large — torch.save stores a small pickle uncompressed; save it again with torch.save",
            pickle::printable(&name)
        ));
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .take(MAX_HEADER)
        .read_to_end(&mut bytes)
        .map_err(|_| {
            "its pickle cannot be read — the file is truncated or damaged; download it again"
        })?;
    pickle::load(&bytes).map_err(|e| pickle_reason(&e))
}

/// The legacy stream's object pickle: the fourth, after the magic number, the protocol
/// version and sys_info (the storages follow it, unread here).
fn legacy_pickle(path: &Path) -> Check<Pickle> {
    let file = File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(MAX_HEADER)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    let mut pos = 0;
    let mut object = None;
    for what in ["magic number", "protocol version", "sys_info", "object"] {
        let p = pickle::load(&bytes[pos..])
            .map_err(|e| format!("legacy format, {what}: {}", pickle_reason(&e)))?;
        pos += p.len;
        object = Some(p);
    }
    object.ok_or_else(|| "legacy format without an object — the file is damaged".into())
}

/// The `(name, shape)`s of the state dict: the root dict, or the one under a wrapper (as
/// torch-pickle reads it, with its refusals).
fn state_dict_shapes(pickle: &Pickle) -> Check<Shapes> {
    let tensors = torch_pickle::state_dict(pickle).map_err(|e| pickle_reason(&e))?;
    Ok(tensors
        .into_iter()
        .map(|(name, t)| (name, t.size.clone()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn header(json: &str) -> Vec<u8> {
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        bytes
    }

    #[test]
    fn damaged_safetensors_headers_are_one_line_errors() {
        let err = |name: &str, bytes: &[u8]| arch_of(&file(name, bytes)).unwrap_err();
        assert!(err("short.safetensors", b"\x01\x02").contains("shorter than its header"));
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(err("huge.safetensors", &huge).contains("claims more bytes"));
        assert!(err("list.safetensors", &header("[1, 2]")).contains("not a JSON object"));
        assert!(
            err("shape.safetensors", &header(r#"{"a": {"shape": [-1]}}"#))
                .contains("tensor `a` has no shape")
        );
        assert!(err("empty.safetensors", &header(r#"{"__metadata__": {}}"#))
            .contains("holds no tensors"));
    }

    #[test]
    fn a_plain_pickle_and_a_non_checkpoint_are_refused() {
        let plain = arch_of(&file("plain.pth", b"\x80\x02}q\x00.")).unwrap_err();
        assert!(plain.contains("a plain pickle"), "{plain}");
        let text = arch_of(&file("text.pth", b"hello")).unwrap_err();
        assert!(text.contains("not a PyTorch checkpoint"), "{text}");
    }
}

//! Reading a PyTorch checkpoint (`torch.save`) as a state dict of tensors, executing nothing.
//! Both formats of torch's `serialization.py`: the zip of torch ≥ 1.6 (`<archive>/data.pkl`
//! plus one stored entry per storage, `<archive>/data/<key>`) and the legacy stream before it
//! (five pickles: magic number, protocol version, sys_info, the object, the storage keys; then
//! each storage as an 8-byte element count and its bytes). Every pickle goes through
//! [`pickle`], which refuses any global but the few a tensor state dict needs.
pub mod pickle;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tch::{Device, Kind, Tensor};
use zip::{CompressionMethod, ZipArchive};

use pickle::{printable, Dtype, Object, Pickle, Storage, TensorRef, Value};

/// The largest `data.pkl` read (a state dict's pickle takes kilobytes to a few megabytes).
const MAX_PICKLE: u64 = 256 << 20;
/// The tensors may take at most this many times the file's bytes: tied weights count twice,
/// but a crafted file must not expand one storage into terabytes of views.
const MAX_EXPANSION: u64 = 4;
/// The wrappers training code saves a state dict under, the preferred first (Real-ESRGAN's
/// files hold `params_ema`, and some `params` too).
const WRAPPERS: [&str; 3] = ["params_ema", "params", "state_dict"];
/// The legacy format's first pickle (`torch.serialization.MAGIC_NUMBER`) and its second.
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
const LEGACY_PROTOCOL: i64 = 1001;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Zip,
    Legacy,
}

/// Which torch format `path` is, from its first bytes; anything else is refused.
pub fn sniff(path: &Path) -> Result<Format> {
    let mut head = Vec::with_capacity(512);
    File::open(path)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .with_context(|| format!("cannot read {}", path.display()))?;
    // The legacy stream starts with PROTO 2 and the magic number as LONG1.
    const LEGACY_HEAD: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
    match &head[..] {
        [b'P', b'K', 3, 4, ..] | [b'P', b'K', 5, 6, ..] => Ok(Format::Zip),
        h if h.starts_with(LEGACY_HEAD) => Ok(Format::Legacy),
        h if h.get(257..262) == Some(b"ustar") => {
            bail!("a tar checkpoint of torch before 0.4 — load and save it again with torch ≥ 1.6")
        }
        h if h.starts_with(b"\x80") => bail!(
            "a plain pickle, not a torch.save checkpoint — only torch.save files of tensor state dicts convert"
        ),
        _ => bail!("not a PyTorch checkpoint (neither torch's zip nor its legacy format) — give a .pth/.pt written by torch.save"),
    }
}

/// The state dict in `path`: each tensor's name and a contiguous tensor, in the file's order.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Ok(read_checkpoint(path)?.0)
}

/// Text fields of a checkpoint kept beside its tensors, `(key, value)`.
pub type Notes = Vec<(String, String)>;

/// [`read_state_dict`] and the file's notes worth keeping as safetensors metadata: an A1111
/// embedding's `name`, `step`, `sd_checkpoint` and `sd_checkpoint_name` (those it sets).
pub fn read_checkpoint(path: &Path) -> Result<(Vec<(String, Tensor)>, Notes)> {
    let file_len = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let budget = file_len
        .saturating_mul(MAX_EXPANSION)
        .saturating_add(1 << 20);
    match sniff(path)? {
        Format::Zip => {
            let mut archive = ZipStorages::open(path, file_len)?;
            let pickle = archive.pickle()?;
            Ok((tensors(&pickle, &mut archive, budget)?, notes(&pickle)))
        }
        Format::Legacy => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let (pickle, mut storages) = legacy(&bytes)?;
            Ok((tensors(&pickle, &mut storages, budget)?, notes(&pickle)))
        }
    }
}

/// Where the bytes of the storages come from.
trait Storages {
    /// A 1-D tensor of the whole storage `storage.key`.
    fn storage(&mut self, storage: &Storage) -> Result<Tensor>;
}

/// The 1-D tensor of `numel` elements of `dtype` at the start of `bytes`.
fn storage_tensor(bytes: &[u8], numel: u64, dtype: Dtype) -> Result<Tensor> {
    let len = numel
        .checked_mul(dtype.size() as u64)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= bytes.len())
        .ok_or_else(|| anyhow!("holds fewer bytes than its {numel} elements of {dtype:?}"))?;
    let numel = i64::try_from(numel)?;
    Ok(Tensor::f_from_data_size(
        &bytes[..len],
        &[numel],
        kind(dtype),
    )?)
}

fn kind(dtype: Dtype) -> Kind {
    match dtype {
        Dtype::F64 => Kind::Double,
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::Bool => Kind::Bool,
    }
}

/// torch's zip: entries are stored (uncompressed), as `torch.save` writes them.
struct ZipStorages {
    archive: ZipArchive<BufReader<File>>,
    /// `<archive>/`, the folder every record is in.
    prefix: String,
    file_len: u64,
}

impl ZipStorages {
    fn open(path: &Path, file_len: u64) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let archive = ZipArchive::new(BufReader::new(file)).map_err(|e| {
            anyhow!("not a readable zip archive ({e}) — the file is truncated or damaged; download or save it again")
        })?;
        let prefix = archive
            .file_names()
            .filter_map(|n| n.strip_suffix("data.pkl"))
            .find(|p| p.ends_with('/') && p.matches('/').count() == 1)
            .map(str::to_owned)
            .ok_or_else(|| {
                anyhow!("a zip without <archive>/data.pkl, not a torch.save checkpoint — give a .pth/.pt written by torch.save")
            })?;
        let mut archive = ZipStorages {
            archive,
            prefix,
            file_len,
        };
        if archive.has("byteorder") && archive.entry("byteorder", 16)? != b"little" {
            bail!("its tensors are stored big-endian — load and save it again on a little-endian machine");
        }
        Ok(archive)
    }

    fn has(&self, record: &str) -> bool {
        let name = format!("{}{record}", self.prefix);
        self.archive.file_names().any(|n| n == name)
    }

    fn pickle(&mut self) -> Result<Pickle> {
        let bytes = self.entry("data.pkl", MAX_PICKLE)?;
        pickle::load(&bytes)
    }

    /// The bytes of `<archive>/<record>`, at most `max` of them; the zip crate checks the CRC.
    fn entry(&mut self, record: &str, max: u64) -> Result<Vec<u8>> {
        let name = format!("{}{record}", self.prefix);
        let entry = self
            .archive
            .by_name(&name)
            .map_err(|e| anyhow!("{} in the archive: {e}", printable(&name)))?;
        if entry.compression() != CompressionMethod::Stored {
            bail!(
                "{} is compressed ({}); torch.save stores entries uncompressed — save it again with torch.save",
                printable(&name),
                entry.compression()
            );
        }
        let size = entry.size();
        if size > max || size > self.file_len {
            bail!(
                "{} claims {size} bytes, more than the file holds — the file is damaged",
                printable(&name)
            );
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry.take(size).read_to_end(&mut bytes).map_err(|e| {
            anyhow!(
                "{} cannot be read ({e}) — the file is truncated or damaged; download or save it again",
                printable(&name)
            )
        })?;
        if bytes.len() as u64 != size {
            bail!(
                "{} ends early — the file is truncated; download or save it again",
                printable(&name)
            );
        }
        Ok(bytes)
    }
}

impl Storages for ZipStorages {
    fn storage(&mut self, storage: &Storage) -> Result<Tensor> {
        let bytes = self.entry(&format!("data/{}", storage.key), self.file_len)?;
        storage_tensor(&bytes, storage.numel, storage.dtype)
            .with_context(|| format!("storage {}", printable(&storage.key)))
    }
}

/// The legacy stream's storages: where each one's bytes start in the file, and its length.
struct LegacyStorages<'a> {
    bytes: &'a [u8],
    at: HashMap<String, (usize, u64)>,
}

impl Storages for LegacyStorages<'_> {
    fn storage(&mut self, storage: &Storage) -> Result<Tensor> {
        let key = printable(&storage.key);
        let &(start, numel) = self
            .at
            .get(&storage.key)
            .ok_or_else(|| anyhow!("storage {key} is not in the file — the file is damaged"))?;
        if numel < storage.numel {
            bail!(
                "storage {key} holds {numel} elements, not {} — the file is damaged",
                storage.numel
            );
        }
        storage_tensor(&self.bytes[start..], numel, storage.dtype)
            .with_context(|| format!("storage {key}"))
    }
}

/// The legacy stream: its object pickle, and where its storages lie in `bytes`.
fn legacy(bytes: &[u8]) -> Result<(Pickle, LegacyStorages<'_>)> {
    let mut pos = 0;
    let mut next = |what: &str| -> Result<Pickle> {
        let p = pickle::load(&bytes[pos..]).with_context(|| format!("legacy format, {what}"))?;
        pos += p.len;
        Ok(p)
    };
    let magic = next("magic number")?;
    let version = next("protocol version")?;
    let sys_info = next("sys_info")?;
    let object = next("object")?;
    let keys = next("storage keys")?;
    if !matches!(magic.root, Value::BigInt(LEGACY_MAGIC)) {
        bail!(
            "not a torch checkpoint (wrong magic number) — give a .pth/.pt written by torch.save"
        );
    }
    if !matches!(version.root, Value::Int(LEGACY_PROTOCOL)) {
        bail!("legacy torch format of an unknown protocol version — load and save it again with torch ≥ 1.6");
    }
    let little = sys_info
        .dict(&sys_info.root)
        .and_then(|d| d.get("little_endian"));
    if matches!(little, Some(Value::Bool(false))) {
        bail!(
            "its tensors are stored big-endian — load and save it again on a little-endian machine"
        );
    }
    let at = legacy_storages(bytes, pos, &object, &keys)?;
    Ok((object, LegacyStorages { bytes, at }))
}

/// Where each storage of the legacy stream starts and how many elements it has: from `pos`,
/// in the order of `keys`, each an 8-byte little-endian element count and then its bytes.
fn legacy_storages(
    bytes: &[u8],
    mut pos: usize,
    object: &Pickle,
    keys: &Pickle,
) -> Result<HashMap<String, (usize, u64)>> {
    let Some(Object::List(keys)) = keys.object(&keys.root) else {
        bail!("legacy format: the storage keys are not a list — the file is damaged");
    };
    let dtypes: HashMap<&str, Dtype> = object
        .storages()
        .map(|s| (s.key.as_str(), s.dtype))
        .collect();
    let truncated = |key: &str| {
        anyhow!(
            "legacy format: storage {} ends early — the file is truncated; download or save it again",
            printable(key)
        )
    };
    let mut at = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else {
            bail!("legacy format: a storage key that is not a string — the file is damaged");
        };
        let dtype = dtypes.get(&**key).ok_or_else(|| {
            anyhow!(
                "legacy format: storage {} is used by no tensor — the file is damaged",
                printable(key)
            )
        })?;
        let count = bytes.get(pos..pos + 8).ok_or_else(|| truncated(key))?;
        let numel = u64::from_le_bytes(count.try_into()?);
        let len = numel
            .checked_mul(dtype.size() as u64)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= bytes.len() - pos - 8)
            .ok_or_else(|| truncated(key))?;
        at.insert(key.to_string(), (pos + 8, numel));
        pos += 8 + len;
    }
    Ok(at)
}

/// The key an A1111 textual-inversion embedding's one tensor is written under (kohya's and
/// A1111's `.safetensors` embeddings use it).
pub const EMBEDDING_KEY: &str = "emb_params";

/// The state dict's `(name, tensor reference)`s: the root dict, or the one under a wrapper;
/// anything else in it is refused. An A1111 textual-inversion file (`string_to_param` holding
/// one tensor, `*`) gives that tensor as [`EMBEDDING_KEY`]; its other fields are not read.
pub fn state_dict(pickle: &Pickle) -> Result<Vec<(String, &TensorRef)>> {
    let root = pickle.dict(&pickle.root).ok_or_else(|| {
        anyhow!(
            "refused: the file holds {}, not a state dict — only tensor state dicts convert",
            pickle.describe(&pickle.root)
        )
    })?;
    if let Some(params) = root.get("string_to_param") {
        return embedding(pickle, params);
    }
    let dict = WRAPPERS
        .iter()
        .find_map(|w| root.get(w).and_then(|v| pickle.dict(v)))
        .unwrap_or(root);
    let mut found = Vec::with_capacity(dict.entries.len());
    for (key, value) in &dict.entries {
        let Value::Str(name) = key else {
            bail!(
                "refused: the state dict has {} as a key, not a name — only tensor state dicts convert",
                pickle.describe(key)
            );
        };
        match pickle.object(value) {
            Some(Object::Tensor(t)) => found.push((name.to_string(), t)),
            _ => bail!(
                "refused: `{}` is {}, not a tensor — only tensor state dicts convert (also under params_ema, params or state_dict)",
                printable(name),
                pickle.describe(value)
            ),
        }
    }
    if found.is_empty() {
        bail!("the state dict holds no tensors — there is nothing to convert");
    }
    Ok(found)
}

/// An A1111 embedding's text and number fields (none for other files).
fn notes(pickle: &Pickle) -> Notes {
    let Some(root) = pickle.dict(&pickle.root) else {
        return Vec::new();
    };
    if root.get("string_to_param").is_none() {
        return Vec::new();
    }
    ["name", "step", "sd_checkpoint", "sd_checkpoint_name"]
        .into_iter()
        .filter_map(|key| {
            let value = match root.get(key)? {
                Value::Str(s) => s.to_string(),
                Value::Int(n) => n.to_string(),
                _ => return None,
            };
            Some((key.to_owned(), value))
        })
        .collect()
}

/// The one tensor of an A1111 embedding's `string_to_param` (A1111 refuses more than one term).
fn embedding<'p>(pickle: &'p Pickle, params: &Value) -> Result<Vec<(String, &'p TensorRef)>> {
    let dict = pickle.dict(params).ok_or_else(|| {
        anyhow!(
            "refused: `string_to_param` is {}, not a dict of one tensor (a ParameterDict of torch 1.11: load and save it again with a newer torch)",
            pickle.describe(params)
        )
    })?;
    match dict.entries.as_slice() {
        [(_, value)] => match pickle.object(value) {
            Some(Object::Tensor(t)) => Ok(vec![(EMBEDDING_KEY.to_owned(), t)]),
            _ => bail!(
                "refused: the embedding's vector is {}, not a tensor",
                pickle.describe(value)
            ),
        },
        entries => bail!(
            "refused: `string_to_param` holds {} terms; an embedding file has one",
            entries.len()
        ),
    }
}

/// Every tensor of the state dict, each storage read once.
fn tensors(
    pickle: &Pickle,
    source: &mut dyn Storages,
    budget: u64,
) -> Result<Vec<(String, Tensor)>> {
    let mut bases: HashMap<&str, (Dtype, Tensor)> = HashMap::new();
    let mut total = 0u64;
    let mut out = Vec::new();
    for (name, t) in state_dict(pickle)? {
        let key = t.storage.key.as_str();
        if !bases.contains_key(key) {
            bases.insert(key, (t.storage.dtype, source.storage(&t.storage)?));
        }
        let (dtype, base) = &bases[key];
        if *dtype != t.storage.dtype {
            bail!(
                "storage {} is read as both {dtype:?} and {:?} — the file is damaged",
                printable(key),
                t.storage.dtype
            );
        }
        let tensor = view(base, t).with_context(|| format!("tensor `{}`", printable(&name)))?;
        total = total.saturating_add((tensor.numel() * t.storage.dtype.size()) as u64);
        if total > budget {
            bail!("refused: its tensors would take over {MAX_EXPANSION}× the file's size — views that overlap this much are not a state dict");
        }
        out.push((name, tensor));
    }
    Ok(out)
}

/// The strided view `t` of its storage (`base`), contiguous; checked to lie inside it.
fn view(base: &Tensor, t: &TensorRef) -> Result<Tensor> {
    let (start, len) = t.storage.view.unwrap_or((0, t.storage.numel));
    let inside = start
        .checked_add(len)
        .is_some_and(|end| end <= base.numel() as u64);
    let damaged =
        || anyhow!("its size, stride or offset do not fit its storage — the file is damaged");
    if !inside || t.size.len() != t.stride.len() {
        return Err(damaged());
    }
    if t.offset < 0 || t.size.iter().chain(&t.stride).any(|&n| n < 0) {
        return Err(damaged());
    }
    let numel = t
        .size
        .iter()
        .try_fold(1u64, |n, &s| n.checked_mul(s as u64))
        .ok_or_else(damaged)?;
    if numel == 0 {
        return Ok(Tensor::f_empty(&t.size[..], (base.kind(), Device::Cpu))?);
    }
    if numel > len {
        bail!("it has more elements than its storage (an expanded view) — save it with .contiguous() first");
    }
    // The last element a view reaches: offset + Σ (size − 1) · stride.
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset as u64, |at, (&n, &s)| {
            at.checked_add((n as u64 - 1).checked_mul(s as u64)?)
        })
        .ok_or_else(damaged)?;
    if last >= len {
        return Err(damaged());
    }
    let offset = i64::try_from(start + t.offset as u64)?;
    Ok(base
        .f_as_strided(&t.size[..], &t.stride[..], offset)?
        .f_contiguous()?)
}

//! A restricted pickle reader: it understands the protocol 2–5 opcodes a `torch.save`d state
//! dict uses and executes nothing. A global resolves only to one of the [`Global`]s (the torch
//! rebuild functions, the storage types, `collections.OrderedDict`); any other is refused by
//! name at the opcode that names it, so nothing a file asks for can run.
//!
//! Written here rather than taken from a crate: `serde-pickle` has no persistent ids (torch's
//! storages) and no hook to refuse a global by name, and candle's reader comes with candle. The
//! opcode meanings follow CPython's `Lib/pickle.py` (`_Unpickler`) and `Lib/pickletools.py`.
//!
//! Objects live in one arena and refer to each other by index: `BINGET` copies an index, never
//! a tree, lists and dicts are shared as Python shares them, and dropping the arena is flat
//! however deeply a crafted file nests. Every length read from the file is checked against the
//! bytes that remain before anything is allocated.
use std::collections::HashMap;
use std::rc::Rc;

use anyhow::{bail, Result};

/// At most this many values on the stack, entries in the memo, or objects built.
const MAX_STACK: usize = 1 << 20;
const MAX_MEMO: usize = 1 << 20;
const MAX_OBJECTS: usize = 1 << 20;
/// The longest string (a tensor name, a module path) a state dict needs, in bytes.
const MAX_STRING: usize = 1 << 20;
/// The most dimensions a tensor's size may have.
const MAX_DIMS: usize = 64;

/// The element type of a torch storage (`torch.FloatStorage`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    U8,
    Bool,
}

impl Dtype {
    fn from_storage(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => Dtype::F64,
            "FloatStorage" => Dtype::F32,
            "HalfStorage" => Dtype::F16,
            "BFloat16Storage" => Dtype::BF16,
            "LongStorage" => Dtype::I64,
            "IntStorage" => Dtype::I32,
            "ByteStorage" => Dtype::U8,
            "BoolStorage" => Dtype::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U8 | Dtype::Bool => 1,
        }
    }
}

/// The only globals a pickle may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    /// `torch._utils._rebuild_tensor(storage, offset, size, stride)` (torch < 0.4.1).
    RebuildTensor,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter(data, requires_grad, hooks)`.
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state(data, requires_grad, hooks, state)`.
    RebuildParameterWithState,
    Storage(Dtype),
}

impl Global {
    /// The global `module.name`, or the one-line refusal naming it.
    fn resolve(module: &str, name: &str) -> Result<Self> {
        Ok(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("torch", storage) => match Dtype::from_storage(storage) {
                Some(dtype) => Global::Storage(dtype),
                None => refuse_global(module, name)?,
            },
            _ => refuse_global(module, name)?,
        })
    }
}

fn refuse_global(module: &str, name: &str) -> Result<Global> {
    bail!(
        "refused: the pickle calls {}.{} — only tensor state dicts convert",
        printable(module),
        printable(name)
    )
}

/// A name from the file made safe for a one-line message: escaped and at most 80 characters.
pub fn printable(s: &str) -> String {
    s.chars().take(80).flat_map(char::escape_debug).collect()
}

pub type ObjId = usize;

/// A value on the stack or in a container; containers are [`Object`]s in the arena.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// A `LONG1` integer wider than 64 bits (the legacy format's magic number).
    BigInt(i128),
    Float(f64),
    Str(Rc<str>),
    Global(Global),
    Obj(ObjId),
}

/// A storage as torch's persistent id names it:
/// `('storage', storage_type, key, location, numel[, view_metadata])`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Storage {
    pub dtype: Dtype,
    pub key: String,
    /// Elements of the whole storage.
    pub numel: u64,
    /// The legacy format's storage views: `(offset, numel)` in elements of the storage.
    pub view: Option<(u64, u64)>,
}

/// What `_rebuild_tensor_v2` would build: a strided view of a storage (not validated here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorRef {
    pub storage: Storage,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

#[derive(Debug)]
pub enum Object {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Dict),
    Storage(Storage),
    Tensor(TensorRef),
}

/// A dict (plain or `OrderedDict`) in insertion order.
#[derive(Debug, Default)]
pub struct Dict {
    pub entries: Vec<(Value, Value)>,
    index: HashMap<Key, usize>,
}

/// The dict keys a state dict can have.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Key {
    None,
    Bool(bool),
    Int(i64),
    Str(Rc<str>),
}

impl Dict {
    fn insert(&mut self, key: Value, value: Value) -> Result<()> {
        let hashable = match &key {
            Value::None => Key::None,
            Value::Bool(b) => Key::Bool(*b),
            Value::Int(i) => Key::Int(*i),
            Value::Str(s) => Key::Str(s.clone()),
            _ => bail!("refused: a dict key that is not a string or an integer — only tensor state dicts convert"),
        };
        match self.index.get(&hashable) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(hashable, self.entries.len());
                self.entries.push((key, value));
            }
        }
        Ok(())
    }

    /// The value under the string key `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        let i = self.index.get(&Key::Str(name.into()))?;
        Some(&self.entries[*i].1)
    }
}

/// One unpickled object and the arena its containers live in.
#[derive(Debug)]
pub struct Pickle {
    objects: Vec<Object>,
    pub root: Value,
    /// Bytes read, up to and including `STOP` (the next pickle of a stream starts there).
    pub len: usize,
}

impl Pickle {
    pub fn object(&self, value: &Value) -> Option<&Object> {
        match value {
            Value::Obj(id) => self.objects.get(*id),
            _ => None,
        }
    }

    pub fn dict(&self, value: &Value) -> Option<&Dict> {
        match self.object(value) {
            Some(Object::Dict(d)) => Some(d),
            _ => None,
        }
    }

    /// Every storage a persistent id named.
    pub fn storages(&self) -> impl Iterator<Item = &Storage> {
        self.objects.iter().filter_map(|o| match o {
            Object::Storage(s) => Some(s),
            _ => None,
        })
    }

    /// What a value is, for messages: "a string", "a dict", ...
    pub fn describe(&self, value: &Value) -> &'static str {
        match value {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) | Value::BigInt(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Global(_) => "a class or function",
            Value::Obj(_) => match self.object(value) {
                Some(Object::Tuple(_)) => "a tuple",
                Some(Object::List(_)) => "a list",
                Some(Object::Dict(_)) => "a dict",
                Some(Object::Storage(_)) => "a bare storage",
                Some(Object::Tensor(_)) => "a tensor",
                None => "nothing",
            },
        }
    }
}

/// Reads one pickle from the start of `bytes` (which may go on past its `STOP`).
pub fn load(bytes: &[u8]) -> Result<Pickle> {
    let mut vm = Machine {
        bytes,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objects: Vec::new(),
    };
    loop {
        let op = vm.byte()?;
        if op == b'.' {
            let root = vm.pop()?;
            return Ok(Pickle {
                objects: vm.objects,
                root,
                len: vm.pos,
            });
        }
        vm.step(op)?;
    }
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objects: Vec<Object>,
}

fn truncated() -> anyhow::Error {
    anyhow::anyhow!("the pickle ends early — the file is truncated; download or save it again")
}

fn damaged(what: &str) -> anyhow::Error {
    anyhow::anyhow!("the pickle is damaged ({what}) — download or save the file again")
}

impl Machine<'_> {
    fn step(&mut self, op: u8) -> Result<()> {
        match op {
            0x80 => self.protocol()?,                            // PROTO
            0x95 => self.skip(8)?,                               // FRAME: we hold the whole pickle
            b'(' => self.mark()?,                                // MARK
            b'}' => self.push_object(Object::Dict(Dict::default()))?, // EMPTY_DICT
            b']' => self.push_object(Object::List(Vec::new()))?, // EMPTY_LIST
            b')' => self.push_object(Object::Tuple(Vec::new()))?, // EMPTY_TUPLE
            b't' => {
                let items = self.pop_mark()?;
                self.push_object(Object::Tuple(items))?
            }
            0x85..=0x87 => self.tuple_n(usize::from(op - 0x84))?, // TUPLE1/2/3
            b's' => self.setitem()?,
            b'u' => self.setitems()?,
            b'a' => self.append()?,
            b'e' => self.appends()?,
            b'N' => self.push(Value::None)?,
            0x88 => self.push(Value::Bool(true))?,  // NEWTRUE
            0x89 => self.push(Value::Bool(false))?, // NEWFALSE
            b'J' | b'K' | b'M' | 0x8a | b'G' => self.number(op)?,
            b'X' | 0x8c | 0x8d | b'U' | b'T' => self.string(op)?,
            b'q' | b'r' | 0x94 | b'h' | b'j' => self.memo_op(op)?,
            b'c' => self.global()?,
            0x93 => self.stack_global()?,
            b'R' => self.reduce()?,
            0x81 => self.newobj()?,
            b'b' => self.build()?,
            b'Q' => self.persistent_id()?,
            _ => bail!(
                "refused: pickle opcode 0x{op:02x} at byte {} is not one a tensor state dict uses — only tensor state dicts convert",
                self.pos - 1
            ),
        }
        Ok(())
    }

    // --- reading the opcode stream ---

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let bytes = self.bytes.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn skip(&mut self, n: usize) -> Result<()> {
        self.take(n).map(|_| ())
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A length read from the file, checked against what remains before any allocation.
    fn length(&mut self, width: usize) -> Result<usize> {
        let n = match width {
            1 => u64::from(self.byte()?),
            4 => u64::from(u32::from_le_bytes(self.array()?)),
            _ => u64::from_le_bytes(self.array()?),
        };
        let n = usize::try_from(n).map_err(|_| truncated())?;
        if n > MAX_STRING {
            bail!("refused: a string of {n} bytes in the pickle (at most {MAX_STRING}) — only tensor state dicts convert");
        }
        if n > self.bytes.len() - self.pos {
            return Err(truncated());
        }
        Ok(n)
    }

    // --- the stack, marks and arena ---

    fn push(&mut self, value: Value) -> Result<()> {
        if self.stack.len() >= MAX_STACK {
            bail!("refused: the pickle's stack grows past {MAX_STACK} values — only tensor state dicts convert");
        }
        self.stack.push(value);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(damaged("pop from an empty stack"));
        }
        self.stack
            .pop()
            .ok_or_else(|| damaged("pop from an empty stack"))
    }

    fn top(&self) -> Result<&Value> {
        self.stack.last().ok_or_else(|| damaged("an empty stack"))
    }

    fn mark(&mut self) -> Result<()> {
        if self.marks.len() >= MAX_STACK {
            bail!("refused: the pickle nests MARKs past {MAX_STACK} — only tensor state dicts convert");
        }
        self.marks.push(self.stack.len());
        Ok(())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self.marks.pop().ok_or_else(|| damaged("no MARK"))?;
        if mark > self.stack.len() {
            return Err(damaged("a MARK below the stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn new_object(&mut self, object: Object) -> Result<Value> {
        if self.objects.len() >= MAX_OBJECTS {
            bail!("refused: the pickle builds more than {MAX_OBJECTS} objects — only tensor state dicts convert");
        }
        self.objects.push(object);
        Ok(Value::Obj(self.objects.len() - 1))
    }

    fn push_object(&mut self, object: Object) -> Result<()> {
        let value = self.new_object(object)?;
        self.push(value)
    }

    fn object_mut(&mut self, value: &Value) -> Option<&mut Object> {
        match value {
            Value::Obj(id) => self.objects.get_mut(*id),
            _ => None,
        }
    }

    fn tuple_items(&self, value: &Value) -> Option<&[Value]> {
        match value {
            Value::Obj(id) => match self.objects.get(*id) {
                Some(Object::Tuple(items)) => Some(items),
                _ => None,
            },
            _ => None,
        }
    }

    // --- opcodes ---

    fn protocol(&mut self) -> Result<()> {
        match self.byte()? {
            2..=5 => Ok(()),
            v => bail!("refused: pickle protocol {v} (a state dict uses 2 to 5) — only tensor state dicts convert"),
        }
    }

    fn tuple_n(&mut self, n: usize) -> Result<()> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() < floor + n {
            return Err(damaged("a TUPLE past the stack"));
        }
        let items = self.stack.split_off(self.stack.len() - n);
        self.push_object(Object::Tuple(items))
    }

    fn number(&mut self, op: u8) -> Result<()> {
        let value = match op {
            b'J' => Value::Int(i32::from_le_bytes(self.array()?).into()),
            b'K' => Value::Int(self.byte()?.into()),
            b'M' => Value::Int(u16::from_le_bytes(self.array()?).into()),
            b'G' => Value::Float(f64::from_be_bytes(self.array()?)),
            _ => self.long1()?,
        };
        self.push(value)
    }

    /// `LONG1`: a little-endian two's-complement integer of up to 255 bytes (we take 16).
    fn long1(&mut self) -> Result<Value> {
        let n = usize::from(self.byte()?);
        let bytes = self.take(n)?;
        if n > 16 {
            bail!(
                "refused: an integer of {n} bytes in the pickle — only tensor state dicts convert"
            );
        }
        let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
        let mut wide = [if negative { 0xff } else { 0 }; 16];
        wide[..n].copy_from_slice(bytes);
        let value = i128::from_le_bytes(wide);
        Ok(match i64::try_from(value) {
            Ok(v) => Value::Int(v),
            Err(_) => Value::BigInt(value),
        })
    }

    fn string(&mut self, op: u8) -> Result<()> {
        let n = match op {
            0x8c | b'U' => self.length(1)?, // SHORT_BINUNICODE, SHORT_BINSTRING
            0x8d => self.length(8)?,        // BINUNICODE8
            _ => self.length(4)?,           // BINUNICODE, BINSTRING
        };
        let bytes = self.take(n)?;
        // Python 2's BINSTRING bytes are read as Latin-1, as `encoding="latin1"` does.
        let text: Rc<str> = match op {
            b'U' | b'T' => bytes
                .iter()
                .map(|&b| char::from(b))
                .collect::<String>()
                .into(),
            _ => std::str::from_utf8(bytes)
                .map_err(|_| damaged("a string that is not UTF-8"))?
                .into(),
        };
        self.push(Value::Str(text))
    }

    fn memo_op(&mut self, op: u8) -> Result<()> {
        match op {
            b'q' => {
                let i = self.byte()?.into();
                self.memo_put(i)
            }
            b'r' => {
                let i = u32::from_le_bytes(self.array()?);
                self.memo_put(i)
            }
            0x94 => self.memo_put(self.memo.len() as u32), // MEMOIZE
            _ => {
                let i = match op {
                    b'h' => self.byte()?.into(),
                    _ => u32::from_le_bytes(self.array()?),
                };
                let value = self
                    .memo
                    .get(&i)
                    .cloned()
                    .ok_or_else(|| damaged("a memo entry that was never stored"))?;
                self.push(value)
            }
        }
    }

    fn memo_put(&mut self, index: u32) -> Result<()> {
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&index) {
            bail!("refused: the pickle's memo grows past {MAX_MEMO} entries — only tensor state dicts convert");
        }
        let value = self.top()?.clone();
        self.memo.insert(index, value);
        Ok(())
    }

    fn setitem(&mut self) -> Result<()> {
        let value = self.pop()?;
        let key = self.pop()?;
        self.insert(vec![key, value])
    }

    fn setitems(&mut self) -> Result<()> {
        let items = self.pop_mark()?;
        if items.len() % 2 != 0 {
            return Err(damaged("SETITEMS with an odd number of items"));
        }
        self.insert(items)
    }

    /// Sets `key, value, key, value, ...` on the dict on top of the stack.
    fn insert(&mut self, items: Vec<Value>) -> Result<()> {
        let target = self.top()?.clone();
        let Some(Object::Dict(dict)) = self.object_mut(&target) else {
            return Err(damaged("SETITEM on something that is not a dict"));
        };
        let mut items = items.into_iter();
        while let (Some(key), Some(value)) = (items.next(), items.next()) {
            dict.insert(key, value)?;
        }
        Ok(())
    }

    fn append(&mut self) -> Result<()> {
        let item = self.pop()?;
        self.extend(vec![item])
    }

    fn appends(&mut self) -> Result<()> {
        let items = self.pop_mark()?;
        self.extend(items)
    }

    fn extend(&mut self, items: Vec<Value>) -> Result<()> {
        let target = self.top()?.clone();
        match self.object_mut(&target) {
            Some(Object::List(list)) => {
                list.extend(items);
                Ok(())
            }
            _ => Err(damaged("APPEND to something that is not a list")),
        }
    }

    fn global(&mut self) -> Result<()> {
        let module = self.line()?;
        let name = self.line()?;
        let global = Global::resolve(&module, &name)?;
        self.push(Value::Global(global))
    }

    /// A `GLOBAL` argument: text up to a newline.
    fn line(&mut self) -> Result<String> {
        let rest = &self.bytes[self.pos..];
        let end = rest
            .iter()
            .take(1024)
            .position(|&b| b == b'\n')
            .ok_or_else(|| match rest.len() < 1024 {
                true => truncated(),
                false => damaged("a GLOBAL name over 1024 bytes"),
            })?;
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(text)
    }

    fn stack_global(&mut self) -> Result<()> {
        let name = self.pop()?;
        let module = self.pop()?;
        let (Value::Str(module), Value::Str(name)) = (module, name) else {
            return Err(damaged("STACK_GLOBAL of something that is not a string"));
        };
        let global = Global::resolve(&module, &name)?;
        self.push(Value::Global(global))
    }

    fn reduce(&mut self) -> Result<()> {
        let args = self.pop()?;
        let callable = self.pop()?;
        let Some(args) = self.tuple_items(&args).map(<[Value]>::to_vec) else {
            return Err(damaged("REDUCE with arguments that are not a tuple"));
        };
        let result = match callable {
            Value::Global(global) => self.call(global, &args)?,
            _ => bail!("refused: the pickle calls something that is not a named global — only tensor state dicts convert"),
        };
        self.push(result)
    }

    fn call(&mut self, global: Global, args: &[Value]) -> Result<Value> {
        match (global, args) {
            (Global::OrderedDict, []) => self.new_object(Object::Dict(Dict::default())),
            (Global::RebuildTensor, [storage, offset, size, stride]) => {
                self.rebuild_tensor(storage, offset, size, stride)
            }
            (Global::RebuildTensorV2, [storage, offset, size, stride, _grad, _hooks])
            | (Global::RebuildTensorV2, [storage, offset, size, stride, _grad, _hooks, _]) => {
                self.rebuild_tensor(storage, offset, size, stride)
            }
            (Global::RebuildParameter, [data, _grad, _hooks])
            | (Global::RebuildParameterWithState, [data, _grad, _hooks, _]) => match self
                .objects
                .get(object_id(data))
            {
                Some(Object::Tensor(_)) => Ok(data.clone()),
                _ => Err(damaged("a parameter whose data is not a tensor")),
            },
            (Global::Storage(_), _) => bail!(
                "refused: the pickle constructs a storage directly — only tensor state dicts convert"
            ),
            (global, args) => Err(damaged(&format!(
                "{global:?} called with {} arguments",
                args.len()
            ))),
        }
    }

    fn rebuild_tensor(
        &mut self,
        storage: &Value,
        offset: &Value,
        size: &Value,
        stride: &Value,
    ) -> Result<Value> {
        let Some(Object::Storage(storage)) = self.objects.get(object_id(storage)) else {
            return Err(damaged(
                "a tensor rebuilt from something that is not a storage",
            ));
        };
        let (Value::Int(offset), Some(size), Some(stride)) =
            (offset, self.ints(size), self.ints(stride))
        else {
            return Err(damaged("a tensor's offset, size or stride is not integers"));
        };
        let tensor = TensorRef {
            storage: storage.clone(),
            offset: *offset,
            size,
            stride,
        };
        self.new_object(Object::Tensor(tensor))
    }

    /// A tuple (or list) of at most [`MAX_DIMS`] integers.
    fn ints(&self, value: &Value) -> Option<Vec<i64>> {
        let items = match self.objects.get(object_id(value))? {
            Object::Tuple(items) | Object::List(items) => items,
            _ => return None,
        };
        if items.len() > MAX_DIMS {
            return None;
        }
        items
            .iter()
            .map(|v| match v {
                Value::Int(i) => Some(*i),
                _ => None,
            })
            .collect()
    }

    fn newobj(&mut self) -> Result<()> {
        let args = self.pop()?;
        let class = self.pop()?;
        let empty = self.tuple_items(&args).is_some_and(<[Value]>::is_empty);
        match class {
            Value::Global(Global::OrderedDict) if empty => {
                self.push_object(Object::Dict(Dict::default()))
            }
            _ => bail!("refused: the pickle instantiates something other than an OrderedDict — only tensor state dicts convert"),
        }
    }

    /// `BUILD` sets attributes: an `OrderedDict`'s (a state dict's `_metadata`) are dropped.
    fn build(&mut self) -> Result<()> {
        let _state = self.pop()?;
        let target = self.top()?.clone();
        match self.object_mut(&target) {
            Some(Object::Dict(_)) => Ok(()),
            _ => bail!("refused: the pickle sets the state of something that is not a dict — only tensor state dicts convert"),
        }
    }

    fn persistent_id(&mut self) -> Result<()> {
        let pid = self.pop()?;
        let storage = self.storage(&pid).ok_or_else(|| {
            anyhow::anyhow!("refused: a persistent id that is not a torch storage — only tensor state dicts convert")
        })?;
        self.push_object(Object::Storage(storage))
    }

    /// `('storage', storage_type, key, location, numel[, view_metadata])`.
    fn storage(&self, pid: &Value) -> Option<Storage> {
        let items = self.tuple_items(pid)?;
        let (tag, dtype, key, numel, view) = match items {
            [tag, Value::Global(Global::Storage(d)), key, _location, Value::Int(n), rest @ ..] => {
                (tag, *d, key, *n, rest)
            }
            _ => return None,
        };
        let (Value::Str(tag), Value::Str(key)) = (tag, key) else {
            return None;
        };
        let view = match view {
            [] | [Value::None] => None,
            [metadata] => match self.tuple_items(metadata)? {
                [_view_key, Value::Int(offset), Value::Int(n)] => {
                    Some((u64::try_from(*offset).ok()?, u64::try_from(*n).ok()?))
                }
                _ => return None,
            },
            _ => return None,
        };
        if &**tag != "storage" {
            return None;
        }
        Some(Storage {
            dtype,
            key: key.to_string(),
            numel: u64::try_from(numel).ok()?,
            view,
        })
    }
}

/// The arena index of a value, or one past any arena for a non-object.
fn object_id(value: &Value) -> ObjId {
    match value {
        Value::Obj(id) => *id,
        _ => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `PROTO 2`, then `body`, then `STOP`.
    fn pickle(body: &[u8]) -> Vec<u8> {
        [&[0x80, 2][..], body, b"."].concat()
    }

    fn error(bytes: &[u8]) -> String {
        load(bytes).unwrap_err().to_string()
    }

    #[test]
    fn a_global_outside_the_allow_list_is_refused_by_name() {
        let evil = pickle(b"cos\nsystem\nX\x02\x00\x00\x00id\x85R");
        assert_eq!(
            error(&evil),
            "refused: the pickle calls os.system — only tensor state dicts convert"
        );
        let stacked = pickle(b"X\x08\x00\x00\x00builtinsX\x04\x00\x00\x00eval\x93");
        assert!(error(&stacked).contains("calls builtins.eval"));
        // Refused where it is named, even if it is never called.
        assert!(error(&pickle(b"ctorch\nload\n0N")).contains("calls torch.load"));
    }

    #[test]
    fn memo_entries_are_shared_not_copied() {
        // d = {}; d["a"] = [1]; the same list gets a 2 and goes under d["b"] too.
        let bytes = pickle(b"}q\x00X\x01\x00\x00\x00a]q\x01K\x01asX\x01\x00\x00\x00bh\x01K\x02as");
        let p = load(&bytes).unwrap();
        let d = p.dict(&p.root).unwrap();
        let (Some(a), Some(b)) = (d.get("a"), d.get("b")) else {
            panic!("keys a and b")
        };
        assert!(matches!((a, b), (Value::Obj(x), Value::Obj(y)) if x == y));
        let Some(Object::List(items)) = p.object(a) else {
            panic!("a list")
        };
        assert!(matches!(items[..], [Value::Int(1), Value::Int(2)]));
    }

    #[test]
    fn mark_and_tuple_collect_the_items_above_the_mark() {
        let p = load(&pickle(b"(K\x01K\x02X\x01\x00\x00\x00xtq\x00")).unwrap();
        let Some(Object::Tuple(items)) = p.object(&p.root) else {
            panic!("a tuple")
        };
        assert!(matches!(&items[..], [Value::Int(1), Value::Int(2), Value::Str(s)] if &**s == "x"));
        assert_eq!(p.len, 17);
        assert!(error(&pickle(b"K\x01t")).contains("no MARK"));
        // TUPLE2 may not reach below the innermost MARK.
        assert!(error(&pickle(b"K\x01(K\x02\x86")).contains("damaged"));
    }

    #[test]
    fn a_state_dict_entry_rebuilds_a_tensor_reference() {
        let bytes = pickle(
            b"}(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n\
              ((X\x07\x00\x00\x00storagectorch\nHalfStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ\
              K\x01K\x02K\x02\x86K\x02K\x01\x86\x89ccollections\nOrderedDict\n)RtRu",
        );
        let p = load(&bytes).unwrap();
        let w = p.dict(&p.root).unwrap().get("w").unwrap();
        let Some(Object::Tensor(t)) = p.object(w) else {
            panic!("a tensor")
        };
        let storage = Storage {
            dtype: Dtype::F16,
            key: "0".into(),
            numel: 6,
            view: None,
        };
        assert_eq!(t.storage, storage);
        assert_eq!(
            (t.offset, &t.size[..], &t.stride[..]),
            (1, &[2, 2][..], &[2, 1][..])
        );
    }

    #[test]
    fn truncated_or_oversized_input_fails_without_allocating() {
        assert!(error(b"").contains("ends early"));
        assert!(error(b"\x80\x02}X\x10\x00\x00\x00ab").contains("ends early"));
        assert!(error(b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff").contains("refused"));
        assert!(error(b"\x80\x02cos\nsys").contains("ends early"));
        assert!(error(b"\x80\x02h\x07.").contains("never stored"));
        assert!(error(b"\x80\x09.").contains("protocol 9"));
        assert!(error(b"\x80\x02i").contains("opcode 0x69"));
    }

    #[test]
    fn deep_nesting_is_flat_in_memory() {
        // Half a million nested 1-tuples: no recursion to build, describe or drop them.
        let body = [b")".as_slice(), &[0x85; 500_000]].concat();
        let p = load(&pickle(&body)).unwrap();
        assert_eq!(p.describe(&p.root), "a tuple");
    }

    #[test]
    fn long1_reads_the_legacy_magic_number() {
        let p = load(&pickle(b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19")).unwrap();
        assert!(matches!(p.root, Value::BigInt(0x1950a86a20f9469cfc6c)));
        let p = load(&pickle(b"\x8a\x02\x00\xff")).unwrap();
        assert!(matches!(p.root, Value::Int(-256)));
    }
}

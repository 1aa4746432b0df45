//! File helpers shared by the host's tests and the backend plugin's tests (which include
//! this file by path): std only, so it builds in both.
#![allow(dead_code)]
use std::path::Path;

/// A recursive copy of folder `from` at `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A safetensors file at `path` of zero-valued F16 tensors with these keys and shapes:
/// enough for detection, which reads headers only.
pub fn zero_safetensors(path: &Path, keys: &[(&str, &[i64])]) {
    let mut header = Vec::new();
    let mut offset = 0usize;
    for (key, shape) in keys {
        let bytes = 2 * shape.iter().product::<i64>() as usize;
        let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
        header.push(format!(
            "\"{key}\":{{\"dtype\":\"F16\",\"shape\":[{}],\"data_offsets\":[{offset},{}]}}",
            dims.join(","),
            offset + bytes
        ));
        offset += bytes;
    }
    let mut json = format!("{{{}}}", header.join(","));
    while json.len() % 8 != 0 {
        json.push(' '); // the format pads the header to 8 bytes
    }
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(json.as_bytes());
    file.resize(file.len() + offset, 0);
    std::fs::write(path, file).unwrap();
}

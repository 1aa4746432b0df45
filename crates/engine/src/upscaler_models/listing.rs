//! What the upscaler folders offer, as `/sdapi/v1/upscalers` and `/realesrgan-models` list
//! it: every A1111 name (with the file it maps to when present) and every other model file by
//! its stem, each with its scale read from the file's header (the pixel plugin's
//! `models::probe`: shapes only, a pickle through the restricted reader, nothing executed) —
//! or why it is refused.
use std::path::PathBuf;

use super::a1111::{self, Known};
use super::probe::probe;
use super::{scan, ModelFile};

/// One upscaler offered by the model folders.
#[derive(Clone, Debug, PartialEq)]
pub struct Listed {
    /// The name a request uses: A1111's, else the file's stem.
    pub name: String,
    /// A1111's upscaler kind ("RealESRGAN", "ESRGAN", "SwinIR", ...).
    pub kind: &'static str,
    /// The file, when one is in the folders.
    pub path: Option<PathBuf>,
    /// Where A1111 downloads it from (A1111 names only).
    pub url: Option<&'static str>,
    /// From the file's architecture; A1111's for a name without a file; `None` when refused.
    pub scale: Option<i64>,
    /// Why it cannot be used (one line), when it cannot.
    pub refused: Option<String>,
}

/// Every A1111 name, then every other model file by stem; sorted by name as A1111 sorts.
pub fn list(dirs: &[PathBuf]) -> Vec<Listed> {
    let files = scan(dirs);
    let mut listed: Vec<Listed> = a1111::KNOWN
        .iter()
        .map(|known| {
            let file = files
                .iter()
                .find(|f| a1111::by_stem(&f.stem).is_some_and(|k| k.name == known.name));
            of_known(known, file)
        })
        .collect();
    for file in files.iter().filter(|f| a1111::by_stem(&f.stem).is_none()) {
        let (scale, refused) = match probe(&file.path) {
            Ok(scale) => (Some(scale), None),
            Err(why) => (None, Some(why)),
        };
        listed.push(Listed {
            name: file.stem.clone(),
            kind: "ESRGAN",
            path: Some(file.path.clone()),
            url: None,
            scale,
            refused,
        });
    }
    listed.sort_by_key(|l| l.name.to_lowercase());
    listed
}

fn of_known(known: &'static Known, file: Option<&ModelFile>) -> Listed {
    let (scale, refused) = match (known.refusal(), file) {
        (Some(why), _) => (Some(known.scale), Some(why)),
        (None, None) => (Some(known.scale), None),
        (None, Some(file)) => match probe(&file.path) {
            Ok(scale) => (Some(scale), None),
            Err(why) => (None, Some(why)),
        },
    };
    Listed {
        name: known.name.to_owned(),
        kind: known.kind,
        path: file.map(|f| f.path.clone()),
        url: Some(known.url),
        scale,
        refused,
    }
}

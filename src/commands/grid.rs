//! `hiresfix grid PROFILE --x key=v1,v2 [--y key=...]`: one image per combination, all with
//! the profile's seed, models loaded once; each cell's PNG and a labelled contact sheet.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::{base_dir, load_profile, print_written, registry_for, warn_refused};
use crate::generate::render_one;
use crate::limits::MAX_GRID_CELLS;
use crate::models::Models;
use crate::output;
use crate::sheet;

pub struct Args {
    pub profile: PathBuf,
    pub x: String,
    pub y: Option<String>,
    pub sets: Vec<String>,
    pub output: Option<String>,
}

/// One axis: a dotted profile key and the values it takes.
#[derive(Debug)]
struct Axis {
    key: String,
    values: Vec<String>,
}

impl Axis {
    fn parse(flag: &str, text: &str) -> Result<Self> {
        let (key, values) = text.split_once('=').ok_or_else(|| {
            anyhow!("{flag} {text}: expected key=v1,v2,..., e.g. {flag} pass.2.denoise=0.3,0.45")
        })?;
        let values = split_values(values);
        if key.trim().is_empty() || values.iter().any(String::is_empty) {
            bail!("{flag} {text}: a key and non-empty values are needed, e.g. {flag} cfg=5,7");
        }
        Ok(Self {
            key: key.trim().to_owned(),
            values,
        })
    }

    fn set(&self, i: usize) -> String {
        format!("{}={}", self.key, self.values[i])
    }
}

/// `v1,v2,"a, b"`: commas split values except inside double quotes (kept, so that a quoted
/// value stays a TOML string).
fn split_values(text: &str) -> Vec<String> {
    let mut values = vec![String::new()];
    let mut quoted = false;
    for ch in text.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                values.last_mut().unwrap().push(ch);
            }
            ',' if !quoted => values.push(String::new()),
            _ => values.last_mut().unwrap().push(ch),
        }
    }
    values.iter().map(|v| v.trim().to_owned()).collect()
}

pub fn run(args: &Args, quiet: bool) -> Result<()> {
    let x = Axis::parse("--x", &args.x)?;
    let y = args
        .y
        .as_deref()
        .map(|y| Axis::parse("--y", y))
        .transpose()?;
    let mut base = load_profile(&args.profile, &args.sets)?;
    if base.seed == -1 {
        base.seed = crate::job::random_seed(); // one seed for every cell
    }
    if base.subseed == -1 && base.subseed_strength > 0.0 {
        base.subseed = crate::job::random_seed(); // and one variation seed
    }
    base.batch = 1;
    let base_path = base_dir(&args.profile);
    let sheet_path = args.output.clone().unwrap_or_else(|| "grid.png".into());
    let sheet_path = output::checked_template(&sheet_path)?;
    let rows = y.as_ref().map_or(1, |y| y.values.len());
    let cells = (rows as u64).saturating_mul(x.values.len() as u64);
    if cells > MAX_GRID_CELLS {
        bail!("--x/--y: {} × {rows} = {cells} grid cells (at most {MAX_GRID_CELLS}) — use fewer values, or several grids", x.values.len());
    }
    // Every cell's profile first: a bad value fails before anything loads.
    let mut profiles = Vec::new();
    for r in 0..rows {
        for c in 0..x.values.len() {
            let mut sets = vec![x.set(c)];
            sets.extend(y.as_ref().map(|y| y.set(r)));
            let profile = base
                .with_overrides(&sets)
                .with_context(|| cell_name(&x, y.as_ref(), c, r))?;
            profiles.push(profile);
        }
    }
    let registry = registry_for(&base, &base_path);
    let terminal = crate::terminal::Terminal::new(quiet);
    let mut models = Models::observed(&registry, &terminal);
    let mut seen = std::collections::HashSet::new(); // lint lines printed once for all cells
    let mut written = Vec::new();
    let mut cells: Vec<Vec<_>> = vec![Vec::new(); rows];
    for (i, profile) in profiles.into_iter().enumerate() {
        let (r, c) = (i / x.values.len(), i % x.values.len());
        if !quiet {
            eprintln!(
                "cell {}/{}: {}",
                i + 1,
                rows * x.values.len(),
                cell_name(&x, y.as_ref(), c, r)
            );
        }
        let path = cell_path(Path::new(&sheet_path), c, r);
        let (back, file, rgb) = render_one(
            profile,
            &registry,
            &base_path,
            models,
            &path,
            (quiet, &mut seen),
        )
        .with_context(|| cell_name(&x, y.as_ref(), c, r))?;
        models = back;
        written.push(file);
        cells[r].push(rgb);
    }
    let columns: Vec<String> = (0..x.values.len()).map(|c| x.set(c)).collect();
    let row_labels: Vec<String> = y
        .as_ref()
        .map_or(Vec::new(), |y| (0..rows).map(|r| y.set(r)).collect());
    let sheet = sheet::compose(&cells, &columns, &row_labels);
    let mut description = format!("hiresfix grid, seed {}\nx: {}", base.seed, args.x);
    if let Some(y) = &args.y {
        description.push_str(&format!("\ny: {y}"));
    }
    let profile =
        toml::to_string(&base.clone().untrusted()).context("cannot encode the profile")?;
    let png = output::encode_png(
        sheet.width,
        sheet.height,
        &sheet.rgb,
        &description,
        &profile,
        None,
    )?;
    written.push(output::write_new_file(
        &output::expand(&sheet_path, base.seed, 0),
        &png,
    )?);
    print_written(&written);
    warn_refused(&registry);
    Ok(())
}

fn cell_name(x: &Axis, y: Option<&Axis>, c: usize, r: usize) -> String {
    match y {
        Some(y) => format!("grid cell {}, {}", x.set(c), y.set(r)),
        None => format!("grid cell {}", x.set(c)),
    }
}

/// `grid.png` → `grid-x1-y2.png` (1-based).
fn cell_path(sheet: &Path, c: usize, r: usize) -> String {
    let stem = sheet
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "grid".into());
    sheet
        .with_file_name(format!("{stem}-x{}-y{}.png", c + 1, r + 1))
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_values_split_outside_quotes() {
        let axis = Axis::parse("--x", r#"prompt="a cat, red","a dog",plain"#).unwrap();
        assert_eq!(axis.key, "prompt");
        assert_eq!(axis.values, [r#""a cat, red""#, r#""a dog""#, "plain"]);
        assert_eq!(axis.set(0), r#"prompt="a cat, red""#);
        let err = Axis::parse("--y", "cfg").unwrap_err().to_string();
        assert!(err.contains("expected key=v1,v2"), "{err}");
        assert!(Axis::parse("--x", "cfg=5,,7").is_err());
        assert_eq!(cell_path(Path::new("out/g.png"), 0, 2), "out/g-x1-y3.png");
    }
}

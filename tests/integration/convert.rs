//! `hiresfix convert`: torch.save checkpoints become safetensors files holding exactly the
//! tensors torch itself loads, and a pickle that names any other global is refused by name
//! with nothing run and nothing written.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::*;
use host_api::tch::{Kind, Tensor};

fn upscalers() -> PathBuf {
    repo().join("tests/data/upscalers/models")
}

fn fixtures() -> PathBuf {
    repo().join("tests/data/convert")
}

/// `hiresfix convert` in the scratch folder.
fn convert(scratch: &Scratch, args: &[&str]) -> Output {
    let args = [&["convert"], args].concat();
    hiresfix(&scratch.0, &args, &[])
}

/// A copy of `source` in the scratch folder, so the default output lands there too.
fn copy_in(scratch: &Scratch, source: &Path) -> PathBuf {
    let path = scratch.path(source.file_name().unwrap().to_str().unwrap());
    std::fs::copy(source, &path).unwrap();
    path
}

/// The same names, dtypes, shapes and bytes.
fn assert_same_tensors(written: &Path, expected: &Path) {
    let sorted = |path: &Path| {
        let mut tensors = Tensor::read_safetensors(path).unwrap();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        tensors
    };
    let (got, want) = (sorted(written), sorted(expected));
    let names = |t: &[(String, Tensor)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want), "{}", written.display());
    for ((name, a), (_, b)) in got.iter().zip(&want) {
        assert_eq!(a.kind(), b.kind(), "{name}");
        assert_eq!(a.size(), b.size(), "{name}");
        let bytes = |t: &Tensor| t.reshape([-1]).view_dtype(Kind::Uint8);
        assert!(bytes(a).equal(&bytes(b)), "{name}: values differ");
    }
}

/// The one line on stderr of a failed run, checked: exit 1, `error: ` and under 300 characters.
fn refusal(out: &Output) -> String {
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].chars().count() < 300,
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    lines[0].to_string()
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    found.sort();
    found
}

#[test]
fn each_published_upscaler_layout_converts_to_the_tensors_torch_loads() {
    let scratch = Scratch::new("convert-upscalers");
    for name in [
        "esrgan-old-x4",
        "realesrgan-x4",
        "realesrgan-x2",
        "compact-x4",
    ] {
        let model = copy_in(&scratch, &upscalers().join(format!("{name}.pth")));
        let out = convert(&scratch, &[model.to_str().unwrap()]);
        let written = scratch.path(&format!("{name}.safetensors"));
        assert_eq!(stdout_lines(&out), [written.display().to_string()]);
        assert_same_tensors(&written, &upscalers().join(format!("{name}.safetensors")));
    }
}

#[test]
fn a_params_ema_wrapper_is_unwrapped() {
    let scratch = Scratch::new("convert-params-ema");
    let model = upscalers().join("realesrgan-x4-params-ema.pth");
    let written = scratch.path("x4.safetensors");
    let out = convert(&scratch, &[model.to_str().unwrap(), "-o", "x4.safetensors"]);
    assert_eq!(stdout_lines(&out), ["x4.safetensors"]);
    assert_same_tensors(&written, &upscalers().join("realesrgan-x4.safetensors"));
}

#[test]
fn every_dtype_view_and_format_converts_exactly() {
    // mixed.pth also holds other tensors under `params`: params_ema is preferred.
    let scratch = Scratch::new("convert-mixed");
    for name in ["mixed", "mixed-legacy", "mixed-protocol4"] {
        let model = fixtures().join(format!("{name}.pth"));
        let written = scratch.path(&format!("{name}.safetensors"));
        let out = convert(
            &scratch,
            &[model.to_str().unwrap(), "-o", written.to_str().unwrap()],
        );
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_same_tensors(&written, &fixtures().join("mixed.safetensors"));
    }
}

#[test]
fn a_pickle_naming_any_other_global_is_refused_by_name_and_runs_nothing() {
    let scratch = Scratch::new("convert-evil");
    for (name, global) in [
        ("evil-os-system", "os.system"),
        ("evil-builtins-eval", "builtins.eval"),
    ] {
        let model = copy_in(&scratch, &upscalers().join(format!("{name}.pth")));
        let before = files_in(&scratch.0);
        let line = refusal(&convert(&scratch, &[model.to_str().unwrap()]));
        let expected = format!(
            "{name}.pth: refused: the pickle calls {global} — only tensor state dicts convert; nothing was written"
        );
        assert!(line.ends_with(&expected), "{line}");
        assert_eq!(files_in(&scratch.0), before);
    }
    assert!(!Path::new("/tmp/hiresfix-pwned").exists());
}

#[test]
fn a_state_dict_holding_more_than_tensors_is_refused() {
    let scratch = Scratch::new("convert-nested");
    let model = copy_in(&scratch, &fixtures().join("nested.pth"));
    let line = refusal(&convert(&scratch, &[model.to_str().unwrap()]));
    assert!(
        line.contains("refused: `config` is a dict, not a tensor"),
        "{line}"
    );
    assert_eq!(files_in(&scratch.0), [model]);
}

#[test]
fn a_truncated_checkpoint_is_refused_cleanly() {
    let scratch = Scratch::new("convert-truncated");
    for name in ["compact-x4", "mixed-legacy"] {
        let source = match name {
            "compact-x4" => upscalers().join("compact-x4.pth"),
            _ => fixtures().join("mixed-legacy.pth"),
        };
        let bytes = std::fs::read(source).unwrap();
        let model = scratch.path("cut.pth");
        std::fs::write(&model, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let line = refusal(&convert(&scratch, &["cut.pth"]));
        assert!(line.contains("truncated"), "{name}: {line}");
        assert_eq!(files_in(&scratch.0), [model]);
    }
}

#[test]
fn an_existing_output_is_never_overwritten() {
    let scratch = Scratch::new("convert-existing");
    let model = copy_in(&scratch, &upscalers().join("compact-x4.pth"));
    let existing = scratch.write("compact-x4.safetensors", "keep me");
    let line = refusal(&convert(&scratch, &[model.to_str().unwrap()]));
    assert!(
        line.contains("compact-x4.safetensors exists — choose another name with -o or remove it"),
        "{line}"
    );
    assert_eq!(std::fs::read_to_string(existing).unwrap(), "keep me");
    assert_eq!(files_in(&scratch.0).len(), 2);
}

/// Every prefix of a file and single-byte changes all through it end in an error or a state
/// dict, never a panic or an abort (the reader's own fuzzing in miniature).
#[test]
fn damaged_files_give_errors_never_panics() {
    let scratch = Scratch::new("convert-damaged");
    let path = scratch.path("damaged.pth");
    for source in [
        upscalers().join("compact-x4.pth"),
        fixtures().join("mixed-legacy.pth"),
        fixtures().join("mixed-protocol4.pth"),
    ] {
        let good = std::fs::read(&source).unwrap();
        let step = (good.len() / 150).max(1);
        for cut in (0..good.len()).step_by(step) {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert!(hiresfix::convert::read_state_dict(&path).is_err(), "{cut}");
        }
        for at in (0..good.len()).step_by(step) {
            for byte in [0x00, 0xff, b'c', b'R', 0x8d] {
                let mut bad = good.clone();
                bad[at] = byte;
                std::fs::write(&path, &bad).unwrap();
                let _ = hiresfix::convert::read_state_dict(&path);
            }
        }
    }
}

//! Preview then finish, replay, A1111 import, grids and batches: what a user does around one
//! generation, each checked against the plain one-shot run it must equal.

use std::path::Path;

use crate::common::*;
use hiresfix::infotext;
use hiresfix::output::{encode_png, read_rgb8};
use hiresfix::profile::Profile;

/// `tiny_profile` plus a third pass (32 → 64 → 96 px).
fn three_passes(scratch: &Scratch) -> std::path::PathBuf {
    let mut text = tiny_profile(&tiny_ldm(), "", "", "upscaler = \"latent-bicubic\"");
    text.push_str("\n[[pass]]\nscale = 1.5\nsteps = 2\ndenoise = 0.4\nsampler = \"dpmpp_2m\"\n");
    scratch.write("p.toml", &text)
}

fn run_ok(scratch: &Scratch, args: &[&str]) -> Vec<String> {
    stdout_lines(&hiresfix(&scratch.0, args, &[]))
}

fn pixels(scratch: &Scratch, rel: &str) -> (u32, u32, Vec<u8>) {
    read_rgb8(&scratch.path(rel)).unwrap()
}

#[test]
fn preview_then_finish_equals_the_one_shot_run() {
    let scratch = Scratch::new("finish");
    let p = three_passes(&scratch);
    let p = p.to_str().unwrap();
    run_ok(&scratch, &["generate", p, "-o", "full.png"]);
    run_ok(&scratch, &["generate", p, "--seed", "8", "-o", "full8.png"]);
    let previews = run_ok(
        &scratch,
        &[
            "generate",
            p,
            "--passes",
            "1",
            "--batch",
            "2",
            "-o",
            "pre-{n}.png",
        ],
    );
    assert_eq!(previews, ["pre-0.png", "pre-1.png"]);
    let (w, h, _) = pixels(&scratch, "pre-0.png");
    assert_eq!((w, h), (32, 32), "a preview is pass 1's image");
    assert!(chunk(&scratch.path("pre-0.png"), "hiresfix-latent")
        .starts_with("hiresfix-latent 1\npass 1\nshape 1 4 16 16\n"));
    let params = infotext::parse(&chunk(&scratch.path("pre-1.png"), "parameters"));
    assert_eq!(params.get("Seed"), Some("8"));
    assert_eq!(
        params.get("Hires upscale"),
        None,
        "the preview's infotext describes pass 1 only"
    );

    // Default output: beside the image.
    assert_eq!(
        run_ok(&scratch, &["finish", "pre-0.png"]),
        ["pre-0-finished.png"]
    );
    let full = pixels(&scratch, "full.png");
    assert_eq!(full.0, 96);
    assert!(
        full == pixels(&scratch, "pre-0-finished.png"),
        "finish differs from the one-shot run"
    );
    assert_eq!(
        chunk(&scratch.path("full.png"), "parameters"),
        chunk(&scratch.path("pre-0-finished.png"), "parameters")
    );
    run_ok(&scratch, &["finish", "pre-1.png", "-o", "fin8.png"]);
    assert!(
        pixels(&scratch, "full8.png") == pixels(&scratch, "fin8.png"),
        "image 1 of the batch is seed 8"
    );

    // A stop in the middle: pass 2 stored, finished to pass 3.
    run_ok(&scratch, &["generate", p, "--passes", "2", "-o", "mid.png"]);
    assert_eq!(pixels(&scratch, "mid.png").0, 64);
    run_ok(&scratch, &["finish", "mid.png", "-o", "mid-fin.png"]);
    assert!(full == pixels(&scratch, "mid-fin.png"));

    // A finished image has nothing left to run.
    let out = hiresfix(&scratch.0, &["finish", "full.png"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("full.png is the finished result of the profile it carries"),
        "{}",
        stderr(&out)
    );
    let one_pass = tiny_profile(&tiny_ldm(), "", "", "");
    let one_pass = one_pass.split("[[pass]]\nscale").next().unwrap();
    let one = scratch.write("one.toml", one_pass);
    let out = hiresfix(
        &scratch.0,
        &["finish", "pre-0.png", "--profile", one.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains("nothing left to run: the image is pass 1 and the profile stops at pass 1"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn finish_encodes_a_plain_image_as_pass_one() {
    let scratch = Scratch::new("finish-plain");
    let checkpoint = format!("model.checkpoint=\"{}\"", tiny_ldm().display());
    // An A1111 image (no latent, no hiresfix profile) of 40x32 px.
    let a1111 = "a photo of a cat\nNegative prompt: blurry\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 7, Size: 40x32, Model: cat-model, Denoising strength: 0.5, Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent (bicubic)";
    let image = |name: &str, shift: u32| {
        let rgb: Vec<u8> = (0..40 * 32 * 3)
            .map(|i| ((i * 7 + shift) % 256) as u8)
            .collect();
        let png = encode_png(40, 32, &rgb, a1111, "", None).unwrap();
        std::fs::write(scratch.path(name), png).unwrap();
    };
    image("a.png", 0);
    image("b.png", 100);
    for name in ["a.png", "b.png"] {
        let out = hiresfix(
            &scratch.0,
            &[
                "finish",
                name,
                "--set",
                &checkpoint,
                "--set",
                "device=\"cpu\"",
            ],
            &[],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("not imported from"),
            "{}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("Model: cat-model"),
            "{}",
            stderr(&out)
        );
    }
    let a = pixels(&scratch, "a-finished.png");
    assert_eq!((a.0, a.1), (80, 64), "pass 2 doubles the image's own size");
    assert!(
        a != pixels(&scratch, "b-finished.png"),
        "the image's pixels must matter"
    );
    let params = infotext::parse(&chunk(&scratch.path("a-finished.png"), "parameters"));
    assert_eq!(params.get("Size"), Some("40x32"));
    assert_eq!(params.get("Hires upscaler"), Some("Latent (bicubic)"));
    // Deterministic: the same image finished again is the same.
    run_ok(
        &scratch,
        &[
            "finish",
            "a.png",
            "--set",
            &checkpoint,
            "--set",
            "device=\"cpu\"",
            "-o",
            "again.png",
        ],
    );
    assert!(a == pixels(&scratch, "again.png"));
    // A preview's stored latent can be ignored: it is then encoded like any image.
    let p = three_passes(&scratch);
    run_ok(
        &scratch,
        &[
            "generate",
            p.to_str().unwrap(),
            "--passes",
            "1",
            "-o",
            "pre.png",
        ],
    );
    run_ok(
        &scratch,
        &["finish", "pre.png", "--ignore-latent", "-o", "enc.png"],
    );
    run_ok(&scratch, &["finish", "pre.png", "-o", "lat.png"]);
    assert_eq!(pixels(&scratch, "enc.png").0, 96);
    assert!(pixels(&scratch, "enc.png") != pixels(&scratch, "lat.png"));
}

#[test]
fn replay_reproduces_the_png_byte_for_byte() {
    let scratch = Scratch::new("replay");
    let p = three_passes(&scratch);
    let p = p.to_str().unwrap();
    run_ok(&scratch, &["generate", p, "-o", "a.png"]);
    run_ok(&scratch, &["replay", "a.png", "-o", "b.png"]);
    let read = |n: &str| std::fs::read(scratch.path(n)).unwrap();
    assert!(
        read("a.png") == read("b.png"),
        "replay is not byte-identical"
    );
    // A preview replays as a preview.
    run_ok(&scratch, &["generate", p, "--passes", "1", "-o", "c.png"]);
    run_ok(&scratch, &["replay", "c.png", "-o", "d.png"]);
    assert!(
        read("c.png") == read("d.png"),
        "preview replay is not byte-identical"
    );
}

#[test]
fn a1111_infotext_imports_to_the_expected_profile() {
    let scratch = Scratch::new("import");
    let text = "masterpiece, (a red fox:1.2) in snow <lora:detail:0.6>\n\
Negative prompt: lowres, blurry\n\
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567, Size: 512x768, \
Model hash: 6ce0161689, Model: dreamshaper_8, Denoising strength: 0.45, Clip skip: 2, ENSD: 31337, \
Hires CFG Scale: 4, Hires upscale: 1.75, Hires steps: 12, Hires upscaler: Latent (nearest-exact), \
Hires sampler: Euler a, Hires prompt: \"a red fox, detailed fur\", Lora hashes: \"detail: abc123\", \
Version: v1.10.1, Face restoration: CodeFormer";
    let png = encode_png(8, 8, &[0; 8 * 8 * 3], text, "", None).unwrap();
    std::fs::write(scratch.path("a1111.png"), png).unwrap();
    let out = hiresfix(&scratch.0, &["replay", "--to-profile", "a1111.png"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let imported = Profile::parse(&String::from_utf8_lossy(&out.stdout), "imported").unwrap();
    let expected = Profile::parse(
        r#"
seed = 1234567
prompt = "masterpiece, (a red fox:1.2) in snow <lora:detail:0.6>"
negative = "lowres, blurry"
cfg = 6.5
eta_noise_seed_delta = 31337
[model]
clip_skip = 2
[[pass]]
width = 512
height = 768
steps = 28
sampler = "dpmpp_2m"
schedule = "karras"
[[pass]]
scale = 1.75
steps = 12
denoise = 0.45
cfg = 4.0
upscaler = "latent-nearest-exact"
sampler = "euler_ancestral"
prompt = "a red fox, detailed fur"
"#,
        "expected",
    )
    .unwrap();
    assert_eq!(
        toml::to_string(&imported).unwrap(),
        toml::to_string(&expected).unwrap()
    );
    let notes = stderr(&out);
    for field in [
        "Model: dreamshaper_8",
        "<lora:> tags (detail)",
        "Face restoration: CodeFormer",
    ] {
        assert!(
            notes.contains(&format!("note: not imported: {field}")),
            "{field}: {notes}"
        );
    }
    assert!(
        !notes.contains("Version") && !notes.contains("Lora hashes"),
        "{notes}"
    );
}

#[test]
fn grid_cells_equal_single_runs_and_the_sheet_is_labelled() {
    let scratch = Scratch::new("grid");
    let p = scratch.write("p.toml", &tiny_profile(&tiny_ldm(), "", "", ""));
    let p = p.to_str().unwrap();
    let out = hiresfix(
        &scratch.0,
        &[
            "grid",
            p,
            "--x",
            "pass.2.denoise=0.4,0.6",
            "--y",
            "cfg=3,5,7.5",
            "-o",
            "g.png",
        ],
        &[("RUST_LOG", Path::new("hiresfix_engine::models=debug"))],
    );
    let written = stdout_lines(&out);
    // One prompt pair, two pass sizes: encoded twice for the six cells, not twelve times.
    assert_eq!(
        stderr(&out).matches("encoding 2 prompt(s)").count(),
        2,
        "{}",
        stderr(&out)
    );
    assert_eq!(written.len(), 7);
    assert_eq!(written[6], "g.png");
    let mut cells = Vec::new();
    for (r, cfg) in ["3", "5", "7.5"].iter().enumerate() {
        let mut row = Vec::new();
        for (c, denoise) in ["0.4", "0.6"].iter().enumerate() {
            let cell = format!("g-x{}-y{}.png", c + 1, r + 1);
            let single = format!("single-{c}-{r}.png");
            let set_d = format!("pass.2.denoise={denoise}");
            let set_c = format!("cfg={cfg}");
            run_ok(
                &scratch,
                &[
                    "generate", p, "--set", &set_d, "--set", &set_c, "-o", &single,
                ],
            );
            let image = pixels(&scratch, &cell);
            assert!(
                image == pixels(&scratch, &single),
                "{cell} differs from its single run"
            );
            row.push(image);
        }
        cells.push(row);
    }
    assert!(
        cells[0][0] != cells[0][1] && cells[0][0] != cells[1][0],
        "the axes must change the image"
    );
    // Every cell is on the sheet where the layout puts it, under its column label.
    let (w, h, sheet) = pixels(&scratch, "g.png");
    let columns = [
        "pass.2.denoise=0.4".to_owned(),
        "pass.2.denoise=0.6".to_owned(),
    ];
    let rows = ["cfg=3".to_owned(), "cfg=5".to_owned(), "cfg=7.5".to_owned()];
    let layout = hiresfix::sheet::compose(&cells, &columns, &rows);
    assert_eq!((w, h), (layout.width, layout.height));
    for (r, row) in cells.iter().enumerate() {
        for (c, (cw, ch, rgb)) in row.iter().enumerate() {
            let (x0, y0) = layout.origins[r][c];
            for y in 0..*ch {
                let at = (((y0 + y) * w + x0) * 3) as usize;
                let from = (y * cw * 3) as usize;
                assert_eq!(
                    sheet[at..at + (cw * 3) as usize],
                    rgb[from..from + (cw * 3) as usize]
                );
            }
        }
    }
    let ink = |x0: u32, y0: u32, bw: u32, bh: u32| {
        let mut n = 0;
        for y in y0..y0 + bh {
            for x in x0..(x0 + bw).min(w) {
                n += usize::from(sheet[((y * w + x) * 3) as usize] < 128);
            }
        }
        n
    };
    for c in 0..2 {
        let (x0, y0) = layout.origins[0][c];
        assert!(ink(x0, 0, 64, y0) > 30, "column {c} has no label");
    }
    for r in 0..3 {
        let (x0, y0) = layout.origins[r][0];
        assert!(ink(0, y0, x0, 28) > 30, "row {r} has no label");
    }
}

#[test]
fn batch_image_i_equals_the_single_run_with_seed_plus_i() {
    let scratch = Scratch::new("batch");
    let p = scratch.write("p.toml", &tiny_profile(&tiny_ldm(), "", "", ""));
    let p = p.to_str().unwrap();
    let written = run_ok(
        &scratch,
        &["generate", p, "--batch", "3", "-o", "b-{n}.png"],
    );
    assert_eq!(written, ["b-0.png", "b-1.png", "b-2.png"]);
    for i in 0..3 {
        let seed = (7 + i).to_string();
        run_ok(&scratch, &["generate", p, "--seed", &seed, "-o", "s.png"]);
        assert!(
            pixels(&scratch, &format!("b-{i}.png")) == pixels(&scratch, "s.png"),
            "image {i}"
        );
        let params = infotext::parse(&chunk(&scratch.path(&format!("b-{i}.png")), "parameters"));
        assert_eq!(params.get("Seed"), Some(seed.as_str()));
        std::fs::remove_file(scratch.path("s.png")).unwrap();
    }
    assert!(pixels(&scratch, "b-0.png") != pixels(&scratch, "b-1.png"));
}

/// A batch runs as one UNet call (each image its own initial and step noise), and every image
/// is still bit-identical to its single run: SDXL (vector conditioning), ancestral and SDE
/// step noise with a seed delta, a pixel upscaler between the passes, and a pass without CFG.
#[test]
fn a_batched_unet_call_keeps_every_image_equal_to_its_single_run() {
    let scratch = Scratch::new("batched");
    let sdxl = repo().join("tests/data/sdxl-tiny/sdxl-tiny.safetensors");
    let profile = tiny_profile(
        &sdxl,
        "eta_noise_seed_delta = 31337",
        "sampler = \"euler_ancestral\"",
        "sampler = \"dpmpp_sde\"\nupscaler = \"pixel-lanczos\"\ncfg = 1.0",
    );
    let p = scratch.write("p.toml", &profile);
    let p = p.to_str().unwrap();
    let out = hiresfix(
        &scratch.0,
        &["generate", p, "--batch", "3", "-o", "b-{n}.png"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("note: 3 images per UNet call"),
        "{}",
        stderr(&out)
    );
    for i in 0..3 {
        let seed = (7 + i).to_string();
        run_ok(
            &scratch,
            &["-q", "generate", p, "--seed", &seed, "-o", "s.png"],
        );
        assert!(
            pixels(&scratch, &format!("b-{i}.png")) == pixels(&scratch, "s.png"),
            "image {i}"
        );
        std::fs::remove_file(scratch.path("s.png")).unwrap();
    }
    assert!(pixels(&scratch, "b-1.png") != pixels(&scratch, "b-2.png"));
}

//! Hostile PNGs (issue 25): decompression bombs in zTXt and iTXt, damaged chunk structure,
//! headers claiming a million pixels a side, stored latents of the wrong shape, and infotexts
//! that import into a profile `check` refuses. The corpus part runs like `bad_input.rs`: exit
//! code, one line under 300 characters naming the input, no panic, nothing written.
//! `finish` takes every colour type and bit depth as its RGB8 twin, and a 2 GiB-inflating
//! zTXt is refused with a bounded peak RSS.

use std::io::Write;
use std::path::Path;

use base64::Engine;

use crate::common::*;

type Setup = fn(&Scratch) -> Vec<String>;

struct Case {
    name: &'static str,
    setup: Setup,
    code: i32,
    expect: &'static str,
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|a| a.to_string()).collect()
}

/// One PNG chunk: length, type, data, CRC.
fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    [
        &(data.len() as u32).to_be_bytes()[..],
        kind,
        data,
        &crc.sum().to_be_bytes(),
    ]
    .concat()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A zlib stream of `mib` MiB of zeros, built without holding them: one full-flushed deflate
/// block of 1 MiB of zeros (byte-aligned, no reference before it), repeated, then a final
/// empty block and the Adler-32 of the zeros (a = 1, b = length mod 65521).
fn zlib_zeros(mib: u64) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let mut c = Compress::new(Compression::best(), false);
    let mut block = Vec::with_capacity(64 << 10);
    c.compress_vec(&vec![0u8; 1 << 20], &mut block, FlushCompress::Full)
        .unwrap();
    assert_eq!(c.total_in(), 1 << 20);
    let mut last = Vec::with_capacity(64);
    Compress::new(Compression::best(), false)
        .compress_vec(&[], &mut last, FlushCompress::Finish)
        .unwrap();
    let mut out = Vec::with_capacity(2 + block.len() * mib as usize + last.len() + 4);
    out.extend_from_slice(&[0x78, 0xda]);
    for _ in 0..mib {
        out.extend_from_slice(&block);
    }
    out.extend_from_slice(&last);
    let b = ((mib << 20) % 65521) as u32;
    out.extend_from_slice(&((b << 16) | 1).to_be_bytes());
    out
}

/// An 8x8 RGB PNG (hiresfix's writer) with `parameters`, and `extra` chunks after its IHDR.
fn png(parameters: &str, extra: &[Vec<u8>]) -> Vec<u8> {
    let plain = hiresfix::output::encode_png(8, 8, &[90; 192], parameters, "", None).unwrap();
    let at = 8 + 25; // signature, IHDR
    [&plain[..at], &extra.concat(), &plain[at..]].concat()
}

/// Writes `bytes` as `name` in the scratch folder (the working folder of the run); `name`.
fn file(scratch: &Scratch, name: &str, bytes: &[u8]) -> String {
    std::fs::write(scratch.path(name), bytes).unwrap();
    name.to_owned()
}

/// A zTXt chunk `key` of `mib` MiB of zeros.
fn ztxt_bomb(key: &str, mib: u64) -> Vec<u8> {
    chunk(
        b"zTXt",
        &[key.as_bytes(), b"\0\0", &zlib_zeros(mib)].concat(),
    )
}

const A1111: &str = "a cat\nSteps: 20";

fn bomb_png(scratch: &Scratch) -> String {
    file(
        scratch,
        "bomb.png",
        &png(A1111, &[ztxt_bomb("parameters", 32)]),
    )
}

/// A stored-latent chunk: `shape`, then `values` base64 text.
fn latent_chunk(shape: &str, values: &str) -> Vec<u8> {
    let text = format!("hiresfix-latent 1\npass 1\nshape {shape}\n{values}");
    chunk(
        b"zTXt",
        &[b"hiresfix-latent\0\0", &zlib(text.as_bytes())[..]].concat(),
    )
}

fn zeros_b64(values: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(vec![0u8; values * 4])
}

/// `finish` of a preview PNG (32x32, the tiny profile's pass 1) carrying `latent`, with the
/// tiny profile given.
fn finish_latent(scratch: &Scratch, latent: Vec<u8>) -> Vec<String> {
    scratch.write("p.toml", &tiny_profile(&tiny_ldm(), "", "", ""));
    let plain = hiresfix::output::encode_png(32, 32, &[90; 3072], "", "", None).unwrap();
    let bytes = [&plain[..33], &latent, &plain[33..]].concat();
    let image = file(scratch, "pre.png", &bytes);
    s(&["finish", &image, "--profile", "p.toml"])
}

/// `replay --to-profile` of a PNG whose infotext is `parameters`.
fn to_profile(scratch: &Scratch, parameters: &str) -> Vec<String> {
    let image = file(scratch, "in.png", &png(parameters, &[]));
    s(&["replay", "--to-profile", &image, "-o", "p.toml"])
}

const CASES: &[Case] = &[
    // --- decompression bombs and damaged chunk structure ---
    Case { name: "replay of a zTXt that inflates past 16 MiB", code: 1, expect: "bomb.png: PNG text chunk `parameters` inflates past 16 MiB",
        setup: |sc| s(&["replay", &bomb_png(sc)]) },
    Case { name: "finish of a zTXt that inflates past 16 MiB", code: 1, expect: "bomb.png: PNG text chunk `parameters` inflates past 16 MiB",
        setup: |sc| s(&["finish", &bomb_png(sc)]) },
    Case { name: "replay --to-profile of a zTXt that inflates past 16 MiB", code: 1, expect: "bomb.png: PNG text chunk `parameters` inflates past 16 MiB",
        setup: |sc| s(&["replay", "--to-profile", &bomb_png(sc)]) },
    Case { name: "replay of a compressed iTXt that inflates past 16 MiB", code: 1, expect: "PNG text chunk `hiresfix-profile` inflates past 16 MiB",
        setup: |sc| {
            let itxt = chunk(b"iTXt", &[&b"hiresfix-profile\0\x01\0\0\0"[..], &zlib_zeros(20)].concat());
            s(&["replay", &file(sc, "in.png", &png(A1111, &[itxt]))])
        } },
    Case { name: "replay of text chunks that inflate past 64 MiB in all", code: 1, expect: "PNG text chunks inflate past 64 MiB in all",
        setup: |sc| {
            let chunks: Vec<Vec<u8>> = (0..5).map(|i| ztxt_bomb(&format!("k{i}"), 15)).collect();
            s(&["replay", &file(sc, "in.png", &png(A1111, &chunks))])
        } },
    Case { name: "replay of a PNG with more than 1000 text chunks", code: 1, expect: "in.png: more than 1000 PNG text chunks",
        setup: |sc| {
            let chunks: Vec<Vec<u8>> = (0..1001).map(|_| chunk(b"tEXt", b"k\0v")).collect();
            s(&["replay", &file(sc, "in.png", &png(A1111, &chunks))])
        } },
    Case { name: "replay of a chunk whose length runs past the end of the file", code: 1, expect: "claims 4000000000 bytes, past the end of the file",
        setup: |sc| {
            let mut bytes = png(A1111, &[chunk(b"tEXt", b"k\0v")]);
            bytes[33..37].copy_from_slice(&4_000_000_000u32.to_be_bytes());
            s(&["replay", &file(sc, "in.png", &bytes)])
        } },
    Case { name: "replay of a text chunk with a bad CRC", code: 1, expect: "in.png: PNG tEXt chunk `k` at byte 33 has a bad CRC — the file is damaged",
        setup: |sc| {
            let mut bad = chunk(b"tEXt", b"k\0v");
            *bad.last_mut().unwrap() ^= 0x55;
            s(&["replay", &file(sc, "in.png", &png(A1111, &[bad]))])
        } },
    Case { name: "replay of a zTXt that is not zlib", code: 1, expect: "PNG text chunk `k` does not inflate (bad zlib data)",
        setup: |sc| s(&["replay", &file(sc, "in.png", &png(A1111, &[chunk(b"zTXt", b"k\0\0not zlib")]))]) },
    Case { name: "replay of a text chunk without a keyword", code: 1, expect: "PNG tEXt chunk at byte 33 has no keyword of 1 to 79 bytes",
        setup: |sc| s(&["replay", &file(sc, "in.png", &png(A1111, &[chunk(b"tEXt", &[b'x'; 100])]))]) },
    Case { name: "replay of a PNG that does not start with IHDR", code: 1, expect: "in.png is not a readable PNG (it does not start with IHDR)",
        setup: |sc| {
            let bytes = [&b"\x89PNG\r\n\x1a\n"[..], &chunk(b"tEXt", b"k\0v")].concat();
            s(&["replay", &file(sc, "in.png", &bytes)])
        } },
    Case { name: "finish of a stored latent that inflates past its declared shape", code: 1, expect: "PNG text chunk `hiresfix-latent` inflates past the 5506 bytes its shape line declares",
        setup: |sc| {
            let text = [&b"hiresfix-latent 1\npass 1\nshape 1 4 16 16\n"[..], &vec![b'A'; 4 << 20]].concat();
            finish_latent(sc, chunk(b"zTXt", &[&b"hiresfix-latent\0\0"[..], &zlib(&text)].concat()))
        } },
    // --- sizes from the header ---
    Case { name: "finish of a PNG whose header claims 1000000x1000000 px", code: 1, expect: "in.png: its header says 1000000x1000000 px, over the 16384 px limit a side",
        setup: |sc| {
            let mut bytes = png(A1111, &[]);
            bytes[16..20].copy_from_slice(&1_000_000u32.to_be_bytes());
            bytes[20..24].copy_from_slice(&1_000_000u32.to_be_bytes());
            let ihdr_crc = chunk(b"IHDR", &bytes[16..29]);
            bytes[29..33].copy_from_slice(&ihdr_crc[21..25]);
            s(&["finish", &file(sc, "in.png", &bytes)])
        } },
    // --- stored latents of the wrong shape ---
    Case { name: "finish of a stored latent of batch 2", code: 1, expect: "pre.png: its stored latent is damaged (batch 2, hiresfix stores 1)",
        setup: |sc| finish_latent(sc, latent_chunk("2 4 16 16", &zeros_b64(2048))) },
    Case { name: "finish of a stored latent of 17 channels", code: 1, expect: "pre.png: its stored latent is damaged (17 channels, at most 16)",
        setup: |sc| finish_latent(sc, latent_chunk("1 17 16 16", &zeros_b64(17 * 256))) },
    Case { name: "finish of a stored latent of 3 channels for a 4-channel model", code: 1, expect: "pre.png: its stored latent has 3 channels but the model's latents have 4",
        setup: |sc| finish_latent(sc, latent_chunk("1 3 16 16", &zeros_b64(768))) },
    Case { name: "finish of a stored latent of another size than its pass", code: 1, expect: "the stored latent is pass 1 at 17x16 cells but the profile's pass 1 is 32x32 px (16x16 cells)",
        setup: |sc| finish_latent(sc, latent_chunk("1 4 16 17", &zeros_b64(4 * 16 * 17))) },
    Case { name: "finish of a stored latent whose values are not base64", code: 1, expect: "pre.png: its stored latent is damaged (values are not base64)",
        setup: |sc| finish_latent(sc, latent_chunk("1 4 16 16", "%%%% not base64 %%%%")) },
    Case { name: "finish of a truncated stored latent", code: 1, expect: "pre.png: its stored latent is damaged (its size does not match its shape)",
        setup: |sc| finish_latent(sc, latent_chunk("1 4 16 16", &zeros_b64(1000))) },
    Case { name: "finish of a stored latent shape of 3 numbers", code: 1, expect: "pre.png: its stored latent is damaged (shape has 3 numbers, not 4)",
        setup: |sc| finish_latent(sc, latent_chunk("4 4 4", &zeros_b64(64))) },
    // --- replay --to-profile: what `check` would refuse is not written ---
    Case { name: "replay --to-profile of a Hires upscale past the size limit", code: 1, expect: "`Hires upscale: 4` in its infotext imports as a profile `check` refuses (pass 2: 32768x32768 px is over the 16384 px limit",
        setup: |sc| to_profile(sc, "a cat\nSteps: 20, Sampler: Euler a, Size: 8192x8192, Hires upscale: 4, Denoising strength: 0.5") },
    Case { name: "replay --to-profile of a denoise that explodes the schedule", code: 1, expect: "`Denoising strength: 0.0001` in its infotext imports as a profile `check` refuses",
        setup: |sc| to_profile(sc, "a cat\nSteps: 20, Sampler: Euler, Size: 512x512, Hires upscale: 2, Denoising strength: 0.0001") },
    Case { name: "replay --to-profile of a Deep Shrink factor out of range", code: 1, expect: "`kohya_hrfix_downscale_factor: 0` in its infotext imports as a profile `check` refuses",
        setup: |sc| to_profile(sc, "a cat\nSteps: 20, Sampler: Euler, Size: 512x512, kohya_hrfix_enabled: True, kohya_hrfix_block_number: 3, kohya_hrfix_downscale_factor: 0") },
    Case { name: "replay --to-profile of a prompt past 20000 characters", code: 1, expect: "its infotext imports as a profile `check` refuses (prompt is 25000 characters long (at most 20000)",
        setup: |sc| {
            let text = format!("{}\nSteps: 20, Sampler: Euler", "a".repeat(25_000));
            to_profile(sc, &text)
        } },
];

fn run_case(case: &Case) -> Result<(), String> {
    let scratch = corpus::scratch("png-hostile", case.name);
    let run = corpus::run(&scratch, &(case.setup)(&scratch));
    corpus::verdict(case.name, run.problems(case.code, &[case.expect]), &run.err)
}

#[test]
fn every_hostile_png_fails_in_one_clear_line_writing_nothing() {
    assert!(CASES.len() >= 20, "{} cases", CASES.len());
    corpus::assert_all_hold(CASES.iter().map(run_case).collect());
}

#[test]
fn the_bomb_builder_inflates_to_exactly_its_zeros() {
    let mut out = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::ZlibDecoder::new(&zlib_zeros(3)[..]),
        &mut out,
    )
    .unwrap();
    assert_eq!(out.len(), 3 << 20);
    assert!(out.iter().all(|&b| b == 0));
}

/// Runs the binary in `cwd`: (exit code, stderr, peak RSS in bytes).
fn run_measured(cwd: &Path, args: &[&str]) -> (i32, String, u64) {
    let (code, err, mib) = crate::common::rss::run_with_peak_rss(
        std::process::Command::new(env!("CARGO_BIN_EXE_hiresfix"))
            .current_dir(cwd)
            .args(args)
            .env_remove("HIRESFIX_PLUGIN_PATH"),
    );
    (code.unwrap_or(-1), err, (mib * 1024.0 * 1024.0) as u64)
}

#[test]
fn a_2_gib_ztxt_in_a_2_mib_png_is_refused_with_bounded_memory() {
    let scratch = Scratch::new("png-bomb-rss");
    let bytes = png(A1111, &[ztxt_bomb("parameters", 2048)]);
    assert!(bytes.len() < 3 << 20, "the bomb is {} bytes", bytes.len());
    let image = file(&scratch, "bomb.png", &bytes);
    // The server's /sdapi/v1/png-info reads through the same function.
    let err = hiresfix::output::read_text_chunks_from(std::io::Cursor::new(&bytes), "image")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("image: PNG text chunk `parameters` inflates past 16 MiB"),
        "{err}"
    );
    for args in [
        &["replay", image.as_str()][..],
        &["finish", image.as_str()],
        &["replay", "--to-profile", image.as_str()],
    ] {
        let (code, err, rss) = run_measured(&scratch.0, args);
        assert_eq!(code, 1, "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(
            lines[0].contains("PNG text chunk `parameters` inflates past 16 MiB"),
            "{err}"
        );
        // Measured: ~145 MB, of which ~127 MB is the binary with libtorch loaded.
        assert!(
            rss < 200_000_000,
            "{args:?}: peak RSS {} MB",
            rss / 1_000_000
        );
    }
}

/// Writes a `w`x`h` PNG of `color` at `depth` (with a palette / tRNS when given) as `name`.
#[allow(clippy::too_many_arguments)]
fn encoded(
    scratch: &Scratch,
    name: &str,
    (w, h): (u32, u32),
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
    palette: Option<&[u8]>,
    trns: Option<&[u8]>,
) -> String {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, w, h);
        encoder.set_color(color);
        encoder.set_depth(depth);
        if let Some(p) = palette {
            encoder.set_palette(p.to_vec());
        }
        if let Some(t) = trns {
            encoder.set_trns(t.to_vec());
        }
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(data).unwrap();
    }
    file(scratch, name, &bytes)
}

/// A decoded image: width, height, RGB8.
type Decoded = (u32, u32, Vec<u8>);
/// A colour-type case: name, colour type, depth, samples, palette, tRNS, the twin it equals.
type ColourCase<'a> = (
    &'a str,
    png::ColorType,
    png::BitDepth,
    Vec<u8>,
    Option<&'a [u8]>,
    Option<&'a [u8]>,
    &'a str,
);

#[test]
fn finish_takes_every_colour_type_as_its_rgb8_twin() {
    use png::{BitDepth::*, ColorType::*};
    let scratch = Scratch::new("png-colour-types");
    scratch.write("p.toml", &tiny_profile(&tiny_ldm(), "", "", ""));
    let size = (32u32, 32u32);
    let n = 32 * 32;
    // 256 colours (one palette holds them), a grey ramp, and a 1-bit pattern.
    let palette: Vec<u8> = (0..256usize)
        .flat_map(|i| [i as u8, (i * 7) as u8, (255 - i) as u8])
        .collect();
    let index: Vec<u8> = (0..n).map(|i| ((i * 37) % 256) as u8).collect();
    let rgb: Vec<u8> = index
        .iter()
        .flat_map(|&i| palette[i as usize * 3..i as usize * 3 + 3].to_vec())
        .collect();
    let grey: Vec<u8> = (0..n).map(|i| ((i * 13) % 256) as u8).collect();
    let bit = |i: usize| (i / 32 + i % 32).is_multiple_of(3);
    let as_rgb = |g: &[u8]| -> Vec<u8> { g.iter().flat_map(|&v| [v, v, v]).collect() };
    let with_alpha = |px: &[u8], k: usize| -> Vec<u8> {
        px.chunks(k)
            .enumerate()
            .flat_map(|(i, p)| [p, &[(i * 5) as u8][..]].concat())
            .collect()
    };
    let wide = |px: &[u8]| -> Vec<u8> { px.iter().flat_map(|&v| [v, v ^ 0xa5]).collect() };
    let packed: Vec<u8> = (0..n / 8)
        .map(|b| (0..8).fold(0u8, |acc, k| acc << 1 | bit(b * 8 + k) as u8))
        .collect();
    let bits_rgb: Vec<u8> = (0..n)
        .flat_map(|i| [if bit(i) { 255 } else { 0 }; 3])
        .collect();
    let twins = [("rgb", &rgb), ("grey", &as_rgb(&grey)), ("bits", &bits_rgb)];
    let run = |image: &str| -> Decoded {
        let out = format!("{}-out.png", image.trim_end_matches(".png"));
        let res = hiresfix(
            &scratch.0,
            &["finish", image, "--profile", "p.toml", "-o", &out],
            &[],
        );
        assert_eq!(res.status.code(), Some(0), "{image}: {}", stderr(&res));
        hiresfix::output::read_rgb8(&scratch.path(&out)).unwrap()
    };
    let twin_out: Vec<(&str, Decoded)> = twins
        .iter()
        .map(|(name, px)| {
            let image = encoded(
                &scratch,
                &format!("{name}.png"),
                size,
                Rgb,
                Eight,
                px,
                None,
                None,
            );
            (*name, run(&image))
        })
        .collect();
    let twin = |name: &str| &twin_out.iter().find(|(n, _)| *n == name).unwrap().1;
    assert!(
        twin("rgb") != twin("grey") && twin("grey") != twin("bits"),
        "the input does not matter"
    );
    let cases: Vec<ColourCase> = vec![
        ("rgba8", Rgba, Eight, with_alpha(&rgb, 3), None, None, "rgb"),
        ("rgb16", Rgb, Sixteen, wide(&rgb), None, None, "rgb"),
        (
            "rgba16",
            Rgba,
            Sixteen,
            wide(&with_alpha(&rgb, 3)),
            None,
            None,
            "rgb",
        ),
        (
            "palette8-trns",
            Indexed,
            Eight,
            index.clone(),
            Some(&palette),
            Some(&[0, 64, 128]),
            "rgb",
        ),
        ("grey8", Grayscale, Eight, grey.clone(), None, None, "grey"),
        (
            "grey16",
            Grayscale,
            Sixteen,
            wide(&grey),
            None,
            None,
            "grey",
        ),
        (
            "grey-alpha8",
            GrayscaleAlpha,
            Eight,
            with_alpha(&grey, 1),
            None,
            None,
            "grey",
        ),
        ("grey1", Grayscale, One, packed.clone(), None, None, "bits"),
        (
            "palette1",
            Indexed,
            One,
            packed,
            Some(&[0, 0, 0, 255, 255, 255]),
            None,
            "bits",
        ),
    ];
    for (name, color, depth, data, palette, trns, twin_name) in cases {
        let image = encoded(
            &scratch,
            &format!("{name}.png"),
            size,
            color,
            depth,
            &data,
            palette,
            trns,
        );
        let got = run(&image);
        assert_eq!(got.0, 64, "{name}: pass 2 doubles the 32 px image");
        assert!(
            &got == twin(twin_name),
            "{name}: finish differs from its RGB8 twin's"
        );
    }
}

#[test]
fn what_to_profile_writes_passes_check() {
    let scratch = Scratch::new("png-to-profile-check");
    let checkpoint = format!("model.checkpoint=\"{}\"", tiny_ldm().display());
    let texts = [
        "a cat\nNegative prompt: blurry\nSteps: 3, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 5, Size: 32x32, Model hash: abc, Model: x, Denoising strength: 0.5, Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent",
        "a cat\nSteps: 3, Sampler: DPM++ 2M, Schedule type: Karras, Size: 32x32, Hires resize: 64x48, Hires upscaler: Latent (bicubic), Denoising strength: 0.3",
        // Out of range or unparsable: reported, left unset.
        "a cat\nSteps: 0, Sampler: Euler a, CFG scale: 500, Clip skip: 0, Seed: -1, Size: 33x47, Hires upscale: 0, Hires steps: 99999",
        "a cat\nSteps: 3, Sampler: No Such Sampler, Schedule type: nope, Size: 8x8, Lora hashes: \"a: 123, b: 456\", Template: \"x, y\"",
        "a cat\nSteps: 3, Sampler: Euler, Size: 32x32, kohya_hrfix_enabled: True, kohya_hrfix_block_number: 1, kohya_hrfix_downscale_factor: 2, freeu_enabled: False, Denoising strength: 1",
        "\nSteps: 3, Size: 32x32, Tiling: True, ENSD: 31337, Hires upscale: 1.5",
    ];
    for (i, text) in texts.iter().enumerate() {
        let image = file(&scratch, &format!("in{i}.png"), &png(text, &[]));
        let profile = format!("p{i}.toml");
        let out = hiresfix(
            &scratch.0,
            &["replay", "--to-profile", &image, "-o", &profile],
            &[],
        );
        assert_eq!(out.status.code(), Some(0), "{text}: {}", stderr(&out));
        let out = hiresfix(&scratch.0, &["check", &profile, "--set", &checkpoint], &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{text}: {}\n{}",
            stderr(&out),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // A LoRA tag (or a model upscaler) names a file the user adds: imported, with a note.
    let image = file(&scratch, "lora.png", &png("a cat <lora:nowhere:0.5>\nSteps: 3, Size: 32x32, Hires upscale: 2, Hires upscaler: 4x-UltraSharp", &[]));
    let out = hiresfix(
        &scratch.0,
        &["replay", "--to-profile", &image, "-o", "lora.toml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("set lora_dirs to the folder holding them"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("put 4x-UltraSharp.safetensors in upscaler_dirs"),
        "{}",
        stderr(&out)
    );
}

/// The corpus cases' names (README's reliability table lists each).
pub(crate) fn case_names() -> Vec<&'static str> {
    CASES.iter().map(|c| c.name).collect()
}

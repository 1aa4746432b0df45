//! Output contract: determinism, A1111 infotext, the embedded profile, never overwriting.

use crate::common::*;
use hiresfix::infotext;
use hiresfix::profile::Profile;

#[test]
fn same_profile_and_seed_give_byte_identical_png() {
    let scratch = Scratch::new("determinism");
    let profile = scratch.write(
        "p.toml",
        &tiny_profile(&tiny_ldm(), "", "sampler = \"euler_ancestral\"", ""),
    );
    for name in ["a.png", "b.png"] {
        let out = hiresfix(
            &scratch.0,
            &["generate", profile.to_str().unwrap(), "-o", name],
            &[],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let a = std::fs::read(scratch.path("a.png")).unwrap();
    let b = std::fs::read(scratch.path("b.png")).unwrap();
    assert_eq!(a, b);
}

#[test]
fn parameters_chunk_parses_back_to_the_profile_values() {
    use sha2::Digest;
    let scratch = Scratch::new("infotext");
    let profile = scratch.write(
        "p.toml",
        &tiny_profile(
            &tiny_ldm(),
            "",
            "",
            "sampler = \"dpmpp_2m\"\nschedule = \"karras\"",
        ),
    );
    let out = hiresfix(
        &scratch.0,
        &["generate", profile.to_str().unwrap(), "--seed", "42"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let png = scratch.path("out/img-42-0.png");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "out/img-42-0.png"
    );
    let params = infotext::parse(&chunk(&png, "parameters"));
    assert_eq!(params.prompt, "a photo of a cat");
    assert_eq!(params.negative, "blurry");
    let hash: String = sha2::Sha256::digest(std::fs::read(tiny_ldm()).unwrap())
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect();
    for (key, value) in [
        ("Steps", "3"),
        ("Sampler", "Euler"),
        ("Schedule type", "Normal"),
        ("CFG scale", "5"),
        ("Seed", "42"),
        ("Size", "32x32"),
        ("Model hash", hash.as_str()),
        ("Model", "sd1-tiny"),
        ("Denoising strength", "0.5"),
        ("Hires upscale", "2"),
        ("Hires steps", "2"),
        ("Hires upscaler", "Latent"),
        ("Hires sampler", "DPM++ 2M"),
        ("Hires schedule type", "Karras"),
    ] {
        assert_eq!(params.get(key), Some(value), "{key}");
    }
    let resolved = Profile::parse(&chunk(&png, "hiresfix-profile"), "embedded").unwrap();
    assert_eq!(resolved.seed, 42);
    assert_eq!(resolved.passes[0].width, Some(32));
    assert_eq!(resolved.passes[1].denoise, Some(0.5));
    assert_eq!(resolved.passes[1].schedule.as_deref(), Some("karras"));
}

#[test]
fn batch_uses_consecutive_seeds_and_never_overwrites() {
    let scratch = Scratch::new("batch");
    let profile = scratch.write("p.toml", &tiny_profile(&tiny_ldm(), "", "", ""));
    let out = hiresfix(
        &scratch.0,
        &[
            "generate",
            profile.to_str().unwrap(),
            "--batch",
            "2",
            "-o",
            "same.png",
            "-q",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let written: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(written, ["same.png", "same-1.png"]);
    let seeds: Vec<String> = written
        .iter()
        .map(|p| {
            infotext::parse(&chunk(&scratch.path(p), "parameters"))
                .get("Seed")
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(seeds, ["7", "8"]);
}

#[test]
fn replay_reproduces_the_image_from_its_embedded_profile() {
    let scratch = Scratch::new("replay");
    let profile = scratch.write("p.toml", &tiny_profile(&tiny_ldm(), "", "", ""));
    let out = hiresfix(
        &scratch.0,
        &["generate", profile.to_str().unwrap(), "-o", "first.png"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = hiresfix(&scratch.0, &["replay", "first.png", "-o", "again.png"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(scratch.path("first.png")).unwrap(),
        std::fs::read(scratch.path("again.png")).unwrap()
    );
}

/// A copy of `png` whose embedded profile has `edit` applied (what someone could send).
fn with_embedded_profile(
    png: &std::path::Path,
    to: &std::path::Path,
    edit: impl Fn(&mut toml::Table),
) {
    let text = chunk(png, hiresfix::output::PROFILE_CHUNK);
    let mut table: toml::Table = toml::from_str(&text).unwrap();
    edit(&mut table);
    let parameters = chunk(png, "parameters");
    let (w, h, rgb) = hiresfix::output::read_rgb8(png).unwrap();
    let bytes = hiresfix::output::encode_png(
        w,
        h,
        &rgb,
        &parameters,
        &toml::to_string(&table).unwrap(),
        None,
    )
    .unwrap();
    std::fs::write(to, bytes).unwrap();
}

#[test]
fn replay_of_a_sent_png_loads_no_plugin_from_its_profile_and_writes_only_where_told() {
    let scratch = Scratch::new("replay-untrusted");
    let profile = scratch.write("p.toml", &tiny_profile(&tiny_ldm(), "", "", ""));
    let out = hiresfix(
        &scratch.0,
        &["generate", profile.to_str().unwrap(), "-o", "mine.png"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // A folder with a plugin in it, named by the PNG's profile, as are an output path and a pin.
    let trap = scratch.path("trap");
    std::fs::create_dir_all(&trap).unwrap();
    let kdiff = repo().join("target/debug/libhiresfix_samplers_kdiff.so");
    std::fs::copy(&kdiff, trap.join("libtrap_sampler.so")).unwrap();
    with_embedded_profile(&scratch.path("mine.png"), &scratch.path("sent.png"), |t| {
        t.insert(
            "plugin_dirs".into(),
            toml::Value::Array(vec![trap.to_string_lossy().as_ref().into()]),
        );
        t.insert("output".into(), "evil/{seed}.png".into());
        t.insert("lora_dirs".into(), toml::Value::Array(vec!["/etc".into()]));
    });
    let out = hiresfix(
        &scratch.0,
        &["replay", "sent.png", "-o", "told.png"],
        &[("RUST_LOG", std::path::Path::new("debug"))],
    );
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("opening plugin"),
        "the debug log names plugins: {log}"
    );
    assert!(
        !log.contains("trap"),
        "a plugin from the PNG's folder was opened: {log}"
    );
    assert!(scratch.path("told.png").is_file());
    assert!(!scratch.path("evil").exists(), "wrote where the PNG said");
    // The same image as the original: only the generation settings were used.
    let (_, _, a) = hiresfix::output::read_rgb8(&scratch.path("mine.png")).unwrap();
    let (_, _, b) = hiresfix::output::read_rgb8(&scratch.path("told.png")).unwrap();
    assert_eq!(a, b);
}

#[test]
fn output_naming_a_folder_writes_inside_it() {
    let scratch = Scratch::new("output-folder");
    std::fs::create_dir_all(scratch.path("renders")).unwrap();
    let profile = scratch.write("p.toml", &tiny_profile(&tiny_ldm(), "", "", ""));
    let out = hiresfix(
        &scratch.0,
        &["generate", profile.to_str().unwrap(), "-o", "renders"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "renders/7-0.png"
    );
    assert!(scratch.path("renders/7-0.png").is_file());
}

#[test]
fn ctrl_c_in_a_batch_says_which_images_were_written() {
    let scratch = Scratch::new("ctrl-c");
    let profile = scratch.write(
        "p.toml",
        // Images run 8 per UNet call: 12 steps write the first 8 soon and leave 42 to cancel.
        &tiny_profile(&tiny_ldm(), "batch = 50", "", "").replace("steps = 3", "steps = 12"),
    );
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_hiresfix"))
        .current_dir(&scratch.0)
        .args(["-q", "generate", profile.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while scratch.pngs().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!scratch.pngs().is_empty(), "no image was written in time");
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    let written = scratch.pngs();
    assert!(written.len() < 50, "the batch ran to its end");
    assert!(err.contains("cancelled (Ctrl-C) during pass"), "{err}");
    assert!(
        err.contains(&format!(
            "{} file(s) of a batch of 50 were written before it stopped",
            written.len()
        )),
        "{err}"
    );
    assert!(err.contains("img-7-0.png"), "{err}");
}

/// The checkpoint's A1111 hash is cached by path, size and modification time (as A1111's
/// cache.json): a stored hash is used while both hold, and recomputed when the file changes.
#[test]
fn the_model_hash_is_cached_until_the_file_changes() {
    use sha2::Digest;
    let scratch = Scratch::new("hash-cache");
    let checkpoint = scratch.path("model.safetensors");
    std::fs::copy(tiny_ldm(), &checkpoint).unwrap();
    let profile = scratch.write("p.toml", &tiny_profile(&checkpoint, "", "", ""));
    let cache = scratch.path("cache");
    let hash_of = |name: &str| {
        let out = hiresfix(
            &scratch.0,
            &["-q", "generate", profile.to_str().unwrap(), "-o", name],
            &[("HIRESFIX_CACHE_DIR", &cache)],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let params = infotext::parse(&chunk(&scratch.path(name), "parameters"));
        params.get("Model hash").unwrap().to_owned()
    };
    let real: String = sha2::Sha256::digest(std::fs::read(&checkpoint).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hash_of("a.png"), real[..10]);
    let file = cache.join("hashes.json");
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(stored.contains(&real), "{stored}");
    // A hash planted in the cache is what the next run reports: the file was not read again.
    std::fs::write(&file, stored.replace(&real, &"ab".repeat(32))).unwrap();
    assert_eq!(hash_of("b.png"), "ababababab");
    // A new modification time invalidates it.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&checkpoint)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_eq!(hash_of("c.png"), real[..10]);
}

//! Plugin loading: out-of-workspace samplers, handshake refusal, panics become errors.

use crate::common::*;
use hiresfix::output::read_rgb8;

#[test]
fn out_of_workspace_sampler_is_used_by_name_and_matches_builtin_euler() {
    let lib = build_outside_plugin("examples/third-party-sampler", "example_sampler");
    let scratch = Scratch::new("ext-sampler");
    let dir = plugin_dir(&scratch, "my-plugins", &[&lib]);
    let top = format!("plugin_dirs = [\"{}\"]", dir.display());
    let ext = scratch.write(
        "ext.toml",
        &tiny_profile(
            &tiny_ldm(),
            &top,
            "sampler = \"example_euler\"",
            "sampler = \"Example Euler\"",
        ),
    );
    let builtin = scratch.write("builtin.toml", &tiny_profile(&tiny_ldm(), "", "", ""));
    let a = hiresfix(
        &scratch.0,
        &["generate", ext.to_str().unwrap(), "-o", "ext.png"],
        &[],
    );
    assert!(a.status.success(), "{}", stderr(&a));
    let b = hiresfix(
        &scratch.0,
        &["generate", builtin.to_str().unwrap(), "-o", "builtin.png"],
        &[],
    );
    assert!(b.status.success(), "{}", stderr(&b));
    let (ext_w, _, ext_px) = read_rgb8(&scratch.path("ext.png")).unwrap();
    let (_, _, builtin_px) = read_rgb8(&scratch.path("builtin.png")).unwrap();
    assert_eq!(ext_w, 64);
    assert_eq!(
        ext_px, builtin_px,
        "a third-party Euler must give the built-in Euler's pixels"
    );
    let text = hiresfix::output::read_text_chunks(&scratch.path("ext.png")).unwrap();
    let params =
        hiresfix::infotext::parse(&text.iter().find(|(k, _)| k == "parameters").unwrap().1);
    assert_eq!(params.get("Sampler"), Some("Example Euler"));
}

#[test]
fn plugin_with_another_libtorch_is_refused_by_file_and_the_rest_still_work() {
    let lib = build_outside_plugin("tests/fixtures", "bad_torch_plugin");
    let scratch = Scratch::new("bad-torch");
    let dir = plugin_dir(&scratch, "plugins", &[&lib]);
    let listing = hiresfix(&scratch.0, &["plugins"], &[("HIRESFIX_PLUGIN_PATH", &dir)]);
    let text = String::from_utf8_lossy(&listing.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("libbad_torch_plugin.so"))
        .expect("listed");
    assert!(
        line.contains("REFUSED: built against libtorch 1.13.1"),
        "{line}"
    );
    assert!(
        text.contains("euler_ancestral"),
        "the other plugins still load:\n{text}"
    );

    let profile = scratch.write("p.toml", &tiny_profile(&tiny_ldm(), "", "", ""));
    let out = hiresfix(
        &scratch.0,
        &["generate", profile.to_str().unwrap()],
        &[("HIRESFIX_PLUGIN_PATH", &dir)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: plugin ")
            && stderr(&out)
                .contains("libbad_torch_plugin.so refused: built against libtorch 1.13.1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(scratch.pngs().len(), 1);
}

#[test]
fn panicking_sampler_becomes_an_error_naming_the_plugin() {
    let lib = build_outside_plugin("tests/fixtures", "panicky_plugin");
    let scratch = Scratch::new("panicky");
    let dir = plugin_dir(&scratch, "plugins", &[&lib]);
    let top = format!("plugin_dirs = [\"{}\"]", dir.display());
    let profile = scratch.write(
        "p.toml",
        &tiny_profile(
            &tiny_ldm(),
            &top,
            "sampler = \"panicky\"",
            "sampler = \"euler\"",
        ),
    );
    let out = hiresfix(&scratch.0, &["generate", profile.to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "not an abort: {err}");
    // The lint's warning about the tiny model's 32 px pass 1 may come first.
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("warning: "))
        .collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        err.contains("sampler `panicky`") && err.contains("libpanicky_plugin.so"),
        "{err}"
    );
    assert!(
        err.contains("panicked: sampler exploded on purpose"),
        "{err}"
    );
    assert!(scratch.pngs().is_empty());
}

#[test]
fn group_writable_plugin_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let lib = build_outside_plugin("examples/third-party-sampler", "example_sampler");
    let scratch = Scratch::new("writable");
    let dir = plugin_dir(&scratch, "plugins", &[&lib]);
    let copy = dir.join("libexample_sampler.so");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o775)).unwrap();
    let listing = hiresfix(&scratch.0, &["plugins"], &[("HIRESFIX_PLUGIN_PATH", &dir)]);
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        text.contains("libexample_sampler.so  REFUSED: group- or world-writable"),
        "{text}"
    );
}

#[test]
fn a_refused_plugin_does_not_hide_a_good_one_of_the_same_name() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new("shadow");
    let kdiff = repo().join("target/debug/libhiresfix_samplers_kdiff.so");
    let dir = plugin_dir(&scratch, "first", &[&kdiff]);
    let copy = dir.join("libhiresfix_samplers_kdiff.so");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o666)).unwrap();
    let top = format!("plugin_dirs = [\"{}\"]", dir.display());
    let profile = scratch.write("p.toml", &tiny_profile(&tiny_ldm(), &top, "", ""));
    let out = hiresfix(&scratch.0, &["generate", profile.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = hiresfix(&scratch.0, &["plugins"], &[("HIRESFIX_PLUGIN_PATH", &dir)]);
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        text.contains("libhiresfix_samplers_kdiff.so  REFUSED: group- or world-writable"),
        "{text}"
    );
    assert!(
        text.contains("target/debug/libhiresfix_samplers_kdiff.so  (host-api"),
        "{text}"
    );
}

#[test]
fn a_plugin_in_a_world_writable_folder_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let lib = build_outside_plugin("examples/third-party-sampler", "example_sampler");
    let scratch = Scratch::new("writable-folder");
    let dir = plugin_dir(&scratch, "plugins", &[&lib]);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let listing = hiresfix(&scratch.0, &["plugins"], &[("HIRESFIX_PLUGIN_PATH", &dir)]);
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        text.contains("REFUSED: its folder is group- or world-writable"),
        "{text}"
    );
}

#[test]
fn unknown_sampler_lists_built_in_and_plugin_samplers() {
    let lib = build_outside_plugin("examples/third-party-sampler", "example_sampler");
    let scratch = Scratch::new("unknown-sampler-list");
    let dir = plugin_dir(&scratch, "my-plugins", &[&lib]);
    let top = format!("plugin_dirs = [\"{}\"]", dir.display());
    let profile = scratch.write(
        "p.toml",
        &tiny_profile(&tiny_ldm(), &top, "", "sampler = \"no_such_sampler\""),
    );
    let out = hiresfix(&scratch.0, &["generate", profile.to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("unknown sampler `no_such_sampler`"), "{err}");
    for name in ["example_euler", "euler", "dpmpp_3m_sde", "lcm"] {
        assert!(err.contains(name), "{name} missing from: {err}");
    }
    assert!(scratch.pngs().is_empty());
}

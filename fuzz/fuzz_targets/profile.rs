//! Profile TOML as a user writes it: parse, apply a `--set` override, resolve defaults.
#![no_main]
use hiresfix_engine::profile::Profile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(profile) = Profile::parse(text, "fuzz") else {
        return;
    };
    if let Ok(mut set) = profile.with_overrides(&["pass.2.denoise=0.3".into()]) {
        let _ = set.resolve_defaults(512);
    }
    let mut resolved = profile.clone();
    let _ = resolved.resolve_defaults(512);
});

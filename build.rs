//! Puts libtorch's folder on the host binary's rpath so `hiresfix` runs without LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_HIRESFIX_HOST_API_TORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_HIRESFIX_HOST_API_TORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}

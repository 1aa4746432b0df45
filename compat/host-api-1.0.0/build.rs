//! Records the libtorch this crate is compiled against, for the plugin handshake, and passes
//! the libtorch lib folder on to dependents (`DEP_HIRESFIX_HOST_API_TORCH_LIB`) for their rpath.
use std::process::Command;

fn python_torch() -> Option<(String, String)> {
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".into());
    let script = "import torch;print(torch.__version__.split('+')[0]);print(int(torch._C._GLIBCXX_USE_CXX11_ABI))";
    let out = Command::new(python).arg("-c").arg(script).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut lines = text.lines();
    Some((
        lines.next()?.trim().to_owned(),
        lines.next()?.trim().to_owned(),
    ))
}

fn libtorch_dir_torch() -> Option<(String, String)> {
    let dir = std::env::var("LIBTORCH").ok()?;
    let version = std::fs::read_to_string(format!("{dir}/build-version")).ok()?;
    let version = version.trim().split('+').next()?.to_owned();
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    Some((version, abi))
}

fn main() {
    for var in [
        "LIBTORCH_USE_PYTORCH",
        "LIBTORCH",
        "LIBTORCH_CXX11_ABI",
        "PYTHON_SYS_EXECUTABLE",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let found = if std::env::var("LIBTORCH_USE_PYTORCH").is_ok() {
        python_torch()
    } else {
        libtorch_dir_torch()
    };
    let (version, cxx11) = found.unwrap_or_else(|| ("unknown".into(), "1".into()));
    println!("cargo:rustc-env=HIRESFIX_TORCH_VERSION={version}");
    println!("cargo:rustc-env=HIRESFIX_TORCH_CXX11_ABI={cxx11}");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:torch_lib={lib}");
    }
}

//! Build script: the version string names the engines in the build and, with the LibTorch
//! engine (feature `tch`), records where LibTorch was found so that the binary finds it at run
//! time without LD_LIBRARY_PATH on the machine that built it. It is an old-style RPATH, since
//! LibTorch's own libraries need it too (a RUNPATH applies only to the binary's direct
//! dependencies); on another machine (a GPU machine with its own PyTorch) those folders do not
//! exist and LD_LIBRARY_PATH finds LibTorch.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let tch = std::env::var_os("CARGO_FEATURE_TCH").is_some();
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let engines = if tch {
        "burn (flex CPU), tch (LibTorch CPU/CUDA)"
    } else {
        "burn (flex CPU)"
    };
    println!("cargo:rustc-env=DISTILL_SIM_VERSION={version}; engines: {engines}");
    if tch {
        if let Ok(lt) = std::env::var("LIBTORCH") {
            let lt = std::path::Path::new(&lt);
            println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
            // torch/lib, and the CUDA runtime libraries scripts/setup-libtorch.sh puts beside it.
            for dir in [lt.join("lib"), lt.join("../lib")] {
                if dir.is_dir() {
                    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
                }
            }
        }
    }
}

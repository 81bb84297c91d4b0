//! With the `mkl` feature: link MKL's single dynamic library, `libmkl_rt`, from `$MKL_LIB_DIR`
//! when it is set. PyPI's `mkl` wheel ships it only as `libmkl_rt.so.<N>` (wheels hold no
//! symbolic links), so that name is linked as it is when the plain `libmkl_rt.so` is absent.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=MKL_LIB_DIR");
    if std::env::var_os("CARGO_FEATURE_MKL").is_none() {
        return;
    }
    let Some(dir) = std::env::var_os("MKL_LIB_DIR") else {
        println!("cargo:rustc-link-lib=dylib=mkl_rt");
        return;
    };
    let dir = Path::new(&dir);
    println!("cargo:rustc-link-search=native={}", dir.display());
    let versioned = ["libmkl_rt.so.3", "libmkl_rt.so.2"]
        .into_iter()
        .find(|name| dir.join(name).exists());
    match versioned {
        Some(name) if !dir.join("libmkl_rt.so").exists() => {
            println!("cargo:rustc-link-lib=dylib:+verbatim={name}");
        }
        _ => println!("cargo:rustc-link-lib=dylib=mkl_rt"),
    }
}

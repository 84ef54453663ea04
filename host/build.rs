//! Link settings for the `celeriac` executable.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.ends_with("-linux-gnu") {
        // Relative relocations packed as RELR (glibc >= 2.36, binutils >= 2.38): the ~100,000
        // the executable carries take 26 KiB instead of 2.3 MiB, which the loader reads at
        // start-up and which then stay resident.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

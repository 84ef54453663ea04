//! `celeriac plugins build DIR`: a plugin folder, in any supported language, into
//! `DIR/NAME.wasm`, a component for the `plugin` world of `wit/celeriac.wit`.
//!
//! - Rust (`Cargo.toml`): `cargo build --release --target wasm32-wasip2`, adding the
//!   target with rustup on first use.
//! - Python (`NAME.py`): componentize-py, which bundles CPython and pre-initializes the
//!   module so each task starts from a snapshot. It is taken from
//!   `CELERIAC_COMPONENTIZE_PY`, else `PATH`, else installed once into a virtualenv
//!   under the cache folder.
//! - JavaScript (`NAME.js`): componentize-js (StarlingMonkey), from
//!   `CELERIAC_COMPONENTIZE_JS`, else `PATH`, else installed once with npm under the
//!   cache folder. WASI HTTP is left out: the worker does not offer it.
//! - C (`NAME.c`): clang for `wasm32-wasi` with wasi-libc (Debian's packages), then the
//!   core module is made a component here, with `wit-component` and the WASI preview1
//!   adapter, so no other tool is needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

use super::plugin_new::{JS_SDK, PYTHON_SDK};

/// The WIT every plugin is built against, as this worker reads it.
const WIT: &str = include_str!("../../../wit/celeriac.wit");
/// The componentize-py release the Python SDK is tested with.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
/// The componentize-js release the JavaScript SDK is tested with.
const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js@0.23.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
}

/// The C SDK, the bindings `wit-bindgen c` generated from the WIT, and the stand-ins for
/// the worker that a plugin's native tests link.
const C_SDK: [(&str, &str); 5] = [
    ("celeriac.h", include_str!("../../../sdk/c/celeriac.h")),
    ("celeriac.c", include_str!("../../../sdk/c/celeriac.c")),
    ("plugin.h", include_str!("../../../sdk/c/plugin.h")),
    ("plugin.c", include_str!("../../../sdk/c/plugin.c")),
    ("celeriac_native.c", include_str!("../../../sdk/c/celeriac_native.c")),
];

/// Write the C SDK under the cache folder; its path.
pub fn c_sdk() -> anyhow::Result<PathBuf> {
    let cache = cache_dir()?;
    let sdk = cache.join("sdk/c");
    for (file, text) in C_SDK {
        write(&sdk.join(file), text)?;
    }
    Ok(sdk)
}

/// The language and plugin name of a folder.
fn detect(dir: &Path) -> anyhow::Result<(Lang, String)> {
    let manifest = dir.join("Cargo.toml");
    if manifest.is_file() {
        let text = std::fs::read_to_string(&manifest)?;
        let cargo: toml::Value =
            toml::from_str(&text).with_context(|| format!("{} is not TOML", manifest.display()))?;
        let name = cargo
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(toml::Value::as_str)
            .with_context(|| format!("{} has no package.name", manifest.display()))?;
        return Ok((Lang::Rust, name.replace('-', "_")));
    }
    let folder = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let name = folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if dir.join(format!("{name}.py")).is_file() {
        return Ok((Lang::Python, name));
    }
    if dir.join(format!("{name}.js")).is_file() {
        return Ok((Lang::Js, name));
    }
    if dir.join(format!("{name}.c")).is_file() {
        return Ok((Lang::C, name));
    }
    bail!(
        "cannot tell the language of {}: expected Cargo.toml (Rust), {name}.py (Python), {name}.js (JavaScript) or {name}.c (C)",
        dir.display()
    )
}

/// Build the plugin in `dir`; the path of the component.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    let (lang, name) = detect(dir)?;
    let out = dir.join(format!("{name}.wasm"));
    match lang {
        Lang::Rust => build_rust(dir, &name, &out)?,
        Lang::Python => build_python(dir, &name, &out)?,
        Lang::Js => build_js(dir, &name, &out)?,
        Lang::C => build_c(dir, &out)?,
    }
    Ok(out)
}

/// Run a command, inheriting the terminal, and fail with what was run.
fn run(command: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot run {shown} (is it installed?)"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn build_rust(dir: &Path, name: &str, out: &Path) -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("cannot run rustup: install Rust from https://rustup.rs")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|t| t == "wasm32-wasip2")
    {
        eprintln!("adding the wasm32-wasip2 target with rustup (first use)…");
        run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))?;
    }
    run(Command::new("cargo")
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(dir))?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), PathBuf::from);
    let built = target.join("wasm32-wasip2/release").join(format!("{name}.wasm"));
    std::fs::copy(&built, out).with_context(|| format!("cargo built no {}", built.display()))?;
    Ok(())
}

fn build_python(dir: &Path, name: &str, out: &Path) -> anyhow::Result<()> {
    let cache = cache_dir()?;
    let wit = cache.join("sdk/wit");
    write(&wit.join("celeriac.wit"), WIT)?;
    let mut command = Command::new(componentize_py(&cache)?);
    command
        .arg("-d")
        .arg(&wit)
        .args(["-w", "plugin", "componentize", name, "-p"])
        .arg(dir);
    // A plugin folder made by `plugins new` carries its own copy of the SDK.
    if !dir.join("celeriac").is_dir() {
        let sdk = cache.join("sdk/python");
        write(&sdk.join("celeriac/__init__.py"), PYTHON_SDK)?;
        command.arg("-p").arg(sdk);
    }
    run(command.arg("-o").arg(out))
}

fn build_js(dir: &Path, name: &str, out: &Path) -> anyhow::Result<()> {
    let cache = cache_dir()?;
    let wit = cache.join("sdk/wit/celeriac.wit");
    write(&wit, WIT)?;
    if !dir.join("celeriac.js").is_file() {
        eprintln!("adding the SDK as {}", dir.join("celeriac.js").display());
        write(&dir.join("celeriac.js"), JS_SDK)?;
    }
    // The entry names the plugin before its module registers tasks, and hands the SDK
    // the host functions (an import only a component can resolve). It sits in the
    // folder: componentize-js resolves modules from the entry's folder only.
    let entry = dir.join(".celeriac-entry.js");
    write(
        &dir.join(".celeriac-name.js"),
        &format!("globalThis.CELERIAC_PLUGIN = {name:?};\n"),
    )?;
    write(
        &entry,
        &format!(
            "import * as host from \"celeriac:task/host@0.1.0\";\nimport \"./.celeriac-name.js\";\nimport \"./{name}.js\";\n\
             export {{ handler }} from \"./celeriac.js\";\nglobalThis.CELERIAC_HOST = host;\n"
        ),
    )?;
    let mut command = Command::new(componentize_js(&cache)?);
    command
        .arg(&entry)
        .arg("--wit")
        .arg(&wit)
        .args(["--world-name", "plugin", "--disable", "http", "fetch-event", "-o"])
        .arg(out);
    run(&mut command)
}

/// Where SDK files and toolchains go (`~/.cache/celeriac`, or `CELERIAC_CACHE_DIR`).
fn cache_dir() -> anyhow::Result<PathBuf> {
    crate::runtime::cache::default_cache_dir().context("no cache folder: set CELERIAC_CACHE_DIR")
}

/// A tool named by the environment variable `setting`, else `tool` if it runs from PATH.
fn configured_or_on_path(setting: &str, tool: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(setting) {
        return Some(path.into());
    }
    let on_path = Command::new(tool).arg("--version").output();
    on_path.is_ok_and(|o| o.status.success()).then(|| tool.into())
}

/// componentize-js: as configured, on PATH, or installed with npm into the cache.
fn componentize_js(cache: &Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = configured_or_on_path("CELERIAC_COMPONENTIZE_JS", "componentize-js") {
        return Ok(path);
    }
    let prefix = cache.join("toolchains/js");
    let installed = prefix.join("node_modules/.bin/componentize-js");
    if !installed.is_file() {
        eprintln!(
            "installing {COMPONENTIZE_JS} into {} with npm (first use)…",
            prefix.display()
        );
        std::fs::create_dir_all(&prefix)?;
        run(Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(COMPONENTIZE_JS))
        .context("JavaScript plugins need Node.js 20 or newer and npm to install componentize-js")?;
    }
    Ok(installed)
}

fn build_c(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let sdk = c_sdk()?;
    // Every .c file but the native tests (test_*.c).
    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "c"))
        .filter(|path| {
            !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("test_"))
        })
        .collect();
    sources.sort();
    let core = dir.join(".celeriac-core.wasm");
    let clang = std::env::var_os("CC").unwrap_or_else(|| "clang".into());
    run(Command::new(clang)
        .args(["--target=wasm32-wasi", "-mexec-model=reactor", "-O2", "-Wall", "-I"])
        .arg(&sdk)
        .args(&sources)
        .arg(sdk.join("celeriac.c"))
        .arg(sdk.join("plugin.c"))
        .arg("-o")
        .arg(&core))
    .context(
        "C plugins need clang with the wasm32-wasi target and wasi-libc \
         (Debian: apt install clang lld wasi-libc libclang-rt-dev-wasm32)",
    )?;
    let module = std::fs::read(&core)?;
    std::fs::remove_file(&core)?;
    std::fs::write(out, componentize(module)?).with_context(|| format!("cannot write {}", out.display()))
}

/// A WASI preview1 core module as a component of the `plugin` world.
fn componentize(mut module: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    use wasi_preview1_component_adapter_provider::{
        WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
    };
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve.push_str("celeriac.wit", WIT)?;
    let world = resolve.select_world(&[package], Some("plugin"))?;
    wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8)?;
    wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)?
        .adapter(
            WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .encode()
        .context("cannot make the module a component")
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder)?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// componentize-py: as configured, on PATH, or installed into the cache on first use.
fn componentize_py(cache: &Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = configured_or_on_path("CELERIAC_COMPONENTIZE_PY", "componentize-py") {
        return Ok(path);
    }
    let venv = cache.join("toolchains/python");
    let installed = venv.join("bin/componentize-py");
    if !installed.is_file() {
        eprintln!("installing {COMPONENTIZE_PY} into {} (first use)…", venv.display());
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .context("Python plugins need python3 (3.10 or newer) to install componentize-py")?;
        run(Command::new(venv.join("bin/pip")).args(["install", "-q", COMPONENTIZE_PY]))?;
    }
    Ok(installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_language_comes_from_the_folder() {
        let root = std::env::temp_dir().join(format!("celeriac-detect-{}", std::process::id()));
        let python = root.join("textkit");
        write(&python.join("textkit.py"), "").unwrap();
        assert_eq!(detect(&python).unwrap(), (Lang::Python, "textkit".to_owned()));
        let rust = root.join("greet");
        write(&rust.join("Cargo.toml"), "[package]\nname = \"greet-me\"\n").unwrap();
        assert_eq!(detect(&rust).unwrap(), (Lang::Rust, "greet_me".to_owned()));
        let js = root.join("shout");
        write(&js.join("shout.js"), "").unwrap();
        assert_eq!(detect(&js).unwrap(), (Lang::Js, "shout".to_owned()));
        let empty = root.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        assert!(detect(&empty)
            .unwrap_err()
            .to_string()
            .contains("cannot tell the language"));
        std::fs::remove_dir_all(root).unwrap();
    }
}

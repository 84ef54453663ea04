//! `celeriac plugins new --lang LANG NAME`: a plugin folder with one example task and a
//! test, ready for `celeriac plugins build`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use super::plugin_build::Lang;

/// The Python SDK, copied into each Python plugin so the folder builds and tests alone.
pub const PYTHON_SDK: &str = include_str!("../../../sdk/python/celeriac/__init__.py");
/// The JavaScript SDK, likewise.
pub const JS_SDK: &str = include_str!("../../../sdk/js/celeriac.js");

/// Where the Rust SDK crate is: `CELERIAC_RUST_SDK`, else this source tree's.
fn rust_sdk() -> PathBuf {
    std::env::var_os("CELERIAC_RUST_SDK")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/rust/celeriac-sdk"))
}

/// A plugin name is its task prefix and its file name: a lowercase identifier.
fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        bail!("plugin name {name:?} must be a lowercase identifier (a-z, 0-9, _), e.g. textkit");
    }
    Ok(())
}

/// Create `parent/NAME` for `lang`; the folder must not exist yet.
pub fn scaffold(lang: Lang, name: &str, parent: &Path) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let dir = parent.join(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let fill = |template: &str| template.replace("{{name}}", name);
    let files: Vec<(PathBuf, String)> = match lang {
        Lang::Python => vec![
            (
                format!("{name}.py").into(),
                fill(include_str!("../../../sdk/python/template/NAME.py")),
            ),
            (
                format!("test_{name}.py").into(),
                fill(include_str!("../../../sdk/python/template/test_NAME.py")),
            ),
            ("celeriac/__init__.py".into(), PYTHON_SDK.to_owned()),
        ],
        Lang::Js => vec![
            (
                format!("{name}.js").into(),
                fill(include_str!("../../../sdk/js/template/NAME.js")),
            ),
            (
                format!("{name}.test.mjs").into(),
                fill(include_str!("../../../sdk/js/template/NAME.test.mjs")),
            ),
            ("celeriac.js".into(), JS_SDK.to_owned()),
            (
                "package.json".into(),
                format!("{{\n  \"name\": \"{name}\",\n  \"private\": true,\n  \"type\": \"module\"\n}}\n"),
            ),
        ],
        Lang::C => {
            let sdk = super::plugin_build::c_sdk()?;
            vec![
                (
                    format!("{name}.c").into(),
                    fill(include_str!("../../../sdk/c/template/NAME.c")),
                ),
                (
                    format!("test_{name}.c").into(),
                    fill(include_str!("../../../sdk/c/template/test_NAME.c")),
                ),
                (
                    "Makefile".into(),
                    fill(include_str!("../../../sdk/c/template/Makefile")).replace("{{sdk}}", &sdk.to_string_lossy()),
                ),
            ]
        }
        Lang::Rust => {
            let sdk = rust_sdk();
            let sdk = sdk.canonicalize().unwrap_or(sdk);
            vec![
                (
                    "Cargo.toml".into(),
                    fill(include_str!("../../../sdk/rust/template/Cargo.toml"))
                        .replace("{{sdk}}", &sdk.to_string_lossy()),
                ),
                (
                    "src/lib.rs".into(),
                    fill(include_str!("../../../sdk/rust/template/src/lib.rs")),
                ),
            ]
        }
    };
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).with_context(|| format!("cannot create {}", folder.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_identifiers() {
        assert!(check_name("textkit").is_ok() && check_name("t2_x").is_ok());
        for bad in ["", "Text", "2x", "a-b", "a.b", "../x"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}

//! Compiled components cached on disk by content hash, so a restart skips compilation
//! (Rust guests ~0.1 s, Python or JS guests 7–17 s on two cores).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

pub struct ComponentCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

/// `$CELERIAC_CACHE_DIR`, else `$XDG_CACHE_HOME/celeriac`, else `~/.cache/celeriac`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CELERIAC_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("celeriac"))
}

impl ComponentCache {
    /// A cache under `dir`; `None` compiles every time.
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> ComponentCache {
        // Artifacts are only valid for the same wasmtime version and engine settings.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = format!("{:016x}", hasher.finish());
        let dir = dir
            .map(|d| d.join("components"))
            .filter(|d| match create_private_dir(d) {
                Ok(()) => true,
                Err(err) => {
                    tracing::warn!(dir = %d.display(), error = %err, "component cache disabled");
                    false
                }
            });
        ComponentCache { dir, engine_key }
    }

    /// The component for these bytes: from the cache, or compiled (and then cached).
    pub fn load(&self, engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Component> {
        let Some(dir) = &self.dir else {
            return Component::new(engine, wasm);
        };
        let path = dir.join(format!(
            "{}-{}.cwasm",
            hex::encode(Sha256::digest(wasm)),
            self.engine_key
        ));
        if path.exists() {
            // SAFETY: the cache directory is created private to this user and only this
            // host writes into it (atomically), so its files are wasmtime's own output.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok(component),
                Err(err) => tracing::warn!(path = %path.display(), error = %err, "stale cache entry, recompiling"),
            }
        }
        let compiled = engine.precompile_component(wasm)?;
        if let Err(err) = write_atomically(&path, &compiled) {
            tracing::warn!(path = %path.display(), error = %err, "cannot write component cache");
        }
        // SAFETY: the bytes were produced by this engine a moment ago.
        unsafe { Component::deserialize(engine, &compiled) }
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

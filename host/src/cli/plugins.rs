//! `celeriac plugins list | check`: what a folder serves, and whether a file is a valid plugin.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::plugin_build::{self, Lang};
use super::plugin_new;
use super::worker::DEFAULT_PLUGINS;
use crate::config::FileConfig;
use crate::runtime::{cache::default_cache_dir, PluginVersion, Runtime};

#[derive(Debug, Args)]
pub struct PluginsArgs {
    #[command(subcommand)]
    pub command: PluginsCommand,
}

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Load every plugin in the folder and list their tasks.
    List {
        /// Plugin folder.
        #[arg(long, env = "CELERIAC_PLUGINS")]
        plugins: Option<PathBuf>,
    },
    /// Validate one component against the WIT and list its tasks.
    Check {
        /// The .wasm file.
        file: PathBuf,
    },
    /// Create a plugin folder with one example task and a test.
    New {
        /// The plugin's language.
        #[arg(long, value_enum)]
        lang: Lang,
        /// The plugin's name: its tasks are NAME.<function>, its file NAME.wasm.
        name: String,
        /// Where to create the NAME folder.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build a plugin folder (Rust, Python or JavaScript) into DIR/NAME.wasm, then check it.
    Build {
        /// The plugin folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

fn print_plugin(version: &PluginVersion) {
    println!(
        "{} ({}, celeriac:task@{}, sha256 {})",
        version.name,
        version.path.display(),
        version.wit_version,
        &version.digest[..12]
    );
    for task in &version.tasks {
        if task.doc.is_empty() {
            println!("  {}", task.name);
        } else {
            println!("  {:<24} {}", task.name, task.doc);
        }
    }
}

pub async fn run(file: &FileConfig, args: PluginsArgs) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::new(1, default_cache_dir())?;
    match args.command {
        PluginsCommand::List { plugins } => {
            let dir = plugins
                .or_else(|| file.plugins.clone())
                .unwrap_or_else(|| DEFAULT_PLUGINS.into());
            runtime.load_dir(&dir)?;
            let loaded = runtime.registry.plugins();
            if loaded.is_empty() {
                println!("no plugins in {}", dir.display());
            }
            for version in loaded {
                print_plugin(&version);
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginsCommand::New { lang, name, dir } => {
            let folder = plugin_new::scaffold(lang, &name, &dir)?;
            println!(
                "created {}; build it with: celeriac plugins build {}",
                folder.display(),
                folder.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PluginsCommand::Build { dir } => {
            let file = plugin_build::build(&dir)?;
            let version = runtime.check_file(&file)?;
            print_plugin(&version);
            Ok(ExitCode::SUCCESS)
        }
        PluginsCommand::Check { file } => match runtime.check_file(&file) {
            Ok(version) => {
                print_plugin(&version);
                Ok(ExitCode::SUCCESS)
            }
            Err(err) => {
                eprintln!("{err}");
                Ok(ExitCode::FAILURE)
            }
        },
    }
}

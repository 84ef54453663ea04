//! Logs go to stderr through `tracing`, as text or one JSON object per line.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(level: &str, format: Option<&str>) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::new(spec),
        _ => EnvFilter::try_new(level.to_lowercase()).map_err(|e| anyhow::anyhow!("bad --loglevel {level:?}: {e}"))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and journald get plain text.
        .with_ansi(std::io::stderr().is_terminal());
    match format.unwrap_or("text") {
        "text" => builder.init(),
        "json" => builder.json().flatten_event(true).init(),
        other => anyhow::bail!("unknown --log-format {other:?}: use text or json"),
    }
    Ok(())
}

//! `celeriac purge`: drop the messages waiting in queues.

use std::process::ExitCode;

use clap::Args;

use super::CommonArgs;
use crate::broker;
use crate::config::FileConfig;

#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Queues to purge, comma separated (default: celery).
    #[arg(short = 'Q', long, value_delimiter = ',')]
    pub queues: Vec<String>,
}

pub async fn run(common: &CommonArgs, file: &FileConfig, args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let connection = common.connection(file)?;
    let queues = if args.queues.is_empty() {
        file.queues.clone().unwrap_or_else(|| vec!["celery".into()])
    } else {
        args.queues
    };
    let broker = broker::open(&connection.broker, &connection.transport_options).await?;
    let mut total = 0;
    for queue in &queues {
        total += broker.purge(queue).await?;
    }
    let plural = |n: u64, word: &str| if n == 1 { word.to_owned() } else { format!("{word}s") };
    println!(
        "Purged {total} {} from {} known task {}.",
        plural(total, "message"),
        queues.len(),
        plural(queues.len() as u64, "queue")
    );
    Ok(ExitCode::SUCCESS)
}

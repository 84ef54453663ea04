//! `celeriac result`: read a task's state and result from the backend.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::CommonArgs;
use crate::backend;
use crate::config::FileConfig;
use crate::protocol::time::seconds;
use crate::protocol::{State, TaskResult};

#[derive(Debug, Args)]
pub struct ResultArgs {
    /// Task id.
    pub id: String,
    /// Wait until the task is ready.
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait with --wait.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
}

pub async fn run(common: &CommonArgs, file: &FileConfig, args: ResultArgs) -> anyhow::Result<ExitCode> {
    let connection = common.connection(file)?;
    let backend = backend::open(&connection.backend, connection.result_expires, &connection.broker).await?;
    let timeout = if args.wait {
        seconds(args.timeout).unwrap_or_default()
    } else {
        Duration::ZERO
    };
    let result = backend.wait(&args.id, timeout).await?;
    print_result(&args.id, result.as_ref(), timeout)
}

/// Print a result as `celery result` would: the value as JSON on stdout; an exception
/// as `Type: message` on stderr with exit status 1; a task not ready yet as its state.
pub fn print_result(id: &str, result: Option<&TaskResult>, waited: Duration) -> anyhow::Result<ExitCode> {
    let Some(result) = result else {
        if waited.is_zero() {
            println!("PENDING");
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("task {id} is still PENDING after {waited:?}");
        return Ok(ExitCode::from(2));
    };
    match (&result.state, result.exception()) {
        (State::Success, _) => {
            println!("{}", result.result);
            Ok(ExitCode::SUCCESS)
        }
        (state, Some(exc)) if state.is_ready() => {
            let message: Vec<String> = exc
                .exc_message
                .iter()
                .map(|m| m.as_str().map(str::to_owned).unwrap_or_else(|| m.to_string()))
                .collect();
            eprintln!("{} ({}): {}: {}", state.as_str(), id, exc.exc_type, message.join(", "));
            Ok(ExitCode::FAILURE)
        }
        (state, _) if !waited.is_zero() => {
            eprintln!("task {id} is still {} after {waited:?}", state.as_str());
            Ok(ExitCode::from(2))
        }
        (state, _) => {
            println!("{}", state.as_str());
            Ok(ExitCode::SUCCESS)
        }
    }
}

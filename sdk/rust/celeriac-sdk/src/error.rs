//! The error a task returns: a Celery-visible exception, a retry request or a reject.

use crate::bindings::celeriac::task::types as wit;

/// Why a task did not return a value.
///
/// Any `std::error::Error` converts into a failure named after its type, so `?` works
/// on ordinary errors; [`TaskError::new`] picks the exception name Python will see.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskError {
    /// An exception: `exc_type`, `exc_module`, message and an optional traceback.
    Failure {
        exc_type: String,
        exc_module: String,
        message: String,
        traceback: Option<String>,
    },
    /// Run the task again after `countdown` seconds, at most `max_retries` times.
    Retry {
        countdown: Option<f64>,
        max_retries: Option<u32>,
        reason: Option<String>,
    },
    /// Refuse the message (Celery's `Reject`); `requeue` puts it back on the queue.
    Reject { requeue: bool },
}

impl TaskError {
    /// An exception of the given type. Python builtin names (`ValueError`,
    /// `ZeroDivisionError`, …) come back as the real builtin exceptions in Celery.
    pub fn new(exc_type: impl Into<String>, message: impl Into<String>) -> Self {
        let exc_type = exc_type.into();
        let exc_module = if is_python_builtin(&exc_type) {
            "builtins"
        } else {
            "celeriac.tasks"
        };
        TaskError::Failure {
            exc_type,
            exc_module: exc_module.to_owned(),
            message: message.into(),
            traceback: None,
        }
    }

    /// Attach a traceback (any text) to a failure.
    pub fn with_traceback(mut self, text: impl Into<String>) -> Self {
        if let TaskError::Failure { traceback, .. } = &mut self {
            *traceback = Some(text.into());
        }
        self
    }

    /// Refuse the message; with `requeue` it goes back on the queue.
    pub fn reject(requeue: bool) -> Self {
        TaskError::Reject { requeue }
    }

    #[doc(hidden)]
    pub fn into_wit(self) -> wit::TaskError {
        match self {
            TaskError::Failure {
                exc_type,
                exc_module,
                message,
                traceback,
            } => wit::TaskError::Failure(wit::Failure {
                exc_type,
                exc_module,
                message,
                traceback,
            }),
            TaskError::Retry {
                countdown,
                max_retries,
                reason,
            } => wit::TaskError::Retry(wit::RetryRequest {
                countdown,
                max_retries,
                reason,
            }),
            TaskError::Reject { requeue } => wit::TaskError::Reject(requeue),
        }
    }
}

/// Ask for another attempt in `countdown` seconds, giving up after `max_retries`:
/// `return Err(retry(5.0, 3))`, like Celery's `raise self.retry(countdown=5, max_retries=3)`.
pub fn retry(countdown: f64, max_retries: u32) -> TaskError {
    TaskError::Retry {
        countdown: Some(countdown),
        max_retries: Some(max_retries),
        reason: None,
    }
}

impl<E: std::error::Error> From<E> for TaskError {
    fn from(err: E) -> Self {
        let full = std::any::type_name::<E>();
        let short = full.rsplit("::").next().unwrap_or(full);
        TaskError::new(short, err.to_string())
    }
}

fn is_python_builtin(name: &str) -> bool {
    matches!(
        name,
        "Exception"
            | "ArithmeticError"
            | "AssertionError"
            | "AttributeError"
            | "ConnectionError"
            | "FileExistsError"
            | "FileNotFoundError"
            | "IndexError"
            | "KeyError"
            | "LookupError"
            | "MemoryError"
            | "NotImplementedError"
            | "OSError"
            | "OverflowError"
            | "PermissionError"
            | "RuntimeError"
            | "TimeoutError"
            | "TypeError"
            | "ValueError"
            | "ZeroDivisionError"
    )
}

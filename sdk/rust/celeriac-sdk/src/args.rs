//! Binding Celery's `args` / `kwargs` to Rust parameters, with Python's rules and errors.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::TaskError;

/// The remaining positional arguments (`*args`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Args(pub Vec<Value>);

/// The remaining keyword arguments (`**kwargs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Kwargs(pub Map<String, Value>);

/// Hands out arguments to parameters in declaration order; used by `#[task]`.
#[doc(hidden)]
pub struct ArgBinder {
    function: &'static str,
    positional: std::vec::IntoIter<Value>,
    given_positional: usize,
    keywords: Map<String, Value>,
}

impl ArgBinder {
    pub fn new(function: &'static str, args_json: &str, kwargs_json: &str) -> Result<Self, TaskError> {
        let positional: Vec<Value> = serde_json::from_str(args_json)
            .map_err(|e| TaskError::new("TypeError", format!("{function}() args must be a JSON array: {e}")))?;
        let keywords: Map<String, Value> = if kwargs_json.trim().is_empty() {
            Map::new()
        } else {
            serde_json::from_str(kwargs_json)
                .map_err(|e| TaskError::new("TypeError", format!("{function}() kwargs must be a JSON object: {e}")))?
        };
        Ok(ArgBinder {
            function,
            given_positional: positional.len(),
            positional: positional.into_iter(),
            keywords,
        })
    }

    /// The next named parameter: the next positional argument, else the keyword of that
    /// name, else `null` (which an `Option` parameter accepts).
    pub fn next<T: DeserializeOwned>(&mut self, name: &str) -> Result<T, TaskError> {
        let (value, given) = match self.positional.next() {
            Some(v) => {
                if self.keywords.contains_key(name) {
                    return Err(TaskError::new(
                        "TypeError",
                        format!("{}() got multiple values for argument '{name}'", self.function),
                    ));
                }
                (v, true)
            }
            None => match self.keywords.remove(name) {
                Some(v) => (v, true),
                None => (Value::Null, false),
            },
        };
        serde_json::from_value(value).map_err(|e| {
            if given {
                TaskError::new("TypeError", format!("{}() argument '{name}': {e}", self.function))
            } else {
                TaskError::new(
                    "TypeError",
                    format!("{}() missing required argument: '{name}'", self.function),
                )
            }
        })
    }

    /// Everything positional that is left (`*args`).
    pub fn rest_args(&mut self) -> Args {
        Args(self.positional.by_ref().collect())
    }

    /// Everything keyword that is left (`**kwargs`).
    pub fn rest_kwargs(&mut self) -> Kwargs {
        Kwargs(std::mem::take(&mut self.keywords))
    }

    /// Fail, as Python does, on arguments no parameter took.
    pub fn finish(mut self, declared: usize) -> Result<(), TaskError> {
        if self.positional.next().is_some() {
            return Err(TaskError::new(
                "TypeError",
                format!(
                    "{}() takes {declared} positional arguments but {} were given",
                    self.function, self.given_positional
                ),
            ));
        }
        if let Some(name) = self.keywords.keys().next() {
            return Err(TaskError::new(
                "TypeError",
                format!("{}() got an unexpected keyword argument '{name}'", self.function),
            ));
        }
        Ok(())
    }
}

/// Encode a task's return value as JSON; used by `#[task]`.
#[doc(hidden)]
pub fn encode_result<T: Serialize>(value: &T) -> Result<String, TaskError> {
    serde_json::to_string(value)
        .map_err(|e| TaskError::new("EncodeError", format!("result is not JSON-serializable: {e}")))
}

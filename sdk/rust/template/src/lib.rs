//! {{name}}: a Celeriac plugin in Rust. Each `#[task]` function is a Celery task named
//! `{{name}}.<function>`; arguments and results are JSON. Build with
//! `celeriac plugins build .`

use celeriac_sdk::{task, TaskError};

/// Upper-case a text, with an exclamation mark.
#[task]
fn shout(text: String) -> Result<String, TaskError> {
    if text.is_empty() {
        return Err(TaskError::new("ValueError", "nothing to shout"));
    }
    Ok(text.to_uppercase() + "!")
}

celeriac_sdk::export!(shout);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shouts_and_refuses_nothing() {
        assert_eq!(shout("hello".into()).unwrap(), "HELLO!");
        assert!(shout(String::new()).is_err());
    }
}

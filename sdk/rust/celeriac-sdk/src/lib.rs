//! Write Celeriac task plugins in Rust.
//!
//! ```ignore
//! use celeriac_sdk::{task, TaskError};
//!
//! /// Add two numbers.
//! #[task]
//! fn add(x: i64, y: i64) -> i64 {
//!     x + y
//! }
//!
//! #[task(name = "math.safe_div")]
//! fn div(x: f64, y: f64) -> Result<f64, TaskError> {
//!     if y == 0.0 {
//!         return Err(TaskError::new("ZeroDivisionError", "division by zero"));
//!     }
//!     Ok(x / y)
//! }
//!
//! celeriac_sdk::export!(add, div);
//! ```
//!
//! Parameters and return values are any serde types. Positional arguments bind to
//! parameters in order, then keyword arguments by name, as in Python. A parameter of
//! type [`Args`] or [`Kwargs`] collects the remaining positional or keyword arguments
//! (`*args` / `**kwargs`). The default task name is `<plugin>.<function>`, where the
//! plugin name is the crate name; `#[task(name = "...")]` overrides it.

mod args;
mod error;
mod host;

pub use args::{encode_result, ArgBinder, Args, Kwargs};
pub use celeriac_sdk_macros::task;
pub use error::{retry, TaskError};
pub use host::{context, log, soft_time_limit_exceeded, update_state, Context, LogLevel};

#[doc(hidden)]
pub use serde_json as __serde_json;

/// Bindings generated from `wit/celeriac.wit`.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin",
        default_bindings_module: "celeriac_sdk::bindings",
    });
}

/// What `#[task]` generates for each function; `export!` reads it.
pub trait Task {
    /// The Rust function name.
    const FUNCTION: &'static str;
    /// A full name given with `#[task(name = "...")]`.
    const NAME: Option<&'static str>;
    /// The function's doc comment, first line.
    const DOC: &'static str;
    /// Decode the JSON arguments, call the function, encode its result.
    fn invoke(args_json: &str, kwargs_json: &str) -> Result<String, TaskError>;
}

/// One exported task, as `export!` collects them. All of it is static: a call finds its
/// task without allocating a name per entry.
#[doc(hidden)]
pub struct TaskEntry {
    plugin: &'static str,
    function: &'static str,
    /// A full name given with `#[task(name = "...")]`.
    name: Option<&'static str>,
    pub doc: &'static str,
    pub invoke: fn(&str, &str) -> Result<String, TaskError>,
}

impl TaskEntry {
    pub const fn of<T: Task>(plugin: &'static str) -> TaskEntry {
        TaskEntry {
            plugin,
            function: T::FUNCTION,
            name: T::NAME,
            doc: T::DOC,
            invoke: T::invoke,
        }
    }

    /// The full task name: the one given, else `<plugin>.<function>`.
    pub fn name(&self) -> String {
        match self.name {
            Some(name) => name.to_owned(),
            None => format!("{}.{}", self.plugin, self.function),
        }
    }

    /// Whether this entry serves the task called `name`.
    pub fn serves(&self, name: &str) -> bool {
        match self.name {
            Some(own) => own == name,
            None => name
                .strip_prefix(self.plugin)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|function| function == self.function),
        }
    }
}

#[doc(hidden)]
pub fn __describe(entries: &[TaskEntry]) -> Vec<bindings::celeriac::task::types::TaskInfo> {
    entries
        .iter()
        .map(|e| bindings::celeriac::task::types::TaskInfo {
            name: e.name(),
            doc: e.doc.to_owned(),
        })
        .collect()
}

#[doc(hidden)]
pub fn __dispatch(
    entries: &[TaskEntry],
    ctx: bindings::celeriac::task::types::TaskContext,
    args_json: String,
    kwargs_json: String,
) -> Result<String, bindings::celeriac::task::types::TaskError> {
    let Some(entry) = entries.iter().find(|e| e.serves(&ctx.name)) else {
        return Err(TaskError::new("NotRegistered", ctx.name.clone()).into_wit());
    };
    host::set_context(ctx);
    let outcome = (entry.invoke)(&args_json, &kwargs_json);
    outcome.map_err(TaskError::into_wit)
}

/// Export the listed `#[task]` functions as this crate's Celeriac component.
///
/// `export!(add, mul)` names tasks `<crate name>.add`, `<crate name>.mul`;
/// `export!(plugin = "maths"; add, mul)` picks another plugin name.
#[macro_export]
macro_rules! export {
    (plugin = $plugin:expr; $($task:path),* $(,)?) => {
        struct __CeleriacPlugin;

        impl __CeleriacPlugin {
            const ENTRIES: &'static [$crate::TaskEntry] = &[$($crate::TaskEntry::of::<$task>($plugin)),*];
        }

        impl $crate::bindings::exports::celeriac::task::handler::Guest for __CeleriacPlugin {
            fn tasks() -> ::std::vec::Vec<$crate::bindings::celeriac::task::types::TaskInfo> {
                $crate::__describe(Self::ENTRIES)
            }

            fn run(
                ctx: $crate::bindings::celeriac::task::types::TaskContext,
                args_json: ::std::string::String,
                kwargs_json: ::std::string::String,
            ) -> ::std::result::Result<
                ::std::string::String,
                $crate::bindings::celeriac::task::types::TaskError,
            > {
                $crate::__dispatch(Self::ENTRIES, ctx, args_json, kwargs_json)
            }
        }

        // Only a Wasm build exports the component's functions: their names (`celeriac:task/
        // handler@0.1.0#run`) are not valid native symbols, and `cargo test` builds natively.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_plugin!(__CeleriacPlugin with_types_in $crate::bindings);
        // Natively the tasks are still in use (for tests), not dead code.
        #[cfg(not(target_arch = "wasm32"))]
        const _: &[$crate::TaskEntry] = __CeleriacPlugin::ENTRIES;
    };
    ($($task:path),* $(,)?) => {
        $crate::export!(plugin = env!("CARGO_PKG_NAME"); $($task),*);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Add;
    impl Task for Add {
        const FUNCTION: &'static str = "add";
        const NAME: Option<&'static str> = None;
        const DOC: &'static str = "Add two integers.";
        fn invoke(_: &str, _: &str) -> Result<String, TaskError> {
            Ok("0".into())
        }
    }

    struct Shout;
    impl Task for Shout {
        const FUNCTION: &'static str = "loud";
        const NAME: Option<&'static str> = Some("greet.shout");
        const DOC: &'static str = "";
        fn invoke(_: &str, _: &str) -> Result<String, TaskError> {
            Ok("\"\"".into())
        }
    }

    #[test]
    fn a_task_is_named_after_its_plugin_and_function_unless_named() {
        assert_eq!(TaskEntry::of::<Add>("math").name(), "math.add");
        assert_eq!(TaskEntry::of::<Shout>("greet").name(), "greet.shout");
    }

    #[test]
    fn an_entry_serves_exactly_its_own_name() {
        let add = TaskEntry::of::<Add>("math");
        assert!(add.serves("math.add"));
        for other in [
            "mathx.add",
            "math.addx",
            "math.ad",
            "math",
            "math.",
            "add",
            ".add",
            "",
            "math.add ",
        ] {
            assert!(!add.serves(other), "math.add served {other:?}");
        }
        let shout = TaskEntry::of::<Shout>("greet");
        assert!(shout.serves("greet.shout"));
        assert!(
            !shout.serves("greet.loud"),
            "a named task is not served by its function name"
        );
    }
}

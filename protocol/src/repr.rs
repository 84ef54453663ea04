//! Python `repr()` of JSON values, for the `argsrepr` / `kwargsrepr` headers and events.

use serde_json::Value;

/// `repr(value)` as Python prints the decoded JSON value.
pub fn repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(value, &mut out);
    out
}

/// `repr(tuple(args))`: `(2, 3)`, `(1,)`, `()`.
pub fn repr_args(args: &[Value]) -> String {
    let mut out = String::from("(");
    for (i, v) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_repr(v, &mut out);
    }
    if args.len() == 1 {
        out.push(',');
    }
    out.push(')');
    out
}

fn write_repr(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_str(s, out),
        container => write_python_layout(container, out, write_repr, write_str),
    }
}

/// Python's layout of lists and dicts (`[a, b]`, `{k: v}`, the separators `repr` and
/// kombu's `json.dumps` both use), with `leaf` writing everything else and `key` the keys.
pub(crate) fn write_python_layout(
    value: &Value,
    out: &mut String,
    leaf: fn(&Value, &mut String),
    key: fn(&str, &mut String),
) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_layout(v, out, leaf, key);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                key(k, out);
                out.push_str(": ");
                write_python_layout(v, out, leaf, key);
            }
            out.push('}');
        }
        other => leaf(other, out),
    }
}

fn write_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_python() {
        assert_eq!(repr_args(&[json!(2), json!(3)]), "(2, 3)");
        assert_eq!(repr_args(&[json!("a")]), "('a',)");
        assert_eq!(repr_args(&[]), "()");
        assert_eq!(
            repr(&json!({"k": [null, true, "it's"]})),
            "{'k': [None, True, \"it's\"]}"
        );
    }
}

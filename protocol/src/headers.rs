//! A message's headers: names and JSON values, in the order they came.
//!
//! A list rather than serde_json's `Map`: Celery sends about 19 headers and the worker
//! reads each at most once, so hashing every name into an index map (SipHash, then the
//! index) cost more than the few comparisons of a scan. Reading them that way was a third
//! of decoding a kombu envelope (callgrind, `host/benches/host_cost.rs`).
//!
//! The names Celery sends are not copied: a name read from a message that is one of them
//! (`known_names!` below) points at the name here. Copying them was 19 of the ~110
//! allocations the worker made for a task on a Redis drain (uprobes on the allocator).

use std::borrow::Cow;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Room for the headers a Celery 5 client sends (19), so reading them grows no list.
const USUAL_HEADERS: usize = 24;

/// Header names are unique: setting one that is there replaces its value in place, as a
/// JSON object read by kombu would hold it. Two sets of headers are equal when they hold
/// the same names and values in any order (an AMQP field table sorts them).
#[derive(Debug, Clone, Default)]
pub struct Headers(Vec<(Cow<'static, str>, Value)>);

/// `known(name)`: `name` as a `&'static str` if it is one of these, without copying it,
/// and which one it is.
macro_rules! known_names {
    ($($variant:ident = $name:literal),* $(,)?) => {
        #[derive(Debug, Clone, Copy)]
        enum Known {
            $($variant,)*
        }

        // Each name has a bit of a `u32` (`Known::bit`).
        const _: () = assert!([$($name),*].len() <= 32);

        fn known(name: &str) -> Option<(&'static str, Known)> {
            match name {
                $($name => Some(($name, Known::$variant)),)*
                _ => None,
            }
        }
    };
}

// The headers of a Celery 5 task message, and others Celery and kombu send.
known_names!(
    Lang = "lang",
    Task = "task",
    Id = "id",
    Shadow = "shadow",
    Eta = "eta",
    Expires = "expires",
    Group = "group",
    GroupIndex = "group_index",
    Retries = "retries",
    Timelimit = "timelimit",
    RootId = "root_id",
    ParentId = "parent_id",
    Argsrepr = "argsrepr",
    Kwargsrepr = "kwargsrepr",
    Origin = "origin",
    IgnoreResult = "ignore_result",
    ReplacedTaskNesting = "replaced_task_nesting",
    StampedHeaders = "stamped_headers",
    Stamps = "stamps",
    Compression = "compression",
);

impl Known {
    /// This name's bit in a set of names seen.
    fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// A header name from a message: shared if Celery's, else copied.
pub(crate) fn shared_name(name: &str) -> Cow<'static, str> {
    known(name).map_or_else(|| Cow::Owned(name.to_owned()), |(name, _)| Cow::Borrowed(name))
}

/// A header name as serde reads it: [`shared_name`], or the string serde made already, and
/// which of Celery's names it is.
struct Name(Cow<'static, str>, Option<Known>);

impl Name {
    /// One of Celery's names, shared.
    fn celerys(name: &str) -> Option<Name> {
        known(name).map(|(shared, which)| Name(Cow::Borrowed(shared), Some(which)))
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Name, D::Error> {
        struct NameVisitor;
        impl Visitor<'_> for NameVisitor {
            type Value = Name;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a header name")
            }

            fn visit_str<E>(self, name: &str) -> Result<Name, E> {
                Ok(Name::celerys(name).unwrap_or_else(|| Name(Cow::Owned(name.to_owned()), None)))
            }

            fn visit_string<E>(self, name: String) -> Result<Name, E> {
                Ok(Name::celerys(&name).unwrap_or(Name(Cow::Owned(name), None)))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Headers) -> bool {
        self.len() == other.len() && self.iter().all(|(name, value)| other.get(name) == Some(value))
    }
}

impl Headers {
    pub fn new() -> Headers {
        Headers(Vec::new())
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Set `name` to `value`; returns the value it replaces.
    pub fn insert(&mut self, name: impl Into<Cow<'static, str>>, value: Value) -> Option<Value> {
        let name = name.into();
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some((_, slot)) => Some(std::mem::replace(slot, value)),
            None => {
                self.0.push((name, value));
                None
            }
        }
    }

    /// Set `name` to `value` unless it is set already.
    pub fn insert_if_absent(&mut self, name: &str, value: impl FnOnce() -> Value) {
        if self.get(name).is_none() {
            self.0.push((Cow::Owned(name.to_owned()), value()));
        }
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&str, &Value) -> bool) {
        self.0.retain(|(n, v)| keep(n, v));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(n, v)| (n.as_ref(), v))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_ref())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<Cow<'static, str>>> FromIterator<(K, Value)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(items: I) -> Headers {
        let mut headers = Headers::new();
        for (name, value) in items {
            headers.insert(name, value);
        }
        headers
    }
}

impl Headers {
    /// Headers from names that are distinct already (an AMQP table's keys), kept in order.
    pub(crate) fn from_distinct(entries: Vec<(Cow<'static, str>, Value)>) -> Headers {
        Headers(entries)
    }
}

impl From<Map<String, Value>> for Headers {
    /// A JSON object's keys are unique already.
    fn from(map: Map<String, Value>) -> Headers {
        Headers(map.into_iter().map(|(name, value)| (Cow::Owned(name), value)).collect())
    }
}

impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name.as_ref(), value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Headers, D::Error> {
        struct HeadersVisitor;
        impl<'de> Visitor<'de> for HeadersVisitor {
            type Value = Headers;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a map of headers")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Headers, A::Error> {
                let mut headers = Headers(Vec::with_capacity(access.size_hint().unwrap_or(USUAL_HEADERS)));
                // Celery's names read so far. Every name read here goes through `known`, so
                // one of Celery's is new unless its bit is set, and needs no search of the
                // names before it (which compared most of them with most others).
                let mut seen = 0u32;
                while let Some((Name(name, which), value)) = access.next_entry::<Name, Value>()? {
                    match which {
                        Some(which) if seen & which.bit() == 0 => {
                            seen |= which.bit();
                            headers.0.push((name, value));
                        }
                        // A repeated name keeps its first place and its last value, as in a
                        // JSON object read by Python.
                        _ => {
                            headers.insert(name, value);
                        }
                    }
                }
                Ok(headers)
            }
        }
        deserializer.deserialize_map(HeadersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_name_set_twice_keeps_its_place_and_takes_the_new_value() {
        let mut headers = Headers::new();
        assert_eq!(headers.insert("a", json!(1)), None);
        headers.insert("b", json!(2));
        assert_eq!(headers.insert("a", json!(3)), Some(json!(1)));
        assert_eq!(headers.iter().collect::<Vec<_>>(), [("a", &json!(3)), ("b", &json!(2))]);
        headers.insert_if_absent("b", || json!(9));
        assert_eq!(headers.get("b"), Some(&json!(2)));
    }

    #[test]
    fn read_from_json_as_python_reads_an_object() {
        let headers: Headers = serde_json::from_str(r#"{"x": 1, "y": 2, "x": 3}"#).unwrap();
        assert_eq!(serde_json::to_string(&headers).unwrap(), r#"{"x":3,"y":2}"#);
        let as_object: Map<String, Value> = serde_json::from_str(r#"{"x": 1, "y": 2, "x": 3}"#).unwrap();
        assert_eq!(headers, Headers::from(as_object));
        assert!(serde_json::from_str::<Headers>("[1]").is_err());
        // Celery's names too, one repeated with an escape (read as a `String` by serde).
        let celerys: Headers =
            serde_json::from_str(r#"{"task": "a", "id": "i", "x": 1, "t\u0061sk": "b", "task": "c"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&celerys).unwrap(),
            r#"{"task":"c","id":"i","x":1}"#
        );
    }

    #[test]
    fn celerys_names_are_shared_and_others_copied() {
        let headers: Headers = serde_json::from_str(r#"{"task": "t", "x-custom": 1, "\u0069d": "i"}"#).unwrap();
        let names: Vec<_> = headers.0.iter().map(|(name, _)| name).collect();
        assert!(matches!(names[0], Cow::Borrowed("task")));
        assert!(matches!(names[1], Cow::Owned(name) if name == "x-custom"));
        assert!(matches!(names[2], Cow::Borrowed("id")), "unescaped first: {names:?}");
    }

    #[test]
    fn equal_whatever_the_order_but_not_whatever_the_values() {
        let ab: Headers = [("a", json!(1)), ("b", json!(2))].into_iter().collect();
        let ba: Headers = [("b", json!(2)), ("a", json!(1))].into_iter().collect();
        let ab3: Headers = [("a", json!(1)), ("b", json!(3))].into_iter().collect();
        assert_eq!(ab, ba);
        assert_ne!(ab, ab3);
        assert_ne!(ab, [("a", json!(1))].into_iter().collect::<Headers>());
    }
}

//! A task message's body, read in one pass: protocol v2's `[args, kwargs, embed]` straight
//! into its parts, anything else as JSON for the v1 and hybrid forms to look at.
//!
//! Reading the body into a `Value` first built a map for `embed`, hashing its four keys
//! in and out again; that was most of the cost of decoding a task message after the
//! envelope (callgrind, `host/benches/host_cost.rs`).

use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::task::Embed;

/// The `visit_*` methods for JSON's scalars (null, booleans, numbers, strings), each
/// returning `$make` of the scalar as a `Value`: a visitor that takes any JSON value.
macro_rules! visit_scalars {
    ($output:ty, $make:expr) => {
        fn visit_unit<E>(self) -> Result<$output, E> {
            Ok($make(Value::Null))
        }

        fn visit_bool<E>(self, v: bool) -> Result<$output, E> {
            Ok($make(Value::from(v)))
        }

        fn visit_i64<E>(self, v: i64) -> Result<$output, E> {
            Ok($make(Value::from(v)))
        }

        fn visit_u64<E>(self, v: u64) -> Result<$output, E> {
            Ok($make(Value::from(v)))
        }

        fn visit_f64<E>(self, v: f64) -> Result<$output, E> {
            Ok($make(Value::from(v)))
        }

        fn visit_str<E>(self, v: &str) -> Result<$output, E> {
            Ok($make(Value::from(v)))
        }
    };
}

// Made once a message and taken apart at once: boxing the large variant would only add
// an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Body {
    /// `[args, kwargs, embed]`: args and kwargs as they came, for the caller to check.
    Parts { args: Value, kwargs: Value, embed: Embed },
    /// An array of any other length.
    Array(usize),
    /// Not an array: a v1 task dict, or a value that is no body at all.
    Other(Value),
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Body, D::Error> {
        deserializer.deserialize_any(BodyVisitor)
    }
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a task message body")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Body, A::Error> {
        let args: Option<Value> = seq.next_element()?;
        let kwargs: Option<Value> = if args.is_some() { seq.next_element()? } else { None };
        let embed = if kwargs.is_some() {
            seq.next_element::<LenientEmbed>()?
        } else {
            None
        };
        let mut length = usize::from(args.is_some()) + usize::from(kwargs.is_some()) + usize::from(embed.is_some());
        while seq.next_element::<IgnoredAny>()?.is_some() {
            length += 1;
        }
        Ok(match (args, kwargs, embed) {
            (Some(args), Some(kwargs), Some(LenientEmbed(embed))) if length == 3 => Body::Parts { args, kwargs, embed },
            _ => Body::Array(length),
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
        let mut object = Map::new();
        while let Some((key, value)) = map.next_entry::<String, Value>()? {
            object.insert(key, value);
        }
        Ok(Body::Other(Value::Object(object)))
    }

    visit_scalars!(Body, Body::Other);
}

/// `embed` as Celery reads it: the four keys it knows, a null one as absent, the last of
/// a repeated one; anything but a dict as an empty embed.
struct LenientEmbed(Embed);

impl<'de> Deserialize<'de> for LenientEmbed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<LenientEmbed, D::Error> {
        deserializer.deserialize_any(EmbedVisitor)
    }
}

struct EmbedVisitor;

impl<'de> Visitor<'de> for EmbedVisitor {
    type Value = LenientEmbed;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an embed dict")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LenientEmbed, A::Error> {
        let mut embed = Embed::default();
        while let Some(key) = map.next_key::<EmbedKey>()? {
            let slot = match key {
                EmbedKey::Callbacks => &mut embed.callbacks,
                EmbedKey::Errbacks => &mut embed.errbacks,
                EmbedKey::Chain => &mut embed.chain,
                EmbedKey::Chord => &mut embed.chord,
                EmbedKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = map.next_value::<Option<Value>>()?;
        }
        Ok(LenientEmbed(embed))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LenientEmbed, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(LenientEmbed(Embed::default()))
    }

    visit_scalars!(LenientEmbed, |_| LenientEmbed(Embed::default()));
}

/// An embed key, matched without allocating it.
enum EmbedKey {
    Callbacks,
    Errbacks,
    Chain,
    Chord,
    Other,
}

impl<'de> Deserialize<'de> for EmbedKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<EmbedKey, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = EmbedKey;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a key")
            }

            fn visit_str<E>(self, key: &str) -> Result<EmbedKey, E> {
                Ok(match key {
                    "callbacks" => EmbedKey::Callbacks,
                    "errbacks" => EmbedKey::Errbacks,
                    "chain" => EmbedKey::Chain,
                    "chord" => EmbedKey::Chord,
                    _ => EmbedKey::Other,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(text: &str) -> Body {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn a_v2_body_reads_into_its_parts_as_the_value_would() {
        let text = r#"[[2, 3], {"k": 1}, {"callbacks": [{"task": "t"}], "errbacks": null, "chain": null, "chord": null, "x": [1]}]"#;
        let Body::Parts { args, kwargs, embed } = read(text) else {
            panic!("not read as parts");
        };
        assert_eq!((args, kwargs), (json!([2, 3]), json!({"k": 1})));
        assert_eq!(embed.callbacks, Some(json!([{"task": "t"}])));
        assert_eq!((embed.errbacks, embed.chain, embed.chord), (None, None, None));
    }

    #[test]
    fn an_embed_that_is_not_a_dict_is_empty_and_a_repeated_key_takes_its_last_value() {
        for text in ["null", "[1, {}]", "\"x\"", "5", "true"] {
            let Body::Parts { embed, .. } = read(&format!("[[], {{}}, {text}]")) else {
                panic!("{text}");
            };
            assert_eq!(embed, Embed::default(), "{text}");
        }
        let Body::Parts { embed, .. } = read(r#"[[], {}, {"chain": [1], "chain": [2]}]"#) else {
            panic!("not read as parts");
        };
        assert_eq!(embed.chain, Some(json!([2])));
    }

    #[test]
    fn other_shapes_are_kept_for_the_caller_to_judge() {
        for (text, length) in [("[]", 0), ("[[]]", 1), ("[[], {}]", 2), ("[[], {}, {}, 4]", 4)] {
            assert!(matches!(read(text), Body::Array(n) if n == length), "{text}");
        }
        assert!(matches!(read(r#"{"task": "t", "id": "i"}"#), Body::Other(Value::Object(m)) if m.len() == 2));
        assert!(matches!(read("7"), Body::Other(v) if v == json!(7)));
        assert!(serde_json::from_str::<Body>("[[], {}, {]").is_err());
    }
}

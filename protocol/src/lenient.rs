//! Envelope properties read leniently and without building JSON values: one of the wrong
//! type reads as absent rather than failing the message, as kombu ignores what it does not
//! use. Reading them as `serde_json::Value`s first made maps and strings for every message.

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::envelope::DeliveryInfo;

/// A string, or `None` for any other JSON.
#[derive(Default)]
pub(crate) struct Text(pub Option<String>);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Text, D::Error> {
        deserializer.deserialize_any(TextVisitor)
    }
}

struct TextVisitor;

/// The visitor methods of JSON's non-string values, each reading as `$absent`.
macro_rules! absent_unless_expected {
    ($absent:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($absent)
        }

        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($absent)
        }

        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($absent)
        }

        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($absent)
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($absent)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($absent)
        }
    };
}

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_str<E>(self, text: &str) -> Result<Text, E> {
        Ok(Text(Some(text.to_owned())))
    }

    fn visit_string<E>(self, text: String) -> Result<Text, E> {
        Ok(Text(Some(text)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Text, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Text(None))
    }

    absent_unless_expected!(Text(None));
}

/// kombu's `delivery_info`: its string fields, or the default for anything else.
#[derive(Default)]
pub(crate) struct ReadDeliveryInfo(pub DeliveryInfo);

impl<'de> Deserialize<'de> for ReadDeliveryInfo {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ReadDeliveryInfo, D::Error> {
        deserializer.deserialize_any(DeliveryInfoVisitor)
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum DeliveryField {
    Exchange,
    RoutingKey,
    #[serde(other)]
    Other,
}

struct DeliveryInfoVisitor;

impl<'de> Visitor<'de> for DeliveryInfoVisitor {
    type Value = ReadDeliveryInfo;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_str<E>(self, _: &str) -> Result<ReadDeliveryInfo, E> {
        Ok(ReadDeliveryInfo::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ReadDeliveryInfo, A::Error> {
        let mut info = DeliveryInfo::default();
        while let Some(field) = map.next_key::<DeliveryField>()? {
            match field {
                DeliveryField::Exchange => info.exchange = map.next_value::<Text>()?.0.unwrap_or_default(),
                DeliveryField::RoutingKey => info.routing_key = map.next_value::<Text>()?.0.unwrap_or_default(),
                DeliveryField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(ReadDeliveryInfo(info))
    }

    absent_unless_expected!(ReadDeliveryInfo::default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_is_read_and_anything_else_is_absent() {
        let read = |json: &str| serde_json::from_str::<Text>(json).unwrap().0;
        assert_eq!(read(r#""amq.gen-1""#), Some("amq.gen-1".to_owned()));
        assert_eq!(read(r#""a\"b""#), Some("a\"b".to_owned()));
        for other in ["1", "-2", "1.5", "true", "null", "[1, [2]]", r#"{"a": {"b": 1}}"#] {
            assert_eq!(read(other), None, "{other}");
        }
    }

    #[test]
    fn delivery_info_keeps_its_string_fields_and_defaults_the_rest() {
        let read = |json: &str| serde_json::from_str::<ReadDeliveryInfo>(json).unwrap().0;
        let info = read(r#"{"exchange": "x", "routing_key": "celery", "priority": 3}"#);
        assert_eq!((info.exchange.as_str(), info.routing_key.as_str()), ("x", "celery"));
        let odd = read(r#"{"exchange": 7, "routing_key": "q"}"#);
        assert_eq!((odd.exchange.as_str(), odd.routing_key.as_str()), ("", "q"));
        for other in ["1", r#""x""#, "null", "[1]"] {
            assert_eq!(read(other), DeliveryInfo::default(), "{other}");
        }
    }
}

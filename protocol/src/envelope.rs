//! A broker-neutral message (body bytes, headers, properties) and kombu's JSON envelope,
//! the form every virtual transport (SQLite, Redis, SQS, Zookeeper) stores.

use std::borrow::Cow;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::headers::Headers;
use super::lenient::{ReadDeliveryInfo, Text};
use super::task::ProtocolError;

/// Where a message was published: kombu's `delivery_info`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeliveryInfo {
    #[serde(default)]
    pub exchange: String,
    #[serde(default)]
    pub routing_key: String,
}

/// The message properties Celery sets (AMQP basic properties plus kombu's extras).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub delivery_mode: u8,
    pub priority: u8,
    pub delivery_info: DeliveryInfo,
}

/// One message as it travels through any broker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    pub body: Vec<u8>,
    pub content_type: String,
    pub content_encoding: String,
    pub headers: Headers,
    pub properties: Properties,
}

/// kombu's envelope, field for field (`content-type` with a hyphen, `body` in base64), as
/// written.
#[derive(Serialize)]
struct Envelope {
    body: Value,
    #[serde(rename = "content-encoding")]
    content_encoding: Option<String>,
    #[serde(rename = "content-type")]
    content_type: Option<String>,
    headers: Option<Headers>,
    properties: Option<Map<String, Value>>,
}

/// kombu's envelope as read: the body left as its JSON text (a base64 string is decoded
/// straight from the envelope, not copied first), the properties typed.
#[derive(Deserialize)]
struct ReadEnvelope<'a> {
    #[serde(borrow)]
    body: &'a RawValue,
    #[serde(rename = "content-encoding", default)]
    content_encoding: Option<String>,
    #[serde(rename = "content-type", default)]
    content_type: Option<String>,
    #[serde(default)]
    headers: Option<Headers>,
    #[serde(default)]
    properties: Option<ReadProperties>,
}

/// The properties a decoded message uses, read leniently (`lenient.rs`); the rest are
/// skipped unbuilt (a map of them cost ~10k instructions a message on a Redis drain,
/// measured with callgrind).
#[derive(Default, Deserialize)]
struct ReadProperties {
    #[serde(default)]
    body_encoding: Text,
    #[serde(default)]
    correlation_id: Text,
    #[serde(default)]
    reply_to: Text,
    #[serde(default)]
    delivery_mode: Option<Value>,
    #[serde(default)]
    priority: Option<Value>,
    #[serde(default)]
    delivery_info: ReadDeliveryInfo,
}

impl Message {
    /// A JSON message for `exchange` / `routing_key`, as kombu publishes control requests,
    /// replies and events (`delivery_mode` 1: transient; 2: persistent).
    pub fn json(body: &Value, headers: Headers, exchange: &str, routing_key: &str, delivery_mode: u8) -> Message {
        Message {
            body: body.to_string().into_bytes(),
            content_type: "application/json".into(),
            content_encoding: "utf-8".into(),
            headers,
            properties: Properties {
                delivery_mode,
                delivery_info: DeliveryInfo {
                    exchange: exchange.into(),
                    routing_key: routing_key.into(),
                },
                ..Default::default()
            },
        }
    }

    /// Encode as kombu's JSON envelope, with a fresh `delivery_tag` as kombu publishers do.
    pub fn to_envelope_json(&self) -> String {
        let mut properties = Map::new();
        if let Some(id) = &self.properties.correlation_id {
            properties.insert("correlation_id".into(), Value::String(id.clone()));
        }
        if let Some(reply_to) = &self.properties.reply_to {
            properties.insert("reply_to".into(), Value::String(reply_to.clone()));
        }
        properties.insert("delivery_mode".into(), self.properties.delivery_mode.into());
        properties.insert(
            "delivery_info".into(),
            serde_json::json!({
                "exchange": self.properties.delivery_info.exchange,
                "routing_key": self.properties.delivery_info.routing_key,
            }),
        );
        properties.insert("priority".into(), self.properties.priority.into());
        properties.insert("body_encoding".into(), "base64".into());
        properties.insert("delivery_tag".into(), Value::String(uuid::Uuid::new_v4().to_string()));
        let envelope = Envelope {
            body: Value::String(base64::engine::general_purpose::STANDARD.encode(&self.body)),
            content_encoding: Some(self.content_encoding.clone()),
            content_type: Some(self.content_type.clone()),
            headers: Some(self.headers.clone()),
            properties: Some(properties),
        };
        // Serializing a struct of strings and JSON values cannot fail.
        serde_json::to_string(&envelope).unwrap_or_default()
    }

    /// Decode kombu's JSON envelope.
    pub fn from_envelope_json(text: &str) -> Result<Message, ProtocolError> {
        let envelope: ReadEnvelope = serde_json::from_str(text)
            .map_err(|e| ProtocolError::Envelope(format!("not a kombu JSON envelope: {e}")))?;
        let properties = envelope.properties.unwrap_or_default();
        let base64 = properties.body_encoding.0.as_deref() == Some("base64");
        let body = match body_text(envelope.body)? {
            Some(text) if base64 => base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| ProtocolError::Envelope(format!("body is not valid base64: {e}")))?,
            Some(text) => text.into_owned().into_bytes(),
            // Compact, as it was written before the envelope held it.
            None => serde_json::from_str::<Value>(envelope.body.get())
                .map_err(|e| ProtocolError::Envelope(e.to_string()))?
                .to_string()
                .into_bytes(),
        };
        let delivery_info = properties.delivery_info.0;
        Ok(Message {
            body,
            content_type: envelope.content_type.unwrap_or_else(|| "application/json".to_owned()),
            content_encoding: envelope.content_encoding.unwrap_or_else(|| "utf-8".to_owned()),
            headers: envelope.headers.unwrap_or_default(),
            properties: Properties {
                correlation_id: properties.correlation_id.0.filter(|id| !id.is_empty()),
                reply_to: properties.reply_to.0.filter(|queue| !queue.is_empty()),
                delivery_mode: small_int(properties.delivery_mode, 2),
                priority: small_int(properties.priority, 0),
                delivery_info,
            },
        })
    }
}

/// The body if it is a JSON string: borrowed from the envelope unless it holds escapes.
fn body_text(body: &RawValue) -> Result<Option<Cow<'_, str>>, ProtocolError> {
    let json = body.get();
    if !json.starts_with('"') {
        return Ok(None);
    }
    let text = match serde_json::from_str::<&str>(json) {
        Ok(text) => Cow::Borrowed(text),
        // Escapes: unescaped into a string of its own.
        Err(_) => Cow::Owned(serde_json::from_str::<String>(json).map_err(|e| ProtocolError::Envelope(e.to_string()))?),
    };
    Ok(Some(text))
}

fn small_int(value: Option<Value>, default: u8) -> u8 {
    value
        .as_ref()
        .and_then(Value::as_u64)
        .map(|v| v.min(255) as u8)
        .unwrap_or(default)
}

/// An SQS message body as kombu reads it: base64 of the envelope when it is strict base64
/// of UTF-8 text, else the text itself.
pub fn from_sqs_body(body: &str) -> String {
    let engine = base64::engine::general_purpose::STANDARD;
    match engine.decode(body) {
        Ok(bytes) if engine.encode(&bytes) == body => String::from_utf8(bytes).unwrap_or_else(|_| body.to_owned()),
        _ => body.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips() {
        let mut message = Message {
            body: b"[[2, 3], {}, {}]".to_vec(),
            content_type: "application/json".into(),
            content_encoding: "utf-8".into(),
            ..Default::default()
        };
        message.headers.insert("task", "math.add".into());
        message.properties.delivery_info.routing_key = "celery".into();
        message.properties.priority = 3;
        let decoded = Message::from_envelope_json(&message.to_envelope_json()).unwrap();
        assert_eq!(decoded.body, message.body);
        assert_eq!(decoded.headers, message.headers);
        assert_eq!(decoded.properties.priority, 3);
        assert_eq!(decoded.properties.delivery_info.routing_key, "celery");
    }

    #[test]
    fn headers_may_be_null_or_absent_but_not_another_type() {
        for text in [r#"{"body": "", "headers": null}"#, r#"{"body": ""}"#] {
            assert!(Message::from_envelope_json(text).unwrap().headers.is_empty(), "{text}");
        }
        let many: Map<String, Value> = (0..40).map(|i| (format!("h{i}"), Value::from(i))).collect();
        let text = serde_json::json!({"body": "", "headers": many}).to_string();
        assert_eq!(Message::from_envelope_json(&text).unwrap().headers, Headers::from(many));
        assert!(Message::from_envelope_json(r#"{"body": "", "headers": [1]}"#).is_err());
    }

    #[test]
    fn a_body_is_read_with_or_without_escapes_and_as_compact_json_if_not_a_string() {
        let read = |text: &str| Message::from_envelope_json(text).unwrap().body;
        // "[1]" in base64 is "WzFd"; JSON may escape any of its characters.
        let base64 = r#""properties": {"body_encoding": "base64"}"#;
        assert_eq!(read(&format!(r#"{{"body": "WzFd", {base64}}}"#)), b"[1]");
        assert_eq!(read(&format!(r#"{{"body": "Wz\u0046d", {base64}}}"#)), b"[1]");
        assert_eq!(read(r#"{"body": "a\/b \"c\""}"#), br#"a/b "c""#);
        assert_eq!(read(r#"{"body": [1, {"a": 2}]}"#), br#"[1,{"a":2}]"#);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for text in [
            "",
            "{",
            "[]",
            r#"{"body": "", "headers": 5}"#,
            "{\"body\": \"!!!\", \"properties\": {\"body_encoding\": \"base64\"}}",
        ] {
            assert!(Message::from_envelope_json(text).is_err(), "{text}");
        }
    }

    #[test]
    fn bodies_are_base64_when_they_look_it() {
        let envelope = r#"{"body": "W1tdLCB7fSwge31d", "headers": {}}"#;
        let encoded = base64::engine::general_purpose::STANDARD.encode(envelope);
        assert_eq!(from_sqs_body(&encoded), envelope);
        assert_eq!(from_sqs_body(envelope), envelope);
        assert_eq!(from_sqs_body("not base64!"), "not base64!");
    }
}

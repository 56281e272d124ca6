//! `tracing` output in the form Terraform shows under `TF_LOG`: go-plugin reads the plugin's
//! stderr, and lines that are hclog JSON objects (`@level`, `@message`, `@timestamp`, plus
//! fields) appear in Terraform's log at their own level; other lines appear at debug.
//!
//! The level comes from `TF_LOG_PROVIDER`, else `TF_LOG` (both inherited from Terraform), else
//! `warn`, so an ordinary run pays almost nothing for logging.

use std::io::Write;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Writes one hclog JSON object per event to stderr.
#[derive(Debug)]
pub struct HclogLayer {
    max: Level,
}

impl HclogLayer {
    /// A layer that keeps events at `max` or more severe.
    pub fn new(max: Level) -> Self {
        HclogLayer { max }
    }
}

/// The level Terraform asks for (`TF_LOG_PROVIDER`, else `TF_LOG`), `warn` when unset.
pub fn level_from_env() -> Level {
    let pick = |v: &str| match v.trim().to_ascii_lowercase().as_str() {
        "trace" | "json" => Some(Level::TRACE),
        "debug" => Some(Level::DEBUG),
        "info" => Some(Level::INFO),
        "warn" => Some(Level::WARN),
        "error" => Some(Level::ERROR),
        "" | "off" => None,
        _ => Some(Level::TRACE),
    };
    std::env::var("TF_LOG_PROVIDER")
        .ok()
        .and_then(|v| pick(&v))
        .or_else(|| std::env::var("TF_LOG").ok().and_then(|v| pick(&v)))
        .unwrap_or(Level::WARN)
}

/// Install the layer as the global subscriber (once; later calls do nothing).
pub fn init() {
    let subscriber = tracing_subscriber::registry().with(HclogLayer::new(level_from_env()));
    let _ = tracing::subscriber::set_global_default(subscriber);
}

struct Fields(Map<String, Value>, Option<String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.1 = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.0.insert(field.name().to_string(), value);
        }
    }
}

/// The hclog name of a level.
pub fn hclog_level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

/// Format one event as an hclog JSON line (without newline).
pub fn format_line(level: &Level, target: &str, message: &str, fields: Map<String, Value>) -> String {
    let mut obj = Map::new();
    obj.insert("@level".into(), Value::from(hclog_level(level)));
    obj.insert("@message".into(), Value::from(message));
    obj.insert("@module".into(), Value::from(target.replace("::", ".")));
    // go-plugin parses `@timestamp` with Go's layout "2006-01-02T15:04:05.000000Z07:00": exactly
    // six fractional digits, or the whole line is demoted to an unparsed debug line.
    let now = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        ))
        .unwrap_or_default();
    obj.insert("@timestamp".into(), Value::from(now));
    for (k, v) in fields {
        obj.insert(k, v);
    }
    Value::Object(obj).to_string()
}

impl<S: Subscriber> Layer<S> for HclogLayer {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        // Only our own crate: tonic/h2 internals would flood Terraform's log.
        *metadata.level() <= self.max && metadata.target().starts_with("homelab")
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields(Map::new(), None);
        event.record(&mut fields);
        let line = format_line(
            meta.level(),
            meta.target(),
            fields.1.as_deref().unwrap_or(""),
            fields.0,
        );
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_hclog_keys_and_fields() {
        let mut f = Map::new();
        f.insert("machine".into(), Value::from("acme-cp-1"));
        let line = format_line(&Level::INFO, "homelab::backend::vagrant", "vagrant up", f);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["@level"], "info");
        assert_eq!(v["@message"], "vagrant up");
        assert_eq!(v["@module"], "homelab.backend.vagrant");
        assert_eq!(v["machine"], "acme-cp-1");
        let ts = v["@timestamp"].as_str().unwrap();
        assert_eq!(ts.len(), "2026-11-26T07:12:56.047123Z".len(), "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
    }
}

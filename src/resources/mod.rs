//! Terraform resources: `homelab_instance` and `homelab_federation`. Each file holds the state
//! struct and the lifecycle methods in lifecycle order (schema, validate, read, plan, apply,
//! import); the work itself is done by the domain modules.

mod config_scan;
pub mod federation;
pub mod instance;
pub mod names;

use tf_provider::value::Value;

/// The known value, if any.
pub(crate) fn known<T: Clone>(v: &Value<T>) -> Option<T> {
    match v {
        Value::Value(x) => Some(x.clone()),
        _ => None,
    }
}

/// A known value.
pub(crate) fn val<T>(v: T) -> Value<T> {
    Value::Value(v)
}

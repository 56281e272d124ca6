//! Building blocks for Terraform schemas: every attribute is built through these so that none
//! can be declared without a description (the docs generator and a test check that too). Also
//! the two value helpers every resource uses: [`known`] and [`val`].

use std::collections::HashMap;

use tf_provider::schema::{Attribute, AttributeConstraint, AttributeType, Description};
use tf_provider::value::Value;

/// A string type.
pub fn string() -> AttributeType {
    AttributeType::String
}

/// A number type.
pub fn number() -> AttributeType {
    AttributeType::Number
}

/// A bool type.
pub fn boolean() -> AttributeType {
    AttributeType::Bool
}

/// A list of strings.
pub fn string_list() -> AttributeType {
    AttributeType::List(Box::new(AttributeType::String))
}

/// An object type from `(name, type)` pairs.
pub fn object(fields: &[(&str, AttributeType)]) -> AttributeType {
    AttributeType::Object(
        fields
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect(),
    )
}

fn attr(ty: AttributeType, constraint: AttributeConstraint, description: &str) -> Attribute {
    assert!(!description.trim().is_empty(), "every attribute is described");
    Attribute {
        attr_type: ty,
        description: Description::markdown(description),
        constraint,
        sensitive: false,
        deprecated: false,
    }
}

/// A required attribute.
pub fn required(ty: AttributeType, description: &str) -> Attribute {
    attr(ty, AttributeConstraint::Required, description)
}

/// An optional attribute without a provider-chosen value.
pub fn optional(ty: AttributeType, description: &str) -> Attribute {
    attr(ty, AttributeConstraint::Optional, description)
}

/// An optional attribute the provider fills in when not set (defaults, allocations).
pub fn optional_computed(ty: AttributeType, description: &str) -> Attribute {
    attr(ty, AttributeConstraint::OptionalComputed, description)
}

/// A read-only attribute.
pub fn computed(ty: AttributeType, description: &str) -> Attribute {
    attr(ty, AttributeConstraint::Computed, description)
}

/// The same attribute, marked deprecated (Terraform warns where a configuration uses it).
pub fn deprecated(mut a: Attribute) -> Attribute {
    a.deprecated = true;
    a
}

/// The same attribute, marked sensitive.
pub fn sensitive(mut a: Attribute) -> Attribute {
    a.sensitive = true;
    a
}

/// Attributes by name.
pub fn attributes(list: Vec<(&str, Attribute)>) -> HashMap<String, Attribute> {
    list.into_iter().map(|(n, a)| (n.to_string(), a)).collect()
}

/// A Terraform number that the provider uses as a whole number (counts, sizes, prefixes).
///
/// Terraform sends any number the configuration holds (`1.5`, `1e30`, and numbers too precise
/// for a float, which arrive as text); decoding them straight into an integer fails with a
/// message that names no attribute. This decodes every one of them, so that validation can
/// say which attribute is not a whole number; whole values are written back as integers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// A whole number that fits in 64 bits.
    Whole(i64),
    /// Anything else (a fraction, or too large).
    Other(f64),
}

impl Number {
    /// The whole value, if it is one.
    pub fn whole(&self) -> Option<i64> {
        match self {
            Number::Whole(n) => Some(*n),
            Number::Other(_) => None,
        }
    }
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Number::Whole(n) => write!(f, "{n}"),
            Number::Other(x) => write!(f, "{x}"),
        }
    }
}

impl From<i64> for Number {
    fn from(n: i64) -> Number {
        Number::Whole(n)
    }
}

impl serde::Serialize for Number {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Number::Whole(n) => s.serialize_i64(*n),
            Number::Other(x) => s.serialize_f64(*x),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Number {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Number, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Number;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Number, E> {
                Ok(Number::Whole(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Number, E> {
                Ok(i64::try_from(v).map(Number::Whole).unwrap_or(Number::Other(v as f64)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Number, E> {
                // 2^63 as a float: the first value past i64::MAX.
                const LIMIT: f64 = 9_223_372_036_854_775_808.0;
                if v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v) {
                    Ok(Number::Whole(v as i64))
                } else {
                    Ok(Number::Other(v))
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Number, E> {
                // Terraform's encoding of numbers that neither an integer nor a float holds.
                match v.parse::<i64>() {
                    Ok(n) => Ok(Number::Whole(n)),
                    Err(_) => v.parse::<f64>().map(Number::Other).map_err(|_| E::custom(format!("{v:?} is not a number"))),
                }
            }
        }
        d.deserialize_any(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tf_provider::value::Value;

    #[test]
    fn numbers_of_every_form_decode_and_fractions_are_told_apart() {
        let decode = |v: &serde_json::Value| -> Value<Number> {
            let mp = rmp_serde::to_vec(v).unwrap();
            rmp_serde::from_slice(&mp).unwrap()
        };
        assert_eq!(decode(&serde_json::json!(2)), Value::Value(Number::Whole(2)));
        assert_eq!(decode(&serde_json::json!(-3)), Value::Value(Number::Whole(-3)));
        assert_eq!(decode(&serde_json::json!(2.0)), Value::Value(Number::Whole(2)));
        assert_eq!(decode(&serde_json::json!(1.5)), Value::Value(Number::Other(1.5)));
        assert_eq!(decode(&serde_json::json!(u64::MAX)), Value::Value(Number::Other(u64::MAX as f64)));
        assert_eq!(decode(&serde_json::json!("0.1")), Value::Value(Number::Other(0.1)));
        assert_eq!(decode(&serde_json::json!("12")), Value::Value(Number::Whole(12)));
        assert_eq!(decode(&serde_json::json!(null)), Value::Null);
        assert_eq!(decode(&serde_json::json!(1e300)), Value::Value(Number::Other(1e300)));
        let mp = rmp_serde::to_vec_named(&Value::Value(Number::Whole(7))).unwrap();
        assert_eq!(mp, rmp_serde::to_vec_named(&7i64).unwrap());
    }
}

/// The known value of an attribute, if any (neither null nor unknown).
pub fn known<T: Clone>(v: &Value<T>) -> Option<T> {
    match v {
        Value::Value(x) => Some(x.clone()),
        _ => None,
    }
}

/// A known value.
pub fn val<T>(v: T) -> Value<T> {
    Value::Value(v)
}

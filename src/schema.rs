//! Building blocks for Terraform schemas: every attribute is built through these so that none
//! can be declared without a description (the docs generator and a test check that too).

use std::collections::HashMap;

use tf_provider::schema::{Attribute, AttributeConstraint, AttributeType, Description};

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

/// The same attribute, marked sensitive.
pub fn sensitive(mut a: Attribute) -> Attribute {
    a.sensitive = true;
    a
}

/// Attributes by name.
pub fn attributes(list: Vec<(&str, Attribute)>) -> HashMap<String, Attribute> {
    list.into_iter().map(|(n, a)| (n.to_string(), a)).collect()
}

// homelab patch: ephemeral resources (plugin protocol 6.7), written for this vendored copy.
//! Ephemeral resources: values Terraform opens when it needs them (during plan and apply) and
//! never records in state or plan files (Terraform 1.10+, OpenTofu 1.11+; older clients never
//! ask for them).

use crate::diagnostics::Diagnostics;
use crate::raw::RawValue;
use crate::schema::Schema;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// An ephemeral resource: its `State` is the configuration in, the result out.
#[async_trait]
pub trait EphemeralResource: Send + Sync {
    /// Configuration and result (one object, like a data source's).
    type State<'a>: Serialize + Deserialize<'a> + Send;

    /// Its schema.
    fn schema(&self, diags: &mut Diagnostics) -> Option<Schema>;

    /// Check a configuration (values may be unknown).
    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
        _ = diags;
        _ = config;
        Some(())
    }

    /// Open it: the result for `config` (fully known).
    async fn open<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<Self::State<'a>>;
}

/// [`EphemeralResource`] with values left encoded.
#[async_trait]
pub trait DynamicEphemeralResource: Send + Sync {
    /// Its schema.
    fn schema(&self, diags: &mut Diagnostics) -> Option<Schema>;
    /// Check a configuration.
    async fn validate(&self, diags: &mut Diagnostics, config: RawValue) -> Option<()>;
    /// Open it.
    async fn open(&self, diags: &mut Diagnostics, config: RawValue) -> Option<RawValue>;
}

#[async_trait]
impl<T: EphemeralResource> DynamicEphemeralResource for T {
    fn schema(&self, diags: &mut Diagnostics) -> Option<Schema> {
        <T as EphemeralResource>::schema(self, diags)
    }
    async fn validate(&self, diags: &mut Diagnostics, config: RawValue) -> Option<()> {
        let config = config.deserialize(diags)?;
        <T as EphemeralResource>::validate(self, diags, config).await
    }
    async fn open(&self, diags: &mut Diagnostics, config: RawValue) -> Option<RawValue> {
        let config = config.deserialize(diags)?;
        let result = <T as EphemeralResource>::open(self, diags, config).await?;
        RawValue::serialize(diags, &result)
    }
}

impl<T: EphemeralResource + 'static> From<T> for Box<dyn DynamicEphemeralResource> {
    fn from(value: T) -> Self {
        Box::new(value)
    }
}

//! A do-nothing provider on the same framework (tf-provider), for benchmarks only: the floor
//! of what a plan costs with this framework. `benchnull_resource` has an id and a `value`; read
//! returns the state as it is, plan proposes the config, create picks the id. Nothing else.

use std::collections::HashMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tf_provider::schema::{Attribute, AttributeConstraint, AttributeType, Block, Description, Schema};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{AttributePath, Diagnostics, DynamicResource, Provider, Resource};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    id: Value<String>,
    value: Value<String>,
}

struct NullResource;

#[async_trait]
impl Resource for NullResource {
    type State<'a> = State;
    type PrivateState<'a> = ValueEmpty;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        let mut attributes = HashMap::new();
        attributes.insert(
            "id".to_string(),
            Attribute {
                attr_type: AttributeType::String,
                description: Description::plain("id"),
                constraint: AttributeConstraint::Computed,
                ..Default::default()
            },
        );
        attributes.insert(
            "value".to_string(),
            Attribute {
                attr_type: AttributeType::String,
                description: Description::plain("value"),
                constraint: AttributeConstraint::Required,
                ..Default::default()
            },
        );
        Some(Schema {
            version: 1,
            block: Block {
                attributes,
                description: Description::plain("does nothing"),
                ..Default::default()
            },
        })
    }

    async fn read<'a>(&self, _d: &mut Diagnostics, s: State, p: ValueEmpty, _m: ValueEmpty) -> Option<(State, ValueEmpty)> {
        Some((s, p))
    }

    async fn plan_create<'a>(&self, _d: &mut Diagnostics, mut s: State, _c: State, _p: ValueEmpty, _m: ValueEmpty) -> Option<(State, ValueEmpty)> {
        s.id = Value::Unknown;
        Some((s, Value::Null))
    }

    async fn plan_update<'a>(&self, _d: &mut Diagnostics, prior: State, s: State, _c: State, p: ValueEmpty, _m: ValueEmpty) -> Option<(State, ValueEmpty, Vec<AttributePath>)> {
        let replace = if prior.value != s.value { vec![AttributePath::new("value")] } else { vec![] };
        Some((s, p, replace))
    }

    async fn plan_destroy<'a>(&self, _d: &mut Diagnostics, _s: State, p: ValueEmpty, _m: ValueEmpty) -> Option<ValueEmpty> {
        Some(p)
    }

    async fn create<'a>(&self, _d: &mut Diagnostics, mut s: State, _c: State, p: ValueEmpty, _m: ValueEmpty) -> Option<(State, ValueEmpty)> {
        s.id = s.value.clone();
        Some((s, p))
    }

    async fn update<'a>(&self, _d: &mut Diagnostics, _prior: State, s: State, _c: State, p: ValueEmpty, _m: ValueEmpty) -> Option<(State, ValueEmpty)> {
        Some((s, p))
    }

    async fn destroy<'a>(&self, _d: &mut Diagnostics, _s: State, _p: ValueEmpty, _m: ValueEmpty) -> Option<()> {
        Some(())
    }
}

struct NullProvider;

#[async_trait]
impl Provider for NullProvider {
    type Config<'a> = ValueEmpty;
    type MetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Schema {
            version: 1,
            block: Block::default(),
        })
    }

    fn get_resources(&self, _diags: &mut Diagnostics) -> Option<HashMap<String, Box<dyn DynamicResource>>> {
        let mut m: HashMap<String, Box<dyn DynamicResource>> = HashMap::new();
        m.insert("resource".into(), Box::new(NullResource));
        Some(m)
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = tf_provider::serve("benchnull", NullProvider).await {
        eprintln!("{e:#}");
        std::process::exit(1);
    }
}

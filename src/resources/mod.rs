//! Terraform resources: `homelab_instance` and `homelab_federation`. Each file holds the state
//! struct and the lifecycle methods in lifecycle order (schema, validate, read, plan, apply,
//! import); the work itself is done by the domain modules.

mod config_scan;
pub mod federation;
pub mod instance;
pub mod names;

//! What Terraform sends (MessagePack of a configuration or state, anything a configuration can
//! hold): decoding into the provider's state types never panics, and the MessagePack-to-JSON
//! transcoding of refreshed state gives JSON that parses.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tf_provider::RawValue;

fuzz_target!(|data: &[u8]| {
    if let Some(RawValue::Json(json)) = RawValue::MessagePack(data.to_vec()).to_known_json() {
        serde_json::from_slice::<serde_json::Value>(&json).expect("transcoded JSON parses");
    }
    let _ = rmp_serde::from_slice::<homelab::resources::instance::InstanceState>(data);
    let _ = rmp_serde::from_slice::<homelab::resources::federation::FederationState>(data);
    let _ = rmp_serde::from_slice::<homelab::provider::ProviderConfig>(data);
    let _ = rmp_serde::from_slice::<homelab::data_sources::cidr_allocation::CidrAllocationState>(data);
});

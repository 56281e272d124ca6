//! The local patches of the vendored tf-provider (vendor/tf-provider/PATCHES.md), tested
//! through its public API: the crate itself is not a workspace member, so its own tests do not
//! run in this build.

use serde::Serialize;
use tf_provider::value::Value;
use tf_provider::{Diagnostics, RawValue};

#[derive(Serialize)]
struct Sample {
    name: &'static str,
    small: i64,
    big: u64,
    negative: i64,
    ratio: f64,
    on: bool,
    none: Value<i64>,
    list: Vec<i64>,
    nested: std::collections::BTreeMap<&'static str, Vec<&'static str>>,
}

#[test]
fn known_message_pack_state_becomes_the_same_value_in_json() {
    let mut nested = std::collections::BTreeMap::new();
    nested.insert("nodes", vec!["a", "b"]);
    let sample = Sample {
        name: "acme",
        small: 2,
        big: u64::MAX,
        negative: -300,
        ratio: 0.1,
        on: true,
        none: Value::Null,
        list: vec![1, 200, 70000, -1, -40000, i64::MIN],
        nested,
    };
    let mp = RawValue::serialize(&mut Diagnostics::default(), &sample).unwrap();
    assert!(matches!(mp, RawValue::MessagePack(_)));
    let RawValue::Json(json) = mp.to_known_json().unwrap() else {
        panic!("not JSON")
    };
    let got: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(got, serde_json::to_value(&sample).unwrap());
}

#[test]
fn unknown_or_malformed_message_pack_stays_message_pack() {
    let unknown: Vec<Value<String>> = vec![Value::Value("a".into()), Value::Unknown];
    let mp = RawValue::serialize(&mut Diagnostics::default(), &unknown).unwrap();
    assert!(mp.to_known_json().is_none(), "an unknown value cannot be JSON");
    for bytes in [
        vec![0x92, 0x01],       // an array of two holding one value
        vec![0x01, 0x01],       // trailing bytes
        vec![0xc4, 0x01, 0x00], // binary
        vec![0x81, 0x01, 0x02], // a map with a number as key
        vec![0xa2, 0xff, 0xfe], // a string that is not UTF-8
    ] {
        assert!(RawValue::MessagePack(bytes.clone()).to_known_json().is_none(), "{bytes:x?}");
    }
    // An empty MessagePack value is null, as everywhere in tf-provider.
    let RawValue::Json(json) = RawValue::MessagePack(vec![]).to_known_json().unwrap() else {
        panic!("not JSON")
    };
    assert_eq!(json, b"null");
}

#[test]
fn nesting_deeper_than_any_terraform_value_is_refused_not_a_stack_overflow() {
    let mut bytes = vec![0x91; 100_000];
    bytes.push(0xc0);
    assert!(RawValue::MessagePack(bytes).to_known_json().is_none());
}

#[tokio::test]
async fn a_panicking_call_becomes_an_internal_error_naming_the_call_and_the_panic() {
    let ok: Result<u32, tonic::Status> = tf_provider::guard("read_resource", async { Ok(7) }).await;
    assert_eq!(ok.unwrap(), 7);
    let err = tf_provider::guard("plan_resource_change", async {
        let v: Vec<u32> = Vec::new();
        let i = v.len() + 3;
        Ok::<u32, tonic::Status>(v[i])
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal);
    assert!(err.message().contains("plan_resource_change") && err.message().contains("index out of bounds"), "{}", err.message());
    let err = tf_provider::guard("apply_resource_change", async {
        std::panic::panic_any(format!("boom {}", 42));
        #[allow(unreachable_code)]
        Ok::<(), tonic::Status>(())
    })
    .await
    .unwrap_err();
    assert!(err.message().contains("boom 42"), "{}", err.message());
}

// This file is part of the tf-provider project
//
// Copyright (C) ANEO, 2024-2024. All rights reserved.
//
// Licensed under the Apache License, Version 2.0 (the "License")
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! [`RawValue`] module

use crate::{diagnostics::Diagnostics, tfplugin6};
use serde::{Deserialize, Serialize};

/// Encode a dynamic value with either Message Pack or JSON encoding
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum RawValue {
    /// Message Pack encoded value
    MessagePack(Vec<u8>),
    /// JSON encoded value
    Json(Vec<u8>),
}

const NULL_MESSAGE_PACK: [u8; 1] = [0xc0_u8];
const NULL_JSON: &str = "null";

impl RawValue {
    /// Check if the encoded value is null
    pub fn is_null(&self) -> bool {
        match self {
            RawValue::MessagePack(mp) => mp.is_empty() || mp.as_slice() == NULL_MESSAGE_PACK,
            RawValue::Json(json) => json.is_empty() || json.as_slice() == NULL_JSON.as_bytes(),
        }
    }

    /// Deserialize a [`RawValue`] into a concrete type
    ///
    /// # Arguments
    ///
    /// * `diags` - diagnostics where deserialization errors and warnings are reported
    ///
    /// # Remarks
    ///
    /// Returns [`None`] iff there is an error reported in diagnostics
    pub fn deserialize<'a, T>(&'a self, diags: &mut Diagnostics) -> Option<T>
    where
        T: Deserialize<'a>,
    {
        match self {
            Self::MessagePack(mp) => {
                let slice = if mp.is_empty() {
                    &NULL_MESSAGE_PACK
                } else {
                    mp.as_slice()
                };
                match rmp_serde::from_slice::<T>(slice) {
                    Ok(value) => Some(value),
                    Err(err) => {
                        diags.root_error_short(err.to_string());
                        None
                    }
                }
            }
            Self::Json(json) => {
                let slice = if json.is_empty() {
                    NULL_JSON.as_bytes()
                } else {
                    json.as_slice()
                };
                match serde_json::from_slice::<T>(slice) {
                    Ok(value) => Some(value),
                    Err(err) => {
                        diags.root_error_short(err.to_string());
                        None
                    }
                }
            }
        }
    }

    /// Serialize `value` into a Message Pack encoded [`Vec<u8>`]
    ///
    /// # Arguments
    ///
    /// * `diags` - diagnostics where serialization errors and warnings are reported
    /// * `value` - object to encode
    ///
    /// # Remarks
    ///
    /// Returns [`None`] iff there is an error reported in diagnostics
    pub fn serialize_vec<T>(diags: &mut Diagnostics, value: &T) -> Option<Vec<u8>>
    where
        T: Serialize,
    {
        match rmp_serde::to_vec_named(value) {
            Ok(value) => Some(value),
            Err(err) => {
                diags.root_error_short(err.to_string());
                None
            }
        }
    }

    /// Serialize `value` into a [`RawValue`]
    ///
    /// # Arguments
    ///
    /// * `diags` - diagnostics where serialization errors and warnings are reported
    /// * `value` - object to encode
    ///
    /// # Remarks
    ///
    /// Returns [`None`] iff there is an error reported in diagnostics
    pub fn serialize<T>(diags: &mut Diagnostics, value: &T) -> Option<RawValue>
    where
        T: Serialize,
    {
        Some(Self::MessagePack(Self::serialize_vec(diags, value)?))
    }
}

impl RawValue {
    /// homelab patch: this value in JSON, when it is MessagePack holding only known values.
    ///
    /// Terraform decodes a number from JSON (its state file) and from MessagePack (a provider's
    /// answer) into differently built values, and its refresh-only mode compares the stored
    /// object with the refreshed one with `reflect.DeepEqual`: a refreshed state in MessagePack
    /// made every `plan -refresh-only -detailed-exitcode` report a change (exit 2, "No
    /// changes") for any resource with a number attribute, on Terraform 1.2 and later. Answered
    /// in JSON, the refreshed object is decoded exactly as the stored one. Values JSON cannot
    /// carry (unknown values, binary, non-finite or non-string-keyed data) give `None`: such a
    /// value stays in MessagePack.
    pub fn to_known_json(&self) -> Option<RawValue> {
        match self {
            RawValue::Json(_) => Some(self.clone()),
            RawValue::MessagePack(mp) => {
                let mut rd: &[u8] = if mp.is_empty() { &NULL_MESSAGE_PACK } else { mp };
                let value = msgpack_to_json(&mut rd, 0)?;
                if !rd.is_empty() {
                    return None;
                }
                serde_json::to_vec(&value).ok().map(RawValue::Json)
            }
        }
    }
}

/// Deeper than this is not a Terraform value (and would exhaust the stack).
const MAX_DEPTH: usize = 256;

/// One MessagePack value from the front of `rd`, as JSON; `None` when JSON cannot hold it.
fn msgpack_to_json(rd: &mut &[u8], depth: usize) -> Option<serde_json::Value> {
    use rmp::Marker;
    use serde_json::Value as J;
    fn take<'a>(rd: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if rd.len() < n {
            return None;
        }
        let (head, tail) = rd.split_at(n);
        *rd = tail;
        Some(head)
    }
    fn be(rd: &mut &[u8], n: usize) -> Option<u64> {
        Some(take(rd, n)?.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }
    fn text(rd: &mut &[u8], n: usize) -> Option<J> {
        std::str::from_utf8(take(rd, n)?).ok().map(|t| J::String(t.to_owned()))
    }
    if depth > MAX_DEPTH {
        return None;
    }
    let marker = Marker::from_u8(*take(rd, 1)?.first()?);
    let array = |rd: &mut &[u8], n: u64| -> Option<J> {
        let mut items = Vec::new();
        for _ in 0..n {
            items.push(msgpack_to_json(rd, depth + 1)?);
        }
        Some(J::Array(items))
    };
    let map = |rd: &mut &[u8], n: u64| -> Option<J> {
        let mut items = serde_json::Map::new();
        for _ in 0..n {
            let J::String(key) = msgpack_to_json(rd, depth + 1)? else {
                return None;
            };
            items.insert(key, msgpack_to_json(rd, depth + 1)?);
        }
        Some(J::Object(items))
    };
    match marker {
        Marker::Null => Some(J::Null),
        Marker::True => Some(J::Bool(true)),
        Marker::False => Some(J::Bool(false)),
        Marker::FixPos(v) => Some(J::from(v)),
        Marker::FixNeg(v) => Some(J::from(v)),
        Marker::U8 => Some(J::from(be(rd, 1)?)),
        Marker::U16 => Some(J::from(be(rd, 2)?)),
        Marker::U32 => Some(J::from(be(rd, 4)?)),
        Marker::U64 => Some(J::from(be(rd, 8)?)),
        Marker::I8 => Some(J::from(be(rd, 1)? as u8 as i8)),
        Marker::I16 => Some(J::from(be(rd, 2)? as u16 as i16)),
        Marker::I32 => Some(J::from(be(rd, 4)? as u32 as i32)),
        Marker::I64 => Some(J::from(be(rd, 8)? as i64)),
        Marker::F32 => serde_json::Number::from_f64(f64::from(f32::from_bits(be(rd, 4)? as u32))).map(J::Number),
        Marker::F64 => serde_json::Number::from_f64(f64::from_bits(be(rd, 8)?)).map(J::Number),
        Marker::FixStr(n) => text(rd, usize::from(n)),
        Marker::Str8 => { let n = be(rd, 1)? as usize; text(rd, n) }
        Marker::Str16 => { let n = be(rd, 2)? as usize; text(rd, n) }
        Marker::Str32 => { let n = be(rd, 4)? as usize; text(rd, n) }
        Marker::FixArray(n) => array(rd, u64::from(n)),
        Marker::Array16 => { let n = be(rd, 2)?; array(rd, n) }
        Marker::Array32 => { let n = be(rd, 4)?; array(rd, n) }
        Marker::FixMap(n) => map(rd, u64::from(n)),
        Marker::Map16 => { let n = be(rd, 2)?; map(rd, n) }
        Marker::Map32 => { let n = be(rd, 4)?; map(rd, n) }
        // Extensions (Terraform's unknown value), binary data and reserved markers.
        _ => None,
    }
}

impl From<tfplugin6::DynamicValue> for RawValue {
    fn from(value: tfplugin6::DynamicValue) -> Self {
        if value.msgpack.is_empty() {
            RawValue::Json(value.json)
        } else {
            RawValue::MessagePack(value.msgpack)
        }
    }
}

impl From<RawValue> for tfplugin6::DynamicValue {
    fn from(value: RawValue) -> Self {
        match value {
            RawValue::MessagePack(msgpack) => Self {
                msgpack,
                json: Default::default(),
            },
            RawValue::Json(json) => Self {
                msgpack: Default::default(),
                json,
            },
        }
    }
}

impl Default for RawValue {
    fn default() -> Self {
        RawValue::MessagePack(NULL_MESSAGE_PACK.to_vec())
    }
}


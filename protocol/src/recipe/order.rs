//! Section order of a `changeSpec` as its JSON text wrote it.
//!
//! Sections run in document order. A merged twin document or a sorted map may have lost
//! that order, so a device reads it again from the bytes that delivered the recipe.

use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Object keys of a JSON text in document order, nested objects included.
enum KeyTree {
    Object(Vec<(String, KeyTree)>),
    Leaf,
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = KeyTree;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyTree, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, KeyTree>()? {
            entries.push(entry);
        }
        Ok(KeyTree::Object(entries))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyTree, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(KeyTree::Leaf)
    }

    fn visit_bool<E>(self, _: bool) -> Result<KeyTree, E> {
        Ok(KeyTree::Leaf)
    }

    fn visit_i64<E>(self, _: i64) -> Result<KeyTree, E> {
        Ok(KeyTree::Leaf)
    }

    fn visit_u64<E>(self, _: u64) -> Result<KeyTree, E> {
        Ok(KeyTree::Leaf)
    }

    fn visit_f64<E>(self, _: f64) -> Result<KeyTree, E> {
        Ok(KeyTree::Leaf)
    }

    fn visit_str<E>(self, _: &str) -> Result<KeyTree, E> {
        Ok(KeyTree::Leaf)
    }

    fn visit_unit<E>(self) -> Result<KeyTree, E> {
        Ok(KeyTree::Leaf)
    }
}

impl<'de> Deserialize<'de> for KeyTree {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TreeVisitor)
    }
}

/// Member names of the `changeSpec` object inside the JSON text `bytes`, in the order the
/// text writes them. `pointer` leads from the top object to the `changeSpec`
/// (`["desired", "changeSpec"]` for a twin, `["changeSpec"]` for a patch). `None` when the
/// text is not JSON or holds no object there.
pub fn section_order(bytes: &[u8], pointer: &[&str]) -> Option<Vec<String>> {
    let mut current: KeyTree = serde_json::from_slice(bytes).ok()?;
    for wanted in pointer {
        let KeyTree::Object(entries) = current else {
            return None;
        };
        current = entries.into_iter().find(|(key, _)| key == wanted)?.1;
    }
    match current {
        KeyTree::Object(entries) => Some(entries.into_iter().map(|(key, _)| key).collect()),
        KeyTree::Leaf => None,
    }
}

//! The fields each client frame type may carry, and the check that a
//! frame carries no other (protocol/README.md §3): the tight client
//! schemas' `properties`, as a table a unit test holds against them.

use serde::Deserialize;

/// The fields each client frame type may carry besides `type` and `id`:
/// the properties of `protocol/schemas/client.<type>.json` (a unit test
/// holds the two together). Types of protocol 1.1 are listed as the naming
/// contract has them; a type absent here is refused as unknown anyway.
const FIELDS: &[(&str, &[&str])] = &[
    ("join", &["room", "since_seq", "epoch"]),
    ("leave", &["room"]),
    ("send", &["room", "body", "client_msg_id"]),
    ("typing", &["room"]),
    ("read", &["room", "seq"]),
    ("ping", &[]),
    ("pong", &[]),
    ("auth", &["token"]),
    ("sync", &["rooms"]),
    ("edit", &["room", "target_seq", "body", "client_msg_id"]),
    ("delete", &["room", "target_seq", "client_msg_id"]),
];

/// The fields a frame type may carry, if the type is known.
pub fn fields_of(ty: &str) -> Option<&'static [&'static str]> {
    FIELDS.iter().find(|(t, _)| *t == ty).map(|(_, f)| *f)
}

/// The first member of the JSON object `text` that is neither `type`, `id`
/// nor one of `allowed`. A second, allocation-free pass over a frame that
/// already parsed (client frames are small and rate-limited; nothing here
/// is on the delivery path).
pub(super) fn stray_field(text: &str, allowed: &[&str]) -> Option<String> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

    /// A member name, borrowed unless it had escapes.
    struct Key<'de>(std::borrow::Cow<'de, str>);
    impl<'de> Deserialize<'de> for Key<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a member name")
                }
                fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                    Ok(Key(std::borrow::Cow::Borrowed(v)))
                }
                fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                    Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
                }
            }
            d.deserialize_str(V)
        }
    }

    struct Check<'s>(&'s [&'s str]);
    impl<'de> DeserializeSeed<'de> for Check<'_> {
        type Value = Option<String>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Check<'_> {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut stray = None;
            while let Some(Key(k)) = map.next_key::<Key>()? {
                map.next_value::<IgnoredAny>()?;
                if stray.is_none() && k != "type" && k != "id" && !self.0.contains(&k.as_ref()) {
                    stray = Some(k.into_owned());
                }
            }
            Ok(stray)
        }
    }

    let mut de = serde_json::Deserializer::from_str(text);
    Check(allowed).deserialize(&mut de).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Field names of another helper's schema not in this tree yet; drop
    /// an entry once `client.<type>.json` lists the field.
    const PENDING: &[(&str, &str)] = &[("join", "epoch")];

    /// The server accepts exactly the fields the tight client schemas
    /// allow: every `client.<type>.json` has a `FIELDS` entry with the same
    /// properties (besides `type` and `id`), so the two cannot drift apart.
    #[test]
    fn fields_match_the_client_schemas() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/protocol/schemas");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let Some(ty) = name.strip_prefix("client.").and_then(|n| n.strip_suffix(".json")) else { continue };
            if ty.contains('.') {
                continue;
            }
            let schema: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(format!("{dir}/{name}")).unwrap()).unwrap();
            assert_eq!(schema["additionalProperties"], false, "{name} is tight");
            let mut in_schema: Vec<&str> = schema["properties"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "type" && *k != "id")
                .collect();
            let allowed = fields_of(ty).unwrap_or_else(|| panic!("{name}: no FIELDS entry for {ty:?}"));
            let mut allowed: Vec<&str> =
                allowed.iter().copied().filter(|f| in_schema.contains(f) || !PENDING.contains(&(ty, *f))).collect();
            in_schema.sort_unstable();
            allowed.sort_unstable();
            assert_eq!(allowed, in_schema, "FIELDS[{ty:?}] vs {name}");
            seen += 1;
        }
        assert!(seen >= 8, "client schemas found: {seen}");
    }
}

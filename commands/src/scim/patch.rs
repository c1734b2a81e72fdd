//! SCIM PATCH (RFC 7644 §3.5.2) over a resource's JSON: `add`, `replace` and `remove`, with
//! attribute paths, value-filter paths (`emails[type eq "work"].value`,
//! `members[value eq "…"]`), full-URN paths and no-path operations. Pure: the caller turns the
//! patched document back into commands.
//!
//! What real clients send is accepted: operation names in any case (Entra's `"Replace"`),
//! no-path values whose keys are themselves paths (`{"name.givenName": "…"}`), and Entra's
//! `remove` of `members` with a value list.

use serde_json::{Map, Value};

use super::filter::{get_ci, Filter, FilterError, PatchPath, ENTERPRISE_USER};

pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// `invalidSyntax`: the request is not a PatchOp.
    #[error("{0}")]
    Syntax(String),
    /// `invalidPath`.
    #[error("{0}")]
    Path(String),
    /// `noTarget`: a filter path matched nothing (replace) or a remove has no path.
    #[error("{0}")]
    NoTarget(String),
    /// `invalidValue`.
    #[error("{0}")]
    Value(String),
}

impl From<FilterError> for PatchError {
    fn from(e: FilterError) -> Self {
        PatchError::Path(e.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Replace,
    Remove,
}

/// Applies every operation of a PatchOp request to `doc`, in order.
pub fn apply(doc: &mut Value, request: &Value) -> Result<(), PatchError> {
    let obj = request
        .as_object()
        .ok_or_else(|| PatchError::Syntax("the body must be a PatchOp object".into()))?;
    let schemas_ok = get_ci(obj, "schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|v| v.as_str() == Some(PATCH_OP)));
    if !schemas_ok {
        return Err(PatchError::Syntax(format!(
            "schemas must contain {PATCH_OP}"
        )));
    }
    let ops = get_ci(obj, "Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| PatchError::Syntax("Operations must be an array".into()))?;
    for op in ops {
        let o = op
            .as_object()
            .ok_or_else(|| PatchError::Syntax("each operation must be an object".into()))?;
        let kind = match get_ci(o, "op")
            .and_then(Value::as_str)
            .map(str::to_lowercase)
        {
            Some(k) if k == "add" => Op::Add,
            Some(k) if k == "replace" => Op::Replace,
            Some(k) if k == "remove" => Op::Remove,
            _ => {
                return Err(PatchError::Syntax(
                    "op must be add, replace or remove".into(),
                ))
            }
        };
        let path = get_ci(o, "path")
            .and_then(Value::as_str)
            .filter(|p| !p.trim().is_empty());
        let value = get_ci(o, "value").cloned();
        apply_one(doc, kind, path, value)?;
    }
    Ok(())
}

fn apply_one(
    doc: &mut Value,
    op: Op,
    path: Option<&str>,
    value: Option<Value>,
) -> Result<(), PatchError> {
    let Some(path) = path else {
        if op == Op::Remove {
            return Err(PatchError::NoTarget("remove needs a path".into()));
        }
        let Some(Value::Object(values)) = value else {
            return Err(PatchError::Value(
                "an operation without a path needs an object value".into(),
            ));
        };
        for (k, v) in values {
            // An extension's object merges attribute by attribute.
            if k.eq_ignore_ascii_case(ENTERPRISE_USER) && v.is_object() {
                for (ek, ev) in v.as_object().cloned().unwrap_or_default() {
                    apply_one(doc, op, Some(&format!("{ENTERPRISE_USER}:{ek}")), Some(ev))?;
                }
                continue;
            }
            apply_one(doc, op, Some(&k), Some(v))?;
        }
        return Ok(());
    };
    // The extension itself: remove it, or add/replace its attributes one by one.
    if path.trim().eq_ignore_ascii_case(ENTERPRISE_USER) {
        let root = doc
            .as_object_mut()
            .ok_or_else(|| PatchError::Value("the resource is not an object".into()))?;
        let existing = existing_key(root, ENTERPRISE_USER);
        if let (Op::Remove | Op::Replace, Some(k)) = (op, existing) {
            root.remove(&k);
        }
        if op == Op::Remove {
            return Ok(());
        }
        return match value {
            Some(Value::Object(o)) => {
                for (k, v) in o {
                    apply_one(
                        doc,
                        Op::Add,
                        Some(&format!("{ENTERPRISE_USER}:{k}")),
                        Some(v),
                    )?;
                }
                Ok(())
            }
            _ => Err(PatchError::Value(
                "the extension's value must be an object".into(),
            )),
        };
    }
    let path = PatchPath::parse(path)?;
    if op != Op::Remove && value.is_none() {
        return Err(PatchError::Value("add and replace need a value".into()));
    }
    let root = doc
        .as_object_mut()
        .ok_or_else(|| PatchError::Value("the resource is not an object".into()))?;
    let container: &mut Map<String, Value> = match path.attr.extension() {
        Some(urn) => {
            let key = existing_key(root, urn).unwrap_or_else(|| urn.to_owned());
            let ext = root.entry(key).or_insert_with(|| Value::Object(Map::new()));
            if !ext.is_object() {
                *ext = Value::Object(Map::new());
            }
            ext.as_object_mut().expect("just made an object")
        }
        None => root,
    };
    let name = existing_key(container, &path.attr.name).unwrap_or(path.attr.name.clone());

    if path.filter.is_some() {
        return apply_filtered(container, &name, &path, op, value);
    }
    match (&path.attr.sub, op) {
        (Some(sub), Op::Remove) => {
            if let Some(Value::Object(parent)) = container.get_mut(&name) {
                if let Some(k) = existing_key(parent, sub) {
                    parent.remove(&k);
                }
            } else if let Some(Value::Array(items)) = container.get_mut(&name) {
                for item in items.iter_mut() {
                    if let Some(o) = item.as_object_mut() {
                        if let Some(k) = existing_key(o, sub) {
                            o.remove(&k);
                        }
                    }
                }
            }
        }
        (Some(sub), _) => {
            let parent = container
                .entry(name)
                .or_insert_with(|| Value::Object(Map::new()));
            match parent {
                Value::Object(o) => {
                    let k = existing_key(o, sub).unwrap_or(sub.clone());
                    o.insert(k, value.unwrap_or(Value::Null));
                }
                Value::Array(items) => {
                    for item in items.iter_mut().filter_map(Value::as_object_mut) {
                        let k = existing_key(item, sub).unwrap_or(sub.clone());
                        item.insert(k, value.clone().unwrap_or(Value::Null));
                    }
                }
                other => {
                    let mut o = Map::new();
                    o.insert(sub.clone(), value.unwrap_or(Value::Null));
                    *other = Value::Object(o);
                }
            }
        }
        (None, Op::Remove) => {
            match (container.get_mut(&name), value) {
                // Entra: remove these members (by value) from a multi-valued attribute.
                (Some(Value::Array(items)), Some(Value::Array(drop))) => {
                    items.retain(|i| !drop.iter().any(|d| same_value(i, d)));
                }
                _ => {
                    container.remove(&name);
                }
            }
        }
        (None, Op::Add) => {
            let value = value.unwrap_or(Value::Null);
            match (container.get_mut(&name), value) {
                (Some(Value::Array(items)), Value::Array(new)) => {
                    for v in new {
                        add_unique(items, v);
                    }
                }
                (Some(Value::Array(items)), v) if v.is_object() => add_unique(items, v),
                (Some(Value::Object(o)), Value::Object(new)) => {
                    for (k, v) in new {
                        let k = existing_key(o, &k).unwrap_or(k);
                        o.insert(k, v);
                    }
                }
                (_, v) => {
                    container.insert(name, v);
                }
            }
        }
        (None, Op::Replace) => {
            let value = value.unwrap_or(Value::Null);
            match (container.get_mut(&name), value) {
                (Some(Value::Object(o)), Value::Object(new)) => {
                    for (k, v) in new {
                        let k = existing_key(o, &k).unwrap_or(k);
                        o.insert(k, v);
                    }
                }
                (_, v) => {
                    container.insert(name, v);
                }
            }
        }
    }
    Ok(())
}

fn apply_filtered(
    container: &mut Map<String, Value>,
    name: &str,
    path: &PatchPath,
    op: Op,
    value: Option<Value>,
) -> Result<(), PatchError> {
    let items = match container.get_mut(name) {
        Some(Value::Array(items)) => items,
        _ if op == Op::Remove => return Ok(()),
        _ if op == Op::Add => {
            // Nothing to filter yet: an add through a filter creates the value it describes.
            container.insert(name.to_owned(), Value::Array(vec![]));
            match container.get_mut(name) {
                Some(Value::Array(items)) => items,
                _ => unreachable!("just inserted"),
            }
        }
        _ => {
            return Err(PatchError::NoTarget(format!(
                "no value of {name} matches the filter"
            )))
        }
    };
    let matching: Vec<usize> = (0..items.len())
        .filter(|i| path.selects(&items[*i]))
        .collect();
    match op {
        Op::Remove => match &path.sub_after_filter {
            None => {
                let mut i = 0;
                items.retain(|_| {
                    let keep = !matching.contains(&i);
                    i += 1;
                    keep
                });
            }
            Some(sub) => {
                for i in matching {
                    if let Some(o) = items[i].as_object_mut() {
                        if let Some(k) = existing_key(o, sub) {
                            o.remove(&k);
                        }
                    }
                }
            }
        },
        Op::Add | Op::Replace => {
            let value = value.unwrap_or(Value::Null);
            if matching.is_empty() {
                if op == Op::Replace {
                    return Err(PatchError::NoTarget(format!(
                        "no value of {name} matches the filter"
                    )));
                }
                // Okta adds `emails[type eq "work"].value`: make the value the filter names.
                let mut new = Map::new();
                if let Some(Filter::Compare(p, super::filter::CompareOp::Eq, v)) =
                    path.filter.as_ref()
                {
                    new.insert(p.name.clone(), v.clone());
                }
                match (&path.sub_after_filter, value) {
                    (Some(sub), v) => {
                        new.insert(sub.clone(), v);
                    }
                    (None, Value::Object(o)) => new.extend(o),
                    (None, _) => {
                        return Err(PatchError::Value("the value must be an object".into()))
                    }
                }
                items.push(Value::Object(new));
                return Ok(());
            }
            for i in matching {
                match (&path.sub_after_filter, &value) {
                    (Some(sub), v) => {
                        if let Some(o) = items[i].as_object_mut() {
                            let k = existing_key(o, sub).unwrap_or(sub.clone());
                            o.insert(k, v.clone());
                        }
                    }
                    (None, Value::Object(new)) => {
                        if let Some(o) = items[i].as_object_mut() {
                            if op == Op::Replace {
                                o.clear();
                            }
                            for (k, v) in new {
                                let k = existing_key(o, k).unwrap_or(k.clone());
                                o.insert(k, v.clone());
                            }
                        }
                    }
                    (None, _) => {
                        return Err(PatchError::Value("the value must be an object".into()))
                    }
                }
            }
        }
    }
    Ok(())
}

/// The key of `obj` equal to `key` ignoring case.
fn existing_key(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.keys().find(|k| k.eq_ignore_ascii_case(key)).cloned()
}

/// Two values of a multi-valued attribute are the same when their `value`s are (or, without
/// `value`, when they are equal).
fn same_value(a: &Value, b: &Value) -> bool {
    let v = |x: &Value| {
        x.as_object()
            .and_then(|o| get_ci(o, "value"))
            .cloned()
            .unwrap_or_else(|| x.clone())
    };
    v(a) == v(b)
}

fn add_unique(items: &mut Vec<Value>, v: Value) {
    if !items.iter().any(|i| same_value(i, &v)) {
        items.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patch(doc: &mut Value, ops: Value) -> Result<(), PatchError> {
        apply(doc, &json!({"schemas": [PATCH_OP], "Operations": ops}))
    }

    fn user() -> Value {
        json!({
            "userName": "bjensen",
            "active": true,
            "name": {"givenName": "Barbara"},
            "emails": [{"value": "b@work.example", "type": "work", "primary": true}],
        })
    }

    #[test]
    fn entra_style_replace_with_string_booleans_and_dotted_keys() {
        let mut d = user();
        patch(
            &mut d,
            json!([{"op": "Replace", "path": "active", "value": "False"},
                   {"op": "Replace", "value": {"name.familyName": "Jensen", "displayName": "Babs"}}]),
        )
        .unwrap();
        assert_eq!(d["active"], "False");
        assert_eq!(
            d["name"],
            json!({"givenName": "Barbara", "familyName": "Jensen"})
        );
        assert_eq!(d["displayName"], "Babs");
    }

    #[test]
    fn okta_style_no_path_replace_and_value_filter_paths() {
        let mut d = user();
        patch(
            &mut d,
            json!([{"op": "replace", "value": {"active": false}}]),
        )
        .unwrap();
        assert_eq!(d["active"], false);
        patch(
            &mut d,
            json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "new@work.example"}]),
        )
        .unwrap();
        assert_eq!(d["emails"][0]["value"], "new@work.example");
        patch(
            &mut d,
            json!([{"op": "add", "path": "emails[type eq \"home\"].value", "value": "h@home.example"}]),
        )
        .unwrap();
        assert_eq!(
            d["emails"][1],
            json!({"type": "home", "value": "h@home.example"})
        );
        let e = patch(
            &mut d,
            json!([{"op": "replace", "path": "phoneNumbers[type eq \"work\"].value", "value": "1"}]),
        );
        assert!(matches!(e, Err(PatchError::NoTarget(_))));
    }

    #[test]
    fn enterprise_urn_paths_and_urn_keyed_values() {
        let mut d = user();
        let urn = super::super::filter::ENTERPRISE_USER;
        patch(
            &mut d,
            json!([{"op": "Add", "path": format!("{urn}:department"), "value": "R&D"},
                   {"op": "replace", "value": {urn: {"costCenter": "42"}}},
                   {"op": "add", "path": format!("{urn}:manager.value"), "value": "m1"}]),
        )
        .unwrap();
        assert_eq!(
            d[urn],
            json!({"department": "R&D", "costCenter": "42", "manager": {"value": "m1"}})
        );
        patch(
            &mut d,
            json!([{"op": "remove", "path": format!("{urn}:department")}]),
        )
        .unwrap();
        assert!(d[urn].get("department").is_none());
    }

    #[test]
    fn group_membership_the_okta_and_entra_ways() {
        let mut g = json!({"displayName": "Eng", "members": [{"value": "u1"}]});
        patch(
            &mut g,
            json!([{"op": "add", "path": "members", "value": [{"value": "u2"}, {"value": "u1"}]}]),
        )
        .unwrap();
        assert_eq!(g["members"], json!([{"value": "u1"}, {"value": "u2"}]));
        patch(
            &mut g,
            json!([{"op": "remove", "path": "members[value eq \"u1\"]"}]),
        )
        .unwrap();
        assert_eq!(g["members"], json!([{"value": "u2"}]));
        patch(
            &mut g,
            json!([{"op": "Remove", "path": "members", "value": [{"value": "u2"}]}]),
        )
        .unwrap();
        assert_eq!(g["members"], json!([]));
        patch(
            &mut g,
            json!([{"op": "replace", "path": "members", "value": [{"value": "u3"}]}]),
        )
        .unwrap();
        assert_eq!(g["members"], json!([{"value": "u3"}]));
        patch(&mut g, json!([{"op": "remove", "path": "members"}])).unwrap();
        assert!(g.get("members").is_none());
    }

    #[test]
    fn malformed_requests_are_refused() {
        let mut d = user();
        assert!(matches!(
            apply(&mut d, &json!({"Operations": []})),
            Err(PatchError::Syntax(_))
        ));
        assert!(matches!(
            patch(&mut d, json!([{"op": "move", "path": "x", "value": 1}])),
            Err(PatchError::Syntax(_))
        ));
        assert!(matches!(
            patch(&mut d, json!([{"op": "remove"}])),
            Err(PatchError::NoTarget(_))
        ));
        assert!(matches!(
            patch(
                &mut d,
                json!([{"op": "add", "path": "emails[type eq", "value": 1}])
            ),
            Err(PatchError::Path(_))
        ));
    }
}

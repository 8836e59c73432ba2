//! SCIM PATCH (RFC 7644 §3.5.2) applied to a stored resource (a JSON object): `add`,
//! `replace` and `remove`, with or without a `path`; paths with a schema URN, a
//! sub-attribute, and a value filter (`emails[type eq "work"].value`,
//! `members[value eq "u1"]`); multi-valued attributes. Pure: the caller loads the
//! resource, applies, validates and stores it in one transaction.
//!
//! The quirks of the big identity providers are accepted: Microsoft Entra ID sends `op` in
//! any case (`"Replace"`) and booleans as strings (`"False"`); Okta deactivates with a
//! `replace` of `active` without a path (`{"op": "replace", "value": {"active": false}}`).
//! Attribute names match in any case; a value keeps the name the resource already uses.

use serde_json::{Map, Value};

use super::filter::{self, AttrPath, CompValue, CompareOp, Filter};

/// The PatchOp message schema.
pub const PATCH_OP_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// Operations in one request at most (a group push of thousands of members is one
/// operation with thousands of values, not thousands of operations).
pub const MAX_OPERATIONS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Add,
    Replace,
    Remove,
}

/// One parsed operation.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchOperation {
    pub kind: PatchKind,
    pub path: Option<PatchPath>,
    pub value: Option<Value>,
}

/// `attr[filter].sub`, each part optional but `attr`.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPath {
    pub attr: AttrPath,
    pub filter: Option<Filter>,
    /// The sub-attribute after a value filter (`emails[type eq "work"].value`).
    pub sub: Option<String>,
}

/// Why a PATCH was refused, with its SCIM `scimType`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("{0}")]
    InvalidSyntax(String),
    #[error("invalid path: {0}")]
    InvalidPath(String),
    #[error("no target: {0}")]
    NoTarget(String),
    #[error("invalid value: {0}")]
    InvalidValue(String),
    #[error("{0} cannot be modified")]
    Mutability(String),
    #[error("too many operations: at most {MAX_OPERATIONS}")]
    TooMany,
}

impl PatchError {
    /// The `scimType` of the SCIM error answer.
    pub fn scim_type(&self) -> &'static str {
        match self {
            PatchError::InvalidSyntax(_) => "invalidSyntax",
            PatchError::InvalidPath(_) => "invalidPath",
            PatchError::NoTarget(_) => "noTarget",
            PatchError::InvalidValue(_) => "invalidValue",
            PatchError::Mutability(_) => "mutability",
            PatchError::TooMany => "tooMany",
        }
    }
}

/// What the service knows of a resource type's attributes, for PATCH.
pub struct PatchSchema {
    /// The resource's core schema URN (a path may carry it).
    pub core: &'static str,
    /// Extension schema URNs: their attributes live in an object under the URN.
    pub extensions: &'static [&'static str],
    /// Lower-case names of the multi-valued attributes (`emails`, `members`).
    pub multi_valued: &'static [&'static str],
    /// Lower-case names of boolean attributes and sub-attributes (`active`, `primary`).
    pub booleans: &'static [&'static str],
    /// Lower-case names a client may not change (`id`, `meta`, `groups` of a User).
    pub read_only: &'static [&'static str],
    /// Lower-case `attr.sub` names compared case-exactly in path filters (`members.value`).
    pub case_exact: &'static [&'static str],
}

/// Parses a PatchOp request body.
pub fn parse_request(body: &Value) -> Result<Vec<PatchOperation>, PatchError> {
    let syntax = |m: &str| PatchError::InvalidSyntax(m.to_owned());
    let obj = body
        .as_object()
        .ok_or_else(|| syntax("the body must be a JSON object"))?;
    let schemas = get_ci(obj, "schemas").and_then(Value::as_array);
    if !schemas.is_some_and(|s| s.iter().any(|v| v.as_str() == Some(PATCH_OP_SCHEMA))) {
        return Err(syntax(
            "schemas must name urn:ietf:params:scim:api:messages:2.0:PatchOp",
        ));
    }
    let ops = get_ci(obj, "Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| syntax("Operations must be an array"))?;
    if ops.is_empty() {
        return Err(syntax("Operations is empty"));
    }
    if ops.len() > MAX_OPERATIONS {
        return Err(PatchError::TooMany);
    }
    ops.iter().map(parse_operation).collect()
}

fn parse_operation(op: &Value) -> Result<PatchOperation, PatchError> {
    let syntax = |m: &str| PatchError::InvalidSyntax(m.to_owned());
    let obj = op
        .as_object()
        .ok_or_else(|| syntax("an operation must be an object"))?;
    let kind = match get_ci(obj, "op")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
    {
        Some(k) if k == "add" => PatchKind::Add,
        Some(k) if k == "replace" => PatchKind::Replace,
        Some(k) if k == "remove" => PatchKind::Remove,
        _ => return Err(syntax("op must be add, replace or remove")),
    };
    let path = match get_ci(obj, "path") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) if p.trim().is_empty() => None,
        Some(Value::String(p)) => Some(parse_path(p)?),
        Some(_) => return Err(PatchError::InvalidPath("path must be a string".into())),
    };
    let value = get_ci(obj, "value").cloned();
    match (kind, &path, &value) {
        (PatchKind::Remove, None, _) => Err(PatchError::NoTarget("remove needs a path".into())),
        (PatchKind::Add | PatchKind::Replace, _, None) => {
            Err(syntax("add and replace need a value"))
        }
        (PatchKind::Add | PatchKind::Replace, None, Some(v)) if !v.is_object() => Err(
            PatchError::InvalidValue("without a path, the value must be an object".into()),
        ),
        _ => Ok(PatchOperation { kind, path, value }),
    }
}

/// Parses `attr`, `attr.sub`, `urn:...:attr`, `attr[filter]`, `attr[filter].sub`.
pub fn parse_path(raw: &str) -> Result<PatchPath, PatchError> {
    let invalid = |m: &str| {
        PatchError::InvalidPath(format!(
            "{m}: {}",
            raw.chars().take(100).collect::<String>()
        ))
    };
    if raw.len() > filter::MAX_FILTER_CHARS {
        return Err(invalid("too long"));
    }
    let Some(open) = raw.find('[') else {
        let attr = AttrPath::parse(raw.trim()).ok_or_else(|| invalid("not an attribute path"))?;
        return Ok(PatchPath {
            attr,
            filter: None,
            sub: None,
        });
    };
    let close = raw.rfind(']').ok_or_else(|| invalid("unclosed ["))?;
    if close < open {
        return Err(invalid("unclosed ["));
    }
    let attr =
        AttrPath::parse(raw[..open].trim()).ok_or_else(|| invalid("not an attribute path"))?;
    if attr.sub.is_some() {
        return Err(invalid(
            "a value filter applies to a multi-valued attribute",
        ));
    }
    let inner =
        filter::parse(&raw[open + 1..close]).map_err(|e| PatchError::InvalidPath(e.to_string()))?;
    let rest = raw[close + 1..].trim();
    let sub = match rest.strip_prefix('.') {
        None if rest.is_empty() => None,
        Some(s) if AttrPath::parse(s).is_some_and(|p| p.schema.is_none() && p.sub.is_none()) => {
            Some(s.to_owned())
        }
        _ => return Err(invalid("only .subAttribute may follow ]")),
    };
    Ok(PatchPath {
        attr,
        filter: Some(inner),
        sub,
    })
}

/// True when `target` names `item` of a multi-valued attribute: by their `value` when both
/// are complex values carrying one, else by equality.
fn same_value(item: &Value, target: &Value) -> bool {
    match (item.get("value"), target.get("value")) {
        (Some(a), Some(b)) => a == b,
        _ => item == target,
    }
}

/// Applies `ops` in order to `resource` (a JSON object). On error the resource is left as
/// the operations before the failing one made it: apply to a copy, store only on success.
pub fn apply(
    resource: &mut Value,
    ops: &[PatchOperation],
    schema: &PatchSchema,
) -> Result<(), PatchError> {
    let root = resource
        .as_object_mut()
        .ok_or_else(|| PatchError::InvalidValue("the resource is not an object".into()))?;
    for op in ops {
        apply_one(root, op, schema)?;
    }
    Ok(())
}

fn apply_one(
    root: &mut Map<String, Value>,
    op: &PatchOperation,
    schema: &PatchSchema,
) -> Result<(), PatchError> {
    let Some(path) = &op.path else {
        // No path: the value is an object of attributes (possibly schema-qualified keys).
        let Some(Value::Object(values)) = &op.value else {
            return Err(PatchError::InvalidValue(
                "without a path, the value must be an object".into(),
            ));
        };
        for (key, v) in values {
            // Okta renames a group with `{"op": "replace", "value": {"id": .., "displayName":
            // ..}}`: read-only attributes inside a path-less value are ignored, as in a PUT.
            if schema.read_only.iter().any(|r| key.eq_ignore_ascii_case(r))
                || key.eq_ignore_ascii_case("schemas")
            {
                continue;
            }
            let p = if schema
                .extensions
                .iter()
                .any(|e| e.eq_ignore_ascii_case(key))
            {
                // `{"urn:...:enterprise:2.0:User": {"department": "x"}}`: each attribute.
                let Value::Object(inner) = v else {
                    return Err(PatchError::InvalidValue(format!("{key} must be an object")));
                };
                for (k, iv) in inner {
                    let attr = AttrPath::parse(&format!("{key}:{k}"))
                        .ok_or_else(|| PatchError::InvalidPath(k.clone()))?;
                    let sub = PatchOperation {
                        kind: op.kind,
                        path: Some(PatchPath {
                            attr,
                            filter: None,
                            sub: None,
                        }),
                        value: Some(iv.clone()),
                    };
                    apply_one(root, &sub, schema)?;
                }
                continue;
            } else {
                AttrPath::parse(key).ok_or_else(|| PatchError::InvalidPath(key.clone()))?
            };
            let sub = PatchOperation {
                kind: op.kind,
                path: Some(PatchPath {
                    attr: p,
                    filter: None,
                    sub: None,
                }),
                value: Some(v.clone()),
            };
            apply_one(root, &sub, schema)?;
        }
        return Ok(());
    };
    // The whole extension as the path (`urn:...:enterprise:2.0:User`): the URN parses as
    // a schema and a last name; taken together they name the extension's object.
    if let (Some(s), None, None) = (&path.attr.schema, &path.filter, &path.attr.sub) {
        let whole = format!("{s}:{}", path.attr.name);
        if let Some(urn) = schema
            .extensions
            .iter()
            .find(|e| e.eq_ignore_ascii_case(&whole))
        {
            let key = key_ci(root, urn).unwrap_or_else(|| urn.to_string());
            return match (op.kind, op.value.clone()) {
                (PatchKind::Remove, _) => {
                    root.remove(&key);
                    Ok(())
                }
                (PatchKind::Replace, Some(v @ Value::Object(_))) => {
                    root.insert(key, v);
                    Ok(())
                }
                (PatchKind::Add, Some(v @ Value::Object(_))) => {
                    let mut values = Map::new();
                    values.insert(urn.to_string(), v);
                    let whole_op = PatchOperation {
                        kind: PatchKind::Add,
                        path: None,
                        value: Some(Value::Object(values)),
                    };
                    apply_one(root, &whole_op, schema)
                }
                _ => Err(PatchError::InvalidValue(format!("{urn} must be an object"))),
            };
        }
    }
    let name = path.attr.name.to_ascii_lowercase();
    if schema.read_only.contains(&name.as_str()) {
        return Err(PatchError::Mutability(path.attr.name.clone()));
    }
    // The object holding the attribute: the resource, or the extension's object.
    let container: &mut Map<String, Value> = match &path.attr.schema {
        None => root,
        Some(s) if s.eq_ignore_ascii_case(schema.core) => root,
        Some(s) => {
            let urn = schema
                .extensions
                .iter()
                .find(|e| e.eq_ignore_ascii_case(s))
                .ok_or_else(|| PatchError::InvalidPath(format!("unknown schema {s}")))?;
            if op.kind == PatchKind::Remove && key_ci(root, urn).is_none() {
                return Ok(());
            }
            let key = key_ci(root, urn).unwrap_or_else(|| urn.to_string());
            let ext = root.entry(key).or_insert_with(|| Value::Object(Map::new()));
            ext.as_object_mut()
                .ok_or_else(|| PatchError::InvalidValue(format!("{urn} must be an object")))?
        }
    };
    let multi = schema.multi_valued.contains(&name.as_str());
    let value = op.value.clone().map(|v| coerce(v, &name, schema));
    match (&path.filter, &path.attr.sub) {
        (None, None) => {
            let key = key_ci(container, &path.attr.name).unwrap_or_else(|| path.attr.name.clone());
            match op.kind {
                // Entra removes members by listing them as the value of a `remove` of the
                // attribute: only those go (matched by their `value`).
                PatchKind::Remove if multi && value.as_ref().is_some_and(|v| !v.is_null()) => {
                    let targets = match value {
                        Some(Value::Array(items)) => items,
                        Some(v) => vec![v],
                        None => vec![],
                    };
                    if let Some(Value::Array(items)) = container.get_mut(&key) {
                        items.retain(|item| !targets.iter().any(|t| same_value(item, t)));
                        if items.is_empty() {
                            container.remove(&key);
                        }
                    }
                }
                PatchKind::Remove => {
                    container.remove(&key);
                }
                PatchKind::Add if multi => {
                    let mut add = match value {
                        Some(Value::Array(items)) => items,
                        Some(v) => vec![v],
                        None => vec![],
                    };
                    let list = container.entry(key).or_insert_with(|| Value::Array(vec![]));
                    let Value::Array(items) = list else {
                        return Err(PatchError::InvalidValue(format!(
                            "{} is not multi-valued here",
                            path.attr.name
                        )));
                    };
                    // Adding a value already present changes nothing (RFC 7644 §3.5.2.1).
                    add.retain(|v| !items.contains(v));
                    items.extend(add);
                }
                PatchKind::Add | PatchKind::Replace => {
                    let v = value.unwrap_or(Value::Null);
                    if multi && !v.is_array() {
                        container.insert(key, Value::Array(vec![v]));
                    } else if op.kind == PatchKind::Add && v.is_object() {
                        // Adding a complex value merges its sub-attributes.
                        let target = container
                            .entry(key)
                            .or_insert_with(|| Value::Object(Map::new()));
                        merge(target, v);
                    } else {
                        container.insert(key, v);
                    }
                }
            }
        }
        (None, Some(sub)) => {
            // `name.givenName`, `manager.value`: a sub-attribute of a complex attribute; of
            // every element when the attribute is multi-valued.
            let key = key_ci(container, &path.attr.name).unwrap_or_else(|| path.attr.name.clone());
            if multi {
                let Some(Value::Array(items)) = container.get_mut(&key) else {
                    return match op.kind {
                        PatchKind::Remove => Ok(()),
                        _ => Err(PatchError::NoTarget(format!(
                            "{} has no values",
                            path.attr.name
                        ))),
                    };
                };
                for item in items.iter_mut() {
                    set_sub(item, sub, op.kind, value.clone());
                }
            } else {
                if op.kind == PatchKind::Remove && !container.contains_key(&key) {
                    return Ok(());
                }
                let target = container
                    .entry(key)
                    .or_insert_with(|| Value::Object(Map::new()));
                set_sub(target, sub, op.kind, value);
            }
        }
        (Some(f), _) => {
            if !multi {
                return Err(PatchError::InvalidPath(format!(
                    "{} is not multi-valued",
                    path.attr.name
                )));
            }
            let key = key_ci(container, &path.attr.name).unwrap_or_else(|| path.attr.name.clone());
            let exact = |sub: &str| {
                let full = format!("{name}.{}", sub.to_ascii_lowercase());
                schema.case_exact.contains(&full.as_str())
            };
            let items = match container.get_mut(&key) {
                Some(Value::Array(items)) => items,
                _ if op.kind == PatchKind::Remove => return Ok(()),
                _ => {
                    return Err(PatchError::NoTarget(format!(
                        "no value of {} matches",
                        path.attr.name
                    )))
                }
            };
            let matching: Vec<usize> = (0..items.len())
                .filter(|i| matches(&items[*i], f, &exact))
                .collect();
            if matching.is_empty() {
                // Removing what is not there leaves it not there (Entra and Okta remove
                // members that may have gone); replacing nothing has no target.
                return match op.kind {
                    PatchKind::Remove => Ok(()),
                    _ => Err(PatchError::NoTarget(format!(
                        "no value of {} matches the filter",
                        path.attr.name
                    ))),
                };
            }
            match (&path.sub, op.kind) {
                (None, PatchKind::Remove) => {
                    for i in matching.into_iter().rev() {
                        items.remove(i);
                    }
                }
                (None, _) => {
                    for i in matching {
                        match &value {
                            Some(v @ Value::Object(_)) if op.kind == PatchKind::Add => {
                                merge(&mut items[i], v.clone())
                            }
                            Some(v) => items[i] = v.clone(),
                            None => {}
                        }
                    }
                }
                (Some(sub), kind) => {
                    for i in matching {
                        set_sub(&mut items[i], sub, kind, value.clone());
                    }
                }
            }
            if items.is_empty() {
                container.remove(&key);
            }
        }
    }
    Ok(())
}

/// The value of `key` in any case.
fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// The key the object already uses for `name` (in any case).
fn key_ci(obj: &Map<String, Value>, name: &str) -> Option<String> {
    obj.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned()
}

/// Entra sends booleans as strings ("True", "False"): made booleans for boolean attributes,
/// also inside the objects of a value.
fn coerce(v: Value, name: &str, schema: &PatchSchema) -> Value {
    match v {
        Value::String(s) if schema.booleans.contains(&name) => {
            match s.to_ascii_lowercase().as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => Value::String(s),
            }
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    (k, coerce(v, &lower, schema))
                })
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| coerce(v, name, schema)).collect())
        }
        other => other,
    }
}

/// Adds the sub-attributes of `add` to `target` (an object; anything else is replaced).
fn merge(target: &mut Value, add: Value) {
    match (target, add) {
        (Value::Object(t), Value::Object(a)) => {
            for (k, v) in a {
                let key = key_ci(t, &k).unwrap_or(k);
                t.insert(key, v);
            }
        }
        (t, a) => *t = a,
    }
}

/// Sets or removes the sub-attribute `sub` of one complex value.
fn set_sub(target: &mut Value, sub: &str, kind: PatchKind, value: Option<Value>) {
    if !target.is_object() {
        if kind == PatchKind::Remove {
            return;
        }
        *target = Value::Object(Map::new());
    }
    let Value::Object(obj) = target else { return };
    let key = key_ci(obj, sub).unwrap_or_else(|| sub.to_owned());
    match kind {
        PatchKind::Remove => {
            obj.remove(&key);
        }
        _ => {
            obj.insert(key, value.unwrap_or(Value::Null));
        }
    }
}

/// Whether one element of a multi-valued attribute matches a path filter (evaluated here:
/// the resource is in memory). `exact(sub)` says whether `sub` compares case-exactly.
fn matches(item: &Value, f: &Filter, exact: &dyn Fn(&str) -> bool) -> bool {
    match f {
        Filter::And(a, b) => matches(item, a, exact) && matches(item, b, exact),
        Filter::Or(a, b) => matches(item, a, exact) || matches(item, b, exact),
        Filter::Not(a) => !matches(item, a, exact),
        Filter::ValuePath { .. } => false,
        Filter::Present(p) => {
            sub_value(item, p).is_some_and(|v| !v.is_null() && v != &Value::String(String::new()))
        }
        Filter::Compare { path, op, value } => {
            let Some(actual) = sub_value(item, path) else {
                return *op == CompareOp::Ne && *value != CompValue::Null;
            };
            compare(actual, *op, value, exact(&path.name))
        }
    }
}

fn sub_value<'a>(item: &'a Value, p: &AttrPath) -> Option<&'a Value> {
    let obj = item.as_object()?;
    get_ci(obj, &p.name)
}

fn compare(actual: &Value, op: CompareOp, expected: &CompValue, exact: bool) -> bool {
    use std::cmp::Ordering;
    let ordering: Option<Ordering> = match (actual, expected) {
        (Value::String(a), CompValue::Str(e)) => {
            let (a, e) = if exact {
                (a.clone(), e.clone())
            } else {
                (a.to_lowercase(), e.to_lowercase())
            };
            return match op {
                CompareOp::Eq => a == e,
                CompareOp::Ne => a != e,
                CompareOp::Co => a.contains(&e),
                CompareOp::Sw => a.starts_with(&e),
                CompareOp::Ew => a.ends_with(&e),
                CompareOp::Gt => a > e,
                CompareOp::Ge => a >= e,
                CompareOp::Lt => a < e,
                CompareOp::Le => a <= e,
            };
        }
        (Value::Bool(a), CompValue::Bool(e)) => Some(a.cmp(e)),
        // Entra: booleans as strings.
        (Value::String(a), CompValue::Bool(e)) => a
            .to_ascii_lowercase()
            .parse::<bool>()
            .ok()
            .map(|a| a.cmp(e)),
        (Value::Number(a), CompValue::Num(e)) => a
            .as_f64()
            .zip(e.parse::<f64>().ok())
            .and_then(|(a, e)| a.partial_cmp(&e)),
        (Value::Null, CompValue::Null) => Some(Ordering::Equal),
        _ => None,
    };
    match (op, ordering) {
        (CompareOp::Eq, Some(o)) => o == Ordering::Equal,
        (CompareOp::Ne, Some(o)) => o != Ordering::Equal,
        (CompareOp::Ne, None) => true,
        (CompareOp::Gt, Some(o)) => o == Ordering::Greater,
        (CompareOp::Ge, Some(o)) => o != Ordering::Less,
        (CompareOp::Lt, Some(o)) => o == Ordering::Less,
        (CompareOp::Le, Some(o)) => o != Ordering::Greater,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const USER: PatchSchema = PatchSchema {
        core: "urn:ietf:params:scim:schemas:core:2.0:User",
        extensions: &["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
        multi_valued: &["emails", "phonenumbers", "roles", "groups", "members"],
        booleans: &["active", "primary"],
        read_only: &["id", "meta", "groups"],
        case_exact: &["members.value"],
    };

    #[test]
    fn the_whole_extension_is_a_path() {
        let ent = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
        let mut u = json!({"userName": "a", ent: {"department": "x", "costCenter": "c"}});
        patch(
            &mut u,
            json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [
            {"op": "add", "path": ent, "value": {"department": "y"}}]}),
        )
        .unwrap();
        assert_eq!(u[ent], json!({"department": "y", "costCenter": "c"}));
        patch(
            &mut u,
            json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [
            {"op": "replace", "path": ent, "value": {"division": "d"}}]}),
        )
        .unwrap();
        assert_eq!(u[ent], json!({"division": "d"}));
        patch(
            &mut u,
            json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [
            {"op": "remove", "path": ent}]}),
        )
        .unwrap();
        assert!(u.get(ent).is_none());
    }

    #[test]
    fn entra_removes_listed_members_only() {
        let mut g = json!({"members": [{"value": "u1"}, {"value": "u2"}, {"value": "u3"}]});
        patch(
            &mut g,
            json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [
                {"op": "Remove", "path": "members", "value": [{"value": "u1"}, {"value": "u3"}]}]}),
        )
        .unwrap();
        assert_eq!(g["members"], json!([{"value": "u2"}]));
        patch(
            &mut g,
            json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [{"op": "remove", "path": "members"}]}),
        )
        .unwrap();
        assert!(g.get("members").is_none(), "without a value, all go");
    }

    fn patch(resource: &mut Value, body: Value) -> Result<(), PatchError> {
        let ops = parse_request(&body)?;
        apply(resource, &ops, &USER)
    }

    fn req(ops: Value) -> Value {
        json!({"schemas": [PATCH_OP_SCHEMA], "Operations": ops})
    }

    #[test]
    fn okta_deactivates_with_a_replace_without_path() {
        let mut u = json!({"userName": "a@x.test", "active": true});
        patch(
            &mut u,
            req(json!([{"op": "replace", "value": {"active": false}}])),
        )
        .expect("patch");
        assert_eq!(u["active"], false);
    }

    #[test]
    fn entra_capitalised_ops_and_string_booleans() {
        let mut u = json!({"userName": "a@x.test", "active": true, "displayName": "A"});
        patch(
            &mut u,
            req(json!([
                {"op": "Replace", "path": "active", "value": "False"},
                {"op": "Add", "path": "displayName", "value": "Alice"},
                {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "alice@x.test"}
            ])),
        )
        .expect_err("no work e-mail yet: noTarget");
        // The operations before the failing one applied (the caller stores nothing then).
        assert_eq!(u["active"], false);
        let mut u = json!({"userName": "a@x.test", "emails": [{"type": "work", "value": "old@x.test", "primary": "True"}]});
        patch(
            &mut u,
            req(json!([{"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "new@x.test"}])),
        )
        .expect("patch");
        assert_eq!(u["emails"][0]["value"], "new@x.test");
        let ops = parse_request(&req(json!([{"op": "add", "path": "emails", "value": [{"value": "p@x.test", "primary": "True"}]}]))).expect("parse");
        apply(&mut u, &ops, &USER).expect("apply");
        assert_eq!(
            u["emails"][1]["primary"], true,
            "a string boolean inside a value becomes a boolean"
        );
    }

    #[test]
    fn members_are_added_and_removed_by_filter_in_bulk() {
        let mut g = json!({"displayName": "Sales", "members": [{"value": "u1"}, {"value": "u2"}]});
        let many: Vec<Value> = (3..3003)
            .map(|i| json!({"value": format!("u{i}")}))
            .collect();
        patch(
            &mut g,
            req(json!([{"op": "add", "path": "members", "value": many}])),
        )
        .expect("add");
        assert_eq!(g["members"].as_array().map(Vec::len), Some(3002));
        // Adding a member already there changes nothing.
        patch(
            &mut g,
            req(json!([{"op": "add", "path": "members", "value": [{"value": "u1"}]}])),
        )
        .expect("add");
        assert_eq!(g["members"].as_array().map(Vec::len), Some(3002));
        patch(
            &mut g,
            req(json!([{"op": "remove", "path": "members[value eq \"u2\" or value eq \"u3\"]"}])),
        )
        .expect("remove");
        assert_eq!(g["members"].as_array().map(Vec::len), Some(3000));
        // members.value is case-exact: "U1" is not "u1"; removing what is absent is no error.
        patch(
            &mut g,
            req(json!([{"op": "remove", "path": "members[value eq \"U1\"]"}])),
        )
        .expect("remove");
        assert_eq!(g["members"].as_array().map(Vec::len), Some(3000));
        patch(&mut g, req(json!([{"op": "remove", "path": "members"}]))).expect("remove all");
        assert!(g.get("members").is_none());
    }

    #[test]
    fn paths_with_schemas_sub_attributes_and_case() {
        let mut u = json!({"userName": "a", "name": {"givenName": "A"}});
        patch(
            &mut u,
            req(json!([
                {"op": "replace", "path": "NAME.GIVENNAME", "value": "Alice"},
                {"op": "add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", "value": "Sales"},
                {"op": "replace", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value", "value": "m1"},
                {"op": "remove", "path": "nickName"},
                {"op": "add", "value": {"title": "Rep", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"costCenter": "42"}}}
            ])),
        )
        .expect("patch");
        assert_eq!(
            u["name"]["givenName"], "Alice",
            "the resource's own key case is kept"
        );
        let ent = &u["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"];
        assert_eq!(
            (
                ent["department"].as_str(),
                ent["manager"]["value"].as_str(),
                ent["costCenter"].as_str()
            ),
            (Some("Sales"), Some("m1"), Some("42"))
        );
        assert_eq!(u["title"], "Rep");
    }

    #[test]
    fn refusals_carry_their_scim_type() {
        let mut u = json!({"userName": "a"});
        let cases = [
            (
                json!({"Operations": [{"op": "add", "path": "title", "value": "x"}]}),
                "invalidSyntax",
            ),
            (
                req(json!([{"op": "move", "path": "title", "value": "x"}])),
                "invalidSyntax",
            ),
            (req(json!([{"op": "remove"}])), "noTarget"),
            (
                req(json!([{"op": "add", "path": "title"}])),
                "invalidSyntax",
            ),
            (
                req(json!([{"op": "replace", "value": "not an object"}])),
                "invalidValue",
            ),
            (
                req(json!([{"op": "replace", "path": "id", "value": "x"}])),
                "mutability",
            ),
            (
                req(json!([{"op": "replace", "path": "meta.created", "value": "x"}])),
                "mutability",
            ),
            (
                req(json!([{"op": "replace", "path": "emails[type eq", "value": "x"}])),
                "invalidPath",
            ),
            (
                req(json!([{"op": "replace", "path": "title[value eq \"x\"]", "value": "x"}])),
                "invalidPath",
            ),
            (
                req(
                    json!([{"op": "replace", "path": "emails[type eq \"work\"].value.x", "value": "x"}]),
                ),
                "invalidPath",
            ),
            (
                req(json!([{"op": "replace", "path": "urn:nope:title", "value": "x"}])),
                "invalidPath",
            ),
            (
                req(Value::Array(vec![
                    json!({"op": "remove", "path": "title"});
                    MAX_OPERATIONS + 1
                ])),
                "tooMany",
            ),
        ];
        for (body, want) in cases {
            let got = parse_request(&body).and_then(|ops| apply(&mut u, &ops, &USER));
            assert_eq!(got.map_err(|e| e.scim_type()), Err(want), "{body}");
        }
    }
}

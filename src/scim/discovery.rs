//! The SCIM discovery documents (RFC 7644 §4, RFC 7643 §5-§7): what the provider supports
//! (`ServiceProviderConfig`), its resource types and the schemas of User, the enterprise
//! extension and Group, as this service stores them. They are the SCIM routes' contract,
//! as `/openapi.json` is the API's.

use serde_json::{json, Value};

use crate::actors::scim::projection::MAX_PAGE;
use crate::actors::scim::resource::{GROUP_SCHEMA, LIST_RESPONSE_SCHEMA};
use crate::actors::scim::{CORE_USER_SCHEMA, ENTERPRISE_USER_SCHEMA};

const SPC_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig";
const RESOURCE_TYPE_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";
const SCHEMA_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";

/// `GET /ServiceProviderConfig`.
pub fn service_provider_config(base: &str) -> Value {
    json!({
        "schemas": [SPC_SCHEMA],
        "documentationUri": "https://datatracker.ietf.org/doc/html/rfc7644",
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": MAX_PAGE},
        "changePassword": {"supported": false},
        "sort": {"supported": false},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Bearer token",
            "description": "The tenant's SCIM token (`enablement tenant scim-token <tenant>`) as a bearer token",
            "specUri": "https://www.rfc-editor.org/info/rfc6750",
            "primary": true
        }],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": format!("{base}/ServiceProviderConfig"),
        }
    })
}

fn resource_type(base: &str, id: &str) -> Option<Value> {
    let (endpoint, schema, extensions) = match id {
        "User" => (
            "/Users",
            CORE_USER_SCHEMA,
            json!([{"schema": ENTERPRISE_USER_SCHEMA, "required": false}]),
        ),
        "Group" => ("/Groups", GROUP_SCHEMA, json!([])),
        _ => return None,
    };
    Some(json!({
        "schemas": [RESOURCE_TYPE_SCHEMA],
        "id": id,
        "name": id,
        "endpoint": endpoint,
        "description": format!("{id} resources of this tenant"),
        "schema": schema,
        "schemaExtensions": extensions,
        "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/{id}")}
    }))
}

/// `GET /ResourceTypes`.
pub fn resource_types(base: &str) -> Value {
    let all: Vec<Value> = ["User", "Group"]
        .iter()
        .filter_map(|id| resource_type(base, id))
        .collect();
    list(all)
}

/// `GET /ResourceTypes/{id}`.
pub fn resource_type_by_id(base: &str, id: &str) -> Option<Value> {
    resource_type(base, id)
}

fn list(resources: Vec<Value>) -> Value {
    json!({
        "schemas": [LIST_RESPONSE_SCHEMA],
        "totalResults": resources.len(),
        "startIndex": 1,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

/// One attribute definition. `mutability`, `returned`, `uniqueness` as RFC 7643 §7.
struct A {
    name: &'static str,
    kind: &'static str,
    multi: bool,
    required: bool,
    case_exact: bool,
    mutability: &'static str,
    returned: &'static str,
    uniqueness: &'static str,
    subs: Vec<Value>,
}

fn a(name: &'static str, kind: &'static str) -> A {
    A {
        name,
        kind,
        multi: false,
        required: false,
        case_exact: false,
        mutability: "readWrite",
        returned: "default",
        uniqueness: "none",
        subs: Vec::new(),
    }
}

impl A {
    fn multi(mut self) -> Self {
        self.multi = true;
        self
    }
    fn required(mut self) -> Self {
        self.required = true;
        self
    }
    fn exact(mut self) -> Self {
        self.case_exact = true;
        self
    }
    fn read_only(mut self) -> Self {
        self.mutability = "readOnly";
        self
    }
    fn unique(mut self, u: &'static str) -> Self {
        self.uniqueness = u;
        self
    }
    fn never(mut self) -> Self {
        self.returned = "never";
        self.mutability = "writeOnly";
        self
    }
    fn subs(mut self, subs: Vec<A>) -> Self {
        self.subs = subs.into_iter().map(A::done).collect();
        self
    }
    fn done(self) -> Value {
        let mut v = json!({
            "name": self.name,
            "type": self.kind,
            "multiValued": self.multi,
            "description": self.name,
            "required": self.required,
            "caseExact": self.case_exact,
            "mutability": self.mutability,
            "returned": self.returned,
            "uniqueness": self.uniqueness,
        });
        if !self.subs.is_empty() {
            v["subAttributes"] = Value::Array(self.subs);
        }
        if self.kind == "reference" {
            v["referenceTypes"] = if self.name == "$ref" {
                json!(["User", "Group"])
            } else {
                json!(["external"])
            };
        }
        v
    }
}

/// `value`, `display`, `type`, `primary` of a multi-valued attribute.
fn multi_valued(name: &'static str) -> Value {
    a(name, "complex")
        .multi()
        .subs(vec![
            a("value", "string"),
            a("display", "string"),
            a("type", "string"),
            a("primary", "boolean"),
        ])
        .done()
}

fn user_attributes() -> Vec<Value> {
    vec![
        a("userName", "string").required().unique("server").done(),
        a("externalId", "string").exact().done(),
        a("name", "complex")
            .subs(vec![
                a("formatted", "string"),
                a("familyName", "string"),
                a("givenName", "string"),
                a("middleName", "string"),
                a("honorificPrefix", "string"),
                a("honorificSuffix", "string"),
            ])
            .done(),
        a("displayName", "string").done(),
        a("nickName", "string").done(),
        a("profileUrl", "reference").done(),
        a("title", "string").done(),
        a("userType", "string").done(),
        a("preferredLanguage", "string").done(),
        a("locale", "string").done(),
        a("timezone", "string").done(),
        a("active", "boolean").done(),
        a("password", "string").never().done(),
        multi_valued("emails"),
        multi_valued("phoneNumbers"),
        multi_valued("ims"),
        multi_valued("photos"),
        a("addresses", "complex")
            .multi()
            .subs(vec![
                a("formatted", "string"),
                a("streetAddress", "string"),
                a("locality", "string"),
                a("region", "string"),
                a("postalCode", "string"),
                a("country", "string"),
                a("type", "string"),
                a("primary", "boolean"),
            ])
            .done(),
        a("groups", "complex")
            .multi()
            .read_only()
            .subs(vec![
                a("value", "string").read_only(),
                a("display", "string").read_only(),
                a("type", "string").read_only(),
            ])
            .done(),
        // `roles` maps to the service's role: rep, manager or admin (anything else: rep).
        multi_valued("roles"),
        multi_valued("entitlements"),
    ]
}

fn enterprise_attributes() -> Vec<Value> {
    vec![
        a("employeeNumber", "string").done(),
        a("costCenter", "string").done(),
        a("organization", "string").done(),
        a("division", "string").done(),
        a("department", "string").done(),
        a("manager", "complex")
            .subs(vec![
                a("value", "string").exact(),
                a("displayName", "string").read_only(),
            ])
            .done(),
    ]
}

fn group_attributes() -> Vec<Value> {
    vec![
        a("displayName", "string")
            .required()
            .unique("server")
            .done(),
        a("externalId", "string").exact().done(),
        a("members", "complex")
            .multi()
            .subs(vec![
                a("value", "string").exact(),
                a("$ref", "reference").read_only(),
                a("display", "string").read_only(),
                a("type", "string"),
            ])
            .done(),
    ]
}

fn schema(base: &str, id: &str) -> Option<Value> {
    let (name, attributes) = match id {
        CORE_USER_SCHEMA => ("User", user_attributes()),
        ENTERPRISE_USER_SCHEMA => ("EnterpriseUser", enterprise_attributes()),
        GROUP_SCHEMA => ("Group", group_attributes()),
        _ => return None,
    };
    Some(json!({
        "schemas": [SCHEMA_SCHEMA],
        "id": id,
        "name": name,
        "description": format!("{name} as this service stores it"),
        "attributes": attributes,
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{id}")}
    }))
}

/// `GET /Schemas`.
pub fn schemas(base: &str) -> Value {
    list(
        [CORE_USER_SCHEMA, ENTERPRISE_USER_SCHEMA, GROUP_SCHEMA]
            .iter()
            .filter_map(|id| schema(base, id))
            .collect(),
    )
}

/// `GET /Schemas/{id}`.
pub fn schema_by_id(base: &str, id: &str) -> Option<Value> {
    schema(base, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documents_describe_both_resource_types() {
        let rt = resource_types("http://h/scim/v2/acme");
        assert_eq!(rt["totalResults"], 2);
        assert_eq!(
            rt["Resources"][0]["schemaExtensions"][0]["schema"],
            ENTERPRISE_USER_SCHEMA
        );
        let s = schemas("http://h/scim/v2/acme");
        assert_eq!(s["totalResults"], 3);
        let user = schema_by_id("b", CORE_USER_SCHEMA).unwrap();
        let user_name = &user["attributes"][0];
        assert_eq!(user_name["uniqueness"], "server");
        assert_eq!(user_name["required"], true);
        assert!(schema_by_id("b", "urn:nope").is_none());
        assert_eq!(service_provider_config("b")["etag"]["supported"], true);
    }
}

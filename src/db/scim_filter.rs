//! SCIM filters compiled into SQL over stored resources: [`compile`] turns a parsed
//! [`Filter`] (`actors::scim::filter`) into a condition whose values are numbered text
//! parameters (cast in the SQL where needed), never spliced into the SQL text; the
//! [`USER_SCHEMA`] says where each attribute of a stored User lives.
//!
//! Columns where the service keeps them (`user_id`, `user_name`, `external_id`, `active`,
//! `created_at`, `updated_at`), the rest inside the stored resource (`scim` jsonb).
//! `userName` compares case-insensitively (`caseExact: false`, RFC 7643) through the
//! generated column `user_name_lower`, which the index `users_by_user_name_lower` (migration
//! 0016) serves inside the tenant's row-level security (`lower(user_name)` would not be);
//! `id` and `externalId` are case-exact (the primary key, `users_by_external_id`). A
//! multi-valued attribute (`emails`) matches when one of its elements does; compared
//! without a sub-attribute, its elements' `value` is compared.

use crate::actors::scim::filter::{
    display_path, AttrPath, CompValue, CompareOp, Filter, FilterError,
};
use crate::actors::scim::ENTERPRISE_USER_SCHEMA;

/// How a value of an attribute compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Boolean,
    DateTime,
    Number,
}

/// Where an attribute of a resource is stored, as SQL over the row (`{r}` stands for the
/// row alias) or, for a sub-attribute of a multi-valued one, over one element (`{e}`).
#[derive(Debug, Clone, Copy)]
pub struct Attribute {
    /// Lower-case name (`username`, `name.givenname`, `emails`).
    pub name: &'static str,
    /// A text expression of its value (`{r}.user_name`, `{r}.scim->>'displayName'`); for a
    /// multi-valued attribute, a jsonb array expression.
    pub sql: &'static str,
    pub kind: Kind,
    pub case_exact: bool,
    /// Multi-valued, with these sub-attributes (`value`, `type`, `primary`, `display`).
    pub multi: Option<&'static [Attribute]>,
    /// `sql` is already lower-case (a generated column): compared without `lower()` around
    /// it, so the comparison stays an index condition under row-level security (`lower()`
    /// is not leakproof: PostgreSQL evaluates a qual applying it to a column after the
    /// policy, never inside an index scan).
    pub folded: bool,
}

/// The attributes of one resource type, and the schema URNs its names may carry.
pub struct ResourceSchema {
    pub core: &'static str,
    pub extensions: &'static [(&'static str, &'static [Attribute])],
    pub attributes: &'static [Attribute],
}

impl ResourceSchema {
    fn find(
        &self,
        path: &AttrPath,
    ) -> Result<(&'static Attribute, Option<&'static str>), FilterError> {
        let unknown = || FilterError::UnknownAttribute(display_path(path));
        let table = match &path.schema {
            None => self.attributes,
            Some(s) if s.eq_ignore_ascii_case(self.core) => self.attributes,
            Some(s) => self
                .extensions
                .iter()
                .find(|(urn, _)| s.eq_ignore_ascii_case(urn))
                .map(|(_, a)| *a)
                .ok_or_else(unknown)?,
        };
        let full = match &path.sub {
            Some(sub) => format!("{}.{}", path.name, sub).to_ascii_lowercase(),
            None => path.name.to_ascii_lowercase(),
        };
        // A complex single-valued sub-attribute is listed by its dotted name; a multi-valued
        // attribute's sub-attribute is resolved below it.
        if let Some(a) = table.iter().find(|a| a.name == full) {
            return Ok((a, None));
        }
        let a = table
            .iter()
            .find(|a| a.name == path.name.to_ascii_lowercase())
            .ok_or_else(unknown)?;
        match (&a.multi, &path.sub) {
            (Some(subs), Some(sub)) => {
                let s = subs
                    .iter()
                    .find(|s| s.name == sub.to_ascii_lowercase())
                    .ok_or_else(unknown)?;
                Ok((a, Some(s.name)))
            }
            _ => Err(unknown()),
        }
    }
}

/// How an attribute's text compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Exact,
    /// `lower()` on both sides.
    Insensitive,
    /// The column is lower-case already: `lower()` on the value only.
    Folded,
}

impl Case {
    fn of(a: &Attribute) -> Self {
        match (a.case_exact, a.folded) {
            (true, _) => Case::Exact,
            (false, true) => Case::Folded,
            (false, false) => Case::Insensitive,
        }
    }
}

/// A compiled filter: a SQL condition and its text parameters (cast in the SQL where
/// needed), numbered from the `first_param` given to [`compile`].
#[derive(Debug, Clone, PartialEq)]
pub struct SqlCondition {
    pub sql: String,
    pub params: Vec<String>,
}

struct Compiler<'a> {
    schema: &'a ResourceSchema,
    row: &'a str,
    params: Vec<String>,
    first: usize,
    elements: usize,
}

impl Compiler<'_> {
    fn param(&mut self, value: String, cast: &str) -> String {
        self.params.push(value);
        // Typed as text (what the client bound), then cast for the attribute's kind.
        format!("${}::text{cast}", self.first + self.params.len() - 1)
    }

    fn compile(
        &mut self,
        f: &Filter,
        element: Option<(&str, &'static [Attribute])>,
    ) -> Result<String, FilterError> {
        Ok(match f {
            Filter::And(a, b) => format!(
                "({} and {})",
                self.compile(a, element)?,
                self.compile(b, element)?
            ),
            Filter::Or(a, b) => format!(
                "({} or {})",
                self.compile(a, element)?,
                self.compile(b, element)?
            ),
            Filter::Not(a) => format!("(not coalesce({}, false))", self.compile(a, element)?),
            Filter::ValuePath { path, filter } => {
                let (attr, _) = self.schema.find(path)?;
                let subs = attr.multi.ok_or_else(|| {
                    FilterError::Unsupported(format!("{} is not multi-valued", display_path(path)))
                })?;
                self.elements += 1;
                let alias = format!("e{}", self.elements);
                let inner = self.compile(filter, Some((alias.as_str(), subs)))?;
                format!(
                    "exists (select 1 from jsonb_array_elements(case when jsonb_typeof({arr}) = 'array' then {arr} else '[]'::jsonb end) as {alias}(v) where {inner})",
                    arr = attr.sql.replace("{r}", self.row)
                )
            }
            Filter::Present(path) | Filter::Compare { path, .. } => {
                // Resolve the path to (text expression, kind, caseExact), or to a
                // multi-valued attribute whose elements are compared.
                let resolved = match element {
                    Some((alias, subs)) => {
                        if path.schema.is_some() || path.sub.is_some() {
                            return Err(FilterError::UnknownAttribute(display_path(path)));
                        }
                        let s = subs
                            .iter()
                            .find(|s| s.name == path.name.to_ascii_lowercase())
                            .ok_or_else(|| FilterError::UnknownAttribute(display_path(path)))?;
                        Target::Scalar(
                            s.sql.replace("{e}", &format!("{alias}.v")),
                            s.kind,
                            Case::of(s),
                        )
                    }
                    None => {
                        let (attr, sub) = self.schema.find(path)?;
                        match (attr.multi, sub) {
                            (None, _) => Target::Scalar(
                                attr.sql.replace("{r}", self.row),
                                attr.kind,
                                Case::of(attr),
                            ),
                            (Some(subs), sub) => {
                                // `emails co "x"` compares the `value` sub-attribute of each
                                // element; `emails.type eq "work"` the named one.
                                let name = sub.unwrap_or("value");
                                let s = subs.iter().find(|s| s.name == name).ok_or_else(|| {
                                    FilterError::UnknownAttribute(display_path(path))
                                })?;
                                Target::Elements(attr.sql.replace("{r}", self.row), *s)
                            }
                        }
                    }
                };
                match resolved {
                    Target::Scalar(expr, kind, exact) => self.term(f, &expr, kind, exact)?,
                    Target::Elements(arr, sub) => {
                        self.elements += 1;
                        let alias = format!("e{}", self.elements);
                        let expr = sub.sql.replace("{e}", &format!("{alias}.v"));
                        let cond = self.term(f, &expr, sub.kind, Case::of(&sub))?;
                        format!(
                            "exists (select 1 from jsonb_array_elements(case when jsonb_typeof({arr}) = 'array' then {arr} else '[]'::jsonb end) as {alias}(v) where {cond})"
                        )
                    }
                }
            }
        })
    }

    /// One comparison (or `pr`) against a text expression.
    fn term(
        &mut self,
        f: &Filter,
        expr: &str,
        kind: Kind,
        case: Case,
    ) -> Result<String, FilterError> {
        let exact = case == Case::Exact;
        let (op, value) = match f {
            Filter::Present(_) => return Ok(format!("(coalesce({expr}, '') <> '')")),
            Filter::Compare { op, value, .. } => (*op, value),
            _ => unreachable!("term is called for comparisons only"),
        };
        let folded = case == Case::Folded;
        let fold = |e: &str| {
            if exact || folded || kind != Kind::Text {
                e.to_owned()
            } else {
                format!("lower({e})")
            }
        };
        let invalid = |what: &str| FilterError::Unsupported(what.to_owned());
        if *value == CompValue::Null {
            return match op {
                CompareOp::Eq => Ok(format!("({expr} is null)")),
                CompareOp::Ne => Ok(format!("({expr} is not null)")),
                _ => Err(invalid("null compares with eq or ne only")),
            };
        }
        let (text, cast) = match (kind, value) {
            (Kind::Text, CompValue::Str(s)) => {
                (if exact { s.clone() } else { s.to_lowercase() }, "")
            }
            (Kind::Boolean, CompValue::Bool(b)) => (b.to_string(), ""),
            (Kind::Boolean, CompValue::Str(s))
                if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") =>
            {
                (s.to_ascii_lowercase(), "")
            }
            (Kind::DateTime, CompValue::Str(s)) => {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| {
                        invalid("a dateTime attribute compares with an RFC 3339 timestamp")
                    })?;
                (s.clone(), "::timestamptz")
            }
            (Kind::Number, CompValue::Num(n)) => (n.clone(), "::numeric"),
            _ => return Err(invalid("the value's type does not match the attribute's")),
        };
        if kind == Kind::Boolean && !matches!(op, CompareOp::Eq | CompareOp::Ne) {
            return Err(invalid("a boolean compares with eq or ne only"));
        }
        if kind != Kind::Text && matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew) {
            return Err(invalid("co, sw and ew apply to strings only"));
        }
        let lhs = match kind {
            Kind::DateTime => format!("({expr})::timestamptz"),
            Kind::Number => format!(
                "(case when ({expr}) ~ '^-?[0-9]+(\\.[0-9]+)?([eE][-+]?[0-9]+)?$' then ({expr})::numeric end)"
            ),
            _ => fold(expr),
        };
        let p = self.param(text, cast);
        Ok(match op {
            CompareOp::Eq => format!("({lhs} = {p})"),
            CompareOp::Ne => format!("({lhs} is distinct from {p})"),
            CompareOp::Co => format!("(strpos({lhs}, {p}) > 0)"),
            CompareOp::Sw => format!("starts_with({lhs}, {p})"),
            CompareOp::Ew => format!("(right({lhs}, char_length({p})) = {p})"),
            CompareOp::Gt if kind == Kind::Text => format!("({lhs} collate \"C\" > {p})"),
            CompareOp::Ge if kind == Kind::Text => format!("({lhs} collate \"C\" >= {p})"),
            CompareOp::Lt if kind == Kind::Text => format!("({lhs} collate \"C\" < {p})"),
            CompareOp::Le if kind == Kind::Text => format!("({lhs} collate \"C\" <= {p})"),
            CompareOp::Gt => format!("({lhs} > {p})"),
            CompareOp::Ge => format!("({lhs} >= {p})"),
            CompareOp::Lt => format!("({lhs} < {p})"),
            CompareOp::Le => format!("({lhs} <= {p})"),
        })
    }
}

enum Target {
    Scalar(String, Kind, Case),
    Elements(String, Attribute),
}

/// Compiles `filter` over `schema` into a SQL condition on the row aliased `row`, with
/// parameters numbered from `first_param`.
pub fn compile(
    filter: &Filter,
    schema: &ResourceSchema,
    row: &str,
    first_param: usize,
) -> Result<SqlCondition, FilterError> {
    let mut c = Compiler {
        schema,
        row,
        params: Vec::new(),
        first: first_param,
        elements: 0,
    };
    let sql = c.compile(filter, None)?;
    // Unknown (NULL) is not a match where the condition is used (`where`); `not` folds its
    // operand's NULL to false itself. Left bare, `lower(user_name) = $n` stays indexable.
    Ok(SqlCondition {
        sql,
        params: c.params,
    })
}

const fn text(name: &'static str, sql: &'static str) -> Attribute {
    Attribute {
        name,
        sql,
        kind: Kind::Text,
        case_exact: false,
        multi: None,
        folded: false,
    }
}

/// A case-insensitive attribute kept lower-case in a generated column (indexed).
const fn folded(name: &'static str, sql: &'static str) -> Attribute {
    Attribute {
        folded: true,
        ..text(name, sql)
    }
}

const fn exact(name: &'static str, sql: &'static str) -> Attribute {
    Attribute {
        case_exact: true,
        ..text(name, sql)
    }
}

const fn typed(name: &'static str, sql: &'static str, kind: Kind) -> Attribute {
    Attribute {
        kind,
        ..text(name, sql)
    }
}

const fn multi(name: &'static str, sql: &'static str) -> Attribute {
    Attribute {
        multi: Some(ELEMENT),
        ..text(name, sql)
    }
}

/// The sub-attributes of a multi-valued attribute's elements (emails, phoneNumbers, ...).
const ELEMENT: &[Attribute] = &[
    text("value", "{e}->>'value'"),
    text("type", "{e}->>'type'"),
    text("display", "{e}->>'display'"),
    typed("primary", "{e}->>'primary'", Kind::Boolean),
];

const USER: &[Attribute] = &[
    exact("id", "{r}.user_id"),
    exact("externalid", "{r}.external_id"),
    folded("username", "{r}.user_name_lower"),
    text("displayname", "{r}.scim->>'displayName'"),
    text("nickname", "{r}.scim->>'nickName'"),
    text("profileurl", "{r}.scim->>'profileUrl'"),
    text("title", "{r}.scim->>'title'"),
    text("usertype", "{r}.scim->>'userType'"),
    text("preferredlanguage", "{r}.scim->>'preferredLanguage'"),
    text("locale", "{r}.scim->>'locale'"),
    text("timezone", "{r}.scim->>'timezone'"),
    typed("active", "({r}.active)::text", Kind::Boolean),
    text("name.formatted", "{r}.scim->'name'->>'formatted'"),
    text("name.familyname", "{r}.scim->'name'->>'familyName'"),
    text("name.givenname", "{r}.scim->'name'->>'givenName'"),
    text("name.middlename", "{r}.scim->'name'->>'middleName'"),
    text(
        "name.honorificprefix",
        "{r}.scim->'name'->>'honorificPrefix'",
    ),
    text(
        "name.honorificsuffix",
        "{r}.scim->'name'->>'honorificSuffix'",
    ),
    multi("emails", "{r}.scim->'emails'"),
    multi("phonenumbers", "{r}.scim->'phoneNumbers'"),
    multi("ims", "{r}.scim->'ims'"),
    multi("photos", "{r}.scim->'photos'"),
    multi("roles", "{r}.scim->'roles'"),
    multi("entitlements", "{r}.scim->'entitlements'"),
    multi(
        "groups",
        "(select coalesce(jsonb_agg(jsonb_build_object('value', gm.group_id)), '[]'::jsonb) \
           from scim_group_members gm \
          where gm.tenant_id = {r}.tenant_id and gm.user_id = {r}.user_id)",
    ),
    typed("meta.created", "{r}.created_at", Kind::DateTime),
    typed("meta.lastmodified", "{r}.updated_at", Kind::DateTime),
    exact("meta.resourcetype", "'User'"),
];

const ENTERPRISE: &[Attribute] = &[
    text("employeenumber", "{r}.scim->'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User'->>'employeeNumber'"),
    text("costcenter", "{r}.scim->'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User'->>'costCenter'"),
    text("organization", "{r}.scim->'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User'->>'organization'"),
    text("division", "{r}.scim->'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User'->>'division'"),
    text("department", "{r}.scim->'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User'->>'department'"),
    exact("manager.value", "{r}.scim->'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User'->'manager'->>'value'"),
];

/// The SCIM User resource as the `users` table stores it.
pub static USER_SCHEMA: ResourceSchema = ResourceSchema {
    core: crate::actors::scim::CORE_USER_SCHEMA,
    extensions: &[(ENTERPRISE_USER_SCHEMA, ENTERPRISE)],
    attributes: USER,
};

const GROUP: &[Attribute] = &[
    exact("id", "{r}.group_id"),
    exact("externalid", "{r}.external_id"),
    folded("displayname", "{r}.display_name_lower"),
    Attribute {
        multi: Some(MEMBER),
        ..text(
            "members",
            "(select coalesce(jsonb_agg(jsonb_build_object('value', gm.user_id)), '[]'::jsonb) \
               from scim_group_members gm \
              where gm.tenant_id = {r}.tenant_id and gm.group_id = {r}.group_id)",
        )
    },
    typed("meta.created", "{r}.created_at", Kind::DateTime),
    typed("meta.lastmodified", "{r}.updated_at", Kind::DateTime),
    exact("meta.resourcetype", "'Group'"),
];

/// A member's sub-attributes: its user id is compared case-exactly.
const MEMBER: &[Attribute] = &[
    exact("value", "{e}->>'value'"),
    text("display", "{e}->>'display'"),
    text("type", "'User'"),
];

/// The SCIM Group resource as `scim_groups` and `scim_group_members` store it.
pub static GROUP_SCHEMA: ResourceSchema = ResourceSchema {
    core: crate::actors::scim::resource::GROUP_SCHEMA,
    extensions: &[],
    attributes: GROUP,
};

/// The SQL condition of `filter` over `scim_groups` aliased `row`.
pub fn group_condition(
    filter: &Filter,
    row: &str,
    first_param: usize,
) -> Result<SqlCondition, FilterError> {
    compile(filter, &GROUP_SCHEMA, row, first_param)
}

/// The SQL condition of `filter` over `users` aliased `row`, parameters from `first_param`.
pub fn user_condition(
    filter: &Filter,
    row: &str,
    first_param: usize,
) -> Result<SqlCondition, FilterError> {
    compile(filter, &USER_SCHEMA, row, first_param)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::scim::filter::parse;

    const SUBS: &[Attribute] = &[
        Attribute {
            name: "value",
            sql: "{e}->>'value'",
            kind: Kind::Text,
            case_exact: false,
            multi: None,
            folded: false,
        },
        Attribute {
            name: "primary",
            sql: "{e}->>'primary'",
            kind: Kind::Boolean,
            case_exact: false,
            multi: None,
            folded: false,
        },
    ];
    static SCHEMA: ResourceSchema = ResourceSchema {
        core: "urn:core",
        extensions: &[],
        attributes: &[
            Attribute {
                name: "username",
                sql: "{r}.user_name",
                kind: Kind::Text,
                case_exact: false,
                multi: None,
                folded: false,
            },
            Attribute {
                name: "id",
                sql: "{r}.id",
                kind: Kind::Text,
                case_exact: true,
                multi: None,
                folded: false,
            },
            Attribute {
                name: "emails",
                sql: "{r}.doc->'emails'",
                kind: Kind::Text,
                case_exact: false,
                multi: Some(SUBS),
                folded: false,
            },
        ],
    };

    #[test]
    fn values_become_numbered_parameters_never_sql_text() {
        let f = parse(r#"userName eq "X'); drop table users; --" and id eq "Ab""#).expect("parse");
        let c = compile(&f, &SCHEMA, "u", 3).expect("compile");
        assert_eq!(
            c.sql,
            "((lower(u.user_name) = $3::text) and (u.id = $4::text))"
        );
        assert_eq!(c.params, ["x'); drop table users; --", "Ab"]);
        assert!(!c.sql.contains("drop"));
        let e = compile(
            &parse(r#"emails[primary eq true]"#).expect("parse"),
            &SCHEMA,
            "u",
            1,
        )
        .expect("compile");
        assert!(e.sql.contains("jsonb_array_elements"), "{}", e.sql);
        assert_eq!(e.params, ["true"]);
        assert!(matches!(
            compile(&parse(r#"nope eq "x""#).expect("parse"), &SCHEMA, "u", 1),
            Err(FilterError::UnknownAttribute(_))
        ));
        assert!(matches!(
            compile(
                &parse(r#"emails[primary co "t"]"#).expect("parse"),
                &SCHEMA,
                "u",
                1
            ),
            Err(FilterError::Unsupported(_))
        ));
    }
}

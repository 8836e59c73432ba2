//! SCIM filters (RFC 7644 §3.4.2.2): the grammar, parsed into a bounded [`Filter`] tree.
//! Pure; the service's PostgreSQL adapter compiles a tree into SQL over stored resources
//! (`src/db/scim_filter.rs`).
//!
//! Supported: `eq ne co sw ew gt ge lt le pr`, `and`, `or`, `not ( )`, parentheses, complex
//! attribute filters (`emails[type eq "work" and value co "@acme"]`), attribute names in any
//! case, schema-qualified names (`urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:
//! employeeNumber`). A filter longer
//! than [`MAX_FILTER_CHARS`], with more than [`MAX_NODES`] nodes or nested deeper than
//! [`MAX_DEPTH`] is refused (`invalidFilter`): a hostile client cannot make the parser or
//! the database work without bound.

pub const MAX_FILTER_CHARS: usize = 4096;
pub const MAX_NODES: usize = 256;
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CompareOp {
    fn parse(word: &str) -> Option<Self> {
        Some(match word.to_ascii_lowercase().as_str() {
            "eq" => Self::Eq,
            "ne" => Self::Ne,
            "co" => Self::Co,
            "sw" => Self::Sw,
            "ew" => Self::Ew,
            "gt" => Self::Gt,
            "ge" => Self::Ge,
            "lt" => Self::Lt,
            "le" => Self::Le,
            _ => return None,
        })
    }
}

/// A comparison's right-hand side.
#[derive(Debug, Clone, PartialEq)]
pub enum CompValue {
    Str(String),
    Num(String),
    Bool(bool),
    Null,
}

/// `[schema:]name[.sub]`, as written (names are matched case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPath {
    pub schema: Option<String>,
    pub name: String,
    pub sub: Option<String>,
}

impl AttrPath {
    pub fn parse(word: &str) -> Option<Self> {
        let (schema, rest) = match word.rfind(':') {
            Some(i) => (Some(word[..i].to_owned()), &word[i + 1..]),
            None => (None, word),
        };
        let (name, sub) = match rest.split_once('.') {
            Some((n, s)) => (n, Some(s)),
            None => (rest, None),
        };
        let valid = |s: &str| {
            s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '$')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '$')
        };
        if !valid(name) || sub.is_some_and(|s| !valid(s)) {
            return None;
        }
        Some(Self {
            schema,
            name: name.to_owned(),
            sub: sub.map(str::to_owned),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Compare {
        path: AttrPath,
        op: CompareOp,
        value: CompValue,
    },
    Present(AttrPath),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    /// `path[filter]`: some element of the multi-valued `path` matches `filter` (whose paths
    /// name the element's sub-attributes).
    ValuePath {
        path: AttrPath,
        filter: Box<Filter>,
    },
}

/// Why a filter was refused (SCIM `scimType` `invalidFilter` for all of them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("invalid filter at character {at}: {what}")]
    Syntax { at: usize, what: String },
    #[error("filter too complex: {0}")]
    TooComplex(&'static str),
    #[error("unknown attribute in filter: {0}")]
    UnknownAttribute(String),
    #[error("{0}")]
    Unsupported(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    Word(String),
    Str(String),
}

fn tokenize(input: &str) -> Result<Vec<(usize, Token)>, FilterError> {
    let syntax = |at: usize, what: &str| FilterError::Syntax {
        at,
        what: what.to_owned(),
    };
    let chars: Vec<(usize, char)> = input.char_indices().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' => {
                out.push((at, Token::Open));
                i += 1
            }
            ')' => {
                out.push((at, Token::Close));
                i += 1
            }
            '[' => {
                out.push((at, Token::OpenBracket));
                i += 1
            }
            ']' => {
                out.push((at, Token::CloseBracket));
                i += 1
            }
            '"' => {
                // A JSON string: find its end (a quote not escaped), then decode it as JSON.
                let mut j = i + 1;
                let mut escaped = false;
                while j < chars.len() {
                    let d = chars[j].1;
                    if escaped {
                        escaped = false;
                    } else if d == '\\' {
                        escaped = true;
                    } else if d == '"' {
                        break;
                    }
                    j += 1;
                }
                if j >= chars.len() {
                    return Err(syntax(at, "unterminated string"));
                }
                let end = chars[j].0 + 1;
                let s: String = serde_json::from_str(&input[at..end])
                    .map_err(|_| syntax(at, "invalid string escape"))?;
                out.push((at, Token::Str(s)));
                i = j + 1;
            }
            c if c.is_ascii_alphanumeric() || "-_:.$+".contains(c) => {
                let mut j = i;
                while j < chars.len()
                    && (chars[j].1.is_ascii_alphanumeric() || "-_:.$+".contains(chars[j].1))
                {
                    j += 1;
                }
                let end = chars.get(j).map_or(input.len(), |(p, _)| *p);
                out.push((at, Token::Word(input[at..end].to_owned())));
                i = j;
            }
            _ => return Err(syntax(at, &format!("unexpected character {c:?}"))),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    pos: usize,
    nodes: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn at(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(a, _)| *a)
    }

    fn error(&self, what: impl Into<String>) -> FilterError {
        FilterError::Syntax {
            at: self.at(),
            what: what.into(),
        }
    }

    fn keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn node(&mut self) -> Result<(), FilterError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(FilterError::TooComplex("too many terms"));
        }
        Ok(())
    }

    fn or_expr(&mut self, depth: usize, in_value_path: bool) -> Result<Filter, FilterError> {
        let mut left = self.and_expr(depth, in_value_path)?;
        while self.keyword("or") {
            self.pos += 1;
            self.node()?;
            let right = self.and_expr(depth, in_value_path)?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self, depth: usize, in_value_path: bool) -> Result<Filter, FilterError> {
        let mut left = self.unary(depth, in_value_path)?;
        while self.keyword("and") {
            self.pos += 1;
            self.node()?;
            let right = self.unary(depth, in_value_path)?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn group(&mut self, depth: usize, in_value_path: bool) -> Result<Filter, FilterError> {
        if depth >= MAX_DEPTH {
            return Err(FilterError::TooComplex("nested too deeply"));
        }
        self.pos += 1; // (
        let inner = self.or_expr(depth + 1, in_value_path)?;
        if self.peek() != Some(&Token::Close) {
            return Err(self.error("expected )"));
        }
        self.pos += 1;
        Ok(inner)
    }

    fn unary(&mut self, depth: usize, in_value_path: bool) -> Result<Filter, FilterError> {
        self.node()?;
        if self.keyword("not") {
            self.pos += 1;
            if self.peek() != Some(&Token::Open) {
                return Err(self.error("expected ( after not"));
            }
            return Ok(Filter::Not(Box::new(self.group(depth, in_value_path)?)));
        }
        if self.peek() == Some(&Token::Open) {
            return self.group(depth, in_value_path);
        }
        let Some(Token::Word(word)) = self.peek().cloned() else {
            return Err(self.error("expected an attribute name"));
        };
        let path = AttrPath::parse(&word).ok_or_else(|| self.error("invalid attribute name"))?;
        self.pos += 1;
        if self.peek() == Some(&Token::OpenBracket) {
            if in_value_path {
                return Err(self.error("a value filter cannot hold another"));
            }
            if path.sub.is_some() {
                return Err(self.error("a value filter applies to a multi-valued attribute"));
            }
            self.pos += 1;
            let inner = self.or_expr(depth + 1, true)?;
            if self.peek() != Some(&Token::CloseBracket) {
                return Err(self.error("expected ]"));
            }
            self.pos += 1;
            return Ok(Filter::ValuePath {
                path,
                filter: Box::new(inner),
            });
        }
        let Some(Token::Word(op)) = self.peek().cloned() else {
            return Err(self.error("expected an operator"));
        };
        if op.eq_ignore_ascii_case("pr") {
            self.pos += 1;
            return Ok(Filter::Present(path));
        }
        let op =
            CompareOp::parse(&op).ok_or_else(|| self.error(format!("unknown operator {op}")))?;
        self.pos += 1;
        let value = match self.peek().cloned() {
            Some(Token::Str(s)) => CompValue::Str(s),
            Some(Token::Word(w)) if w == "true" || w == "false" => CompValue::Bool(w == "true"),
            Some(Token::Word(w)) if w == "null" => CompValue::Null,
            Some(Token::Word(w)) if serde_json::from_str::<serde_json::Number>(&w).is_ok() => {
                CompValue::Num(w)
            }
            _ => return Err(self.error("expected a value (a string, number, true, false or null)")),
        };
        self.pos += 1;
        Ok(Filter::Compare { path, op, value })
    }
}

/// Parses a filter; every refusal is `invalidFilter`.
pub fn parse(input: &str) -> Result<Filter, FilterError> {
    if input.len() > MAX_FILTER_CHARS {
        return Err(FilterError::TooComplex("longer than 4096 characters"));
    }
    let tokens = tokenize(input)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        nodes: 0,
        end: input.len(),
    };
    let f = p.or_expr(0, false)?;
    if p.pos != p.tokens.len() {
        return Err(p.error("unexpected text after the filter"));
    }
    Ok(f)
}

/// The path as written (at most 100 characters), for error messages.
pub fn display_path(p: &AttrPath) -> String {
    let mut s = String::new();
    if let Some(schema) = &p.schema {
        s.push_str(schema);
        s.push(':');
    }
    s.push_str(&p.name);
    if let Some(sub) = &p.sub {
        s.push('.');
        s.push_str(sub);
    }
    s.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> AttrPath {
        AttrPath::parse(name).expect("path")
    }

    fn eq(name: &str, v: &str) -> Filter {
        Filter::Compare {
            path: path(name),
            op: CompareOp::Eq,
            value: CompValue::Str(v.into()),
        }
    }

    #[test]
    fn and_binds_tighter_than_or_and_keywords_ignore_case() {
        let f = parse(r#"a eq "1" OR b Eq "2" aNd c EQ "3""#).expect("parse");
        assert_eq!(
            f,
            Filter::Or(
                Box::new(eq("a", "1")),
                Box::new(Filter::And(Box::new(eq("b", "2")), Box::new(eq("c", "3"))))
            )
        );
        let g = parse(r#"(a eq "1" or b eq "2") and not (c pr)"#).expect("parse");
        assert!(matches!(g, Filter::And(_, ref r) if matches!(**r, Filter::Not(_))));
    }

    #[test]
    fn values_paths_and_schema_prefixes() {
        let f = parse(r#"emails[type eq "work" and value co "@acme"]"#).expect("parse");
        assert!(matches!(f, Filter::ValuePath { ref path, .. } if path.name == "emails"));
        let p = path("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value");
        assert_eq!(
            p.schema.as_deref(),
            Some("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User")
        );
        assert_eq!(
            (p.name.as_str(), p.sub.as_deref()),
            ("manager", Some("value"))
        );
        assert_eq!(
            parse("score gt 1.5e2").expect("parse"),
            Filter::Compare {
                path: path("score"),
                op: CompareOp::Gt,
                value: CompValue::Num("1.5e2".into())
            }
        );
        assert_eq!(
            parse(r#"title eq "a \"quoted\" \u00e9""#).expect("parse"),
            eq("title", "a \"quoted\" é")
        );
        assert_eq!(
            parse("active eq null").expect("parse"),
            Filter::Compare {
                path: path("active"),
                op: CompareOp::Eq,
                value: CompValue::Null
            }
        );
    }

    #[test]
    fn malformed_filters_name_where_they_fail() {
        for (bad, at) in [
            ("userName eq", 11),
            (r#"userName is "a""#, 9),
            (r#"(userName eq "a""#, 16),
            ("not userName pr", 4),
            (r#"userName eq "a" extra"#, 16),
            (r#"1abc eq "a""#, 0),
            (r#"userName eq "open"#, 12),
            ("userName eq 'x'", 12),
        ] {
            match parse(bad) {
                Err(FilterError::Syntax { at: got, .. }) => assert_eq!(got, at, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn size_depth_and_length_are_bounded() {
        let deep = format!(
            "{}a pr{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert!(matches!(parse(&deep), Err(FilterError::TooComplex(_))));
        let ok = format!(
            "{}a pr{}",
            "(".repeat(MAX_DEPTH - 1),
            ")".repeat(MAX_DEPTH - 1)
        );
        assert!(parse(&ok).is_ok());
        let wide = vec!["a pr"; MAX_NODES].join(" or ");
        assert!(matches!(parse(&wide), Err(FilterError::TooComplex(_))));
        let long = format!("a eq \"{}\"", "x".repeat(MAX_FILTER_CHARS));
        assert!(matches!(parse(&long), Err(FilterError::TooComplex(_))));
        let nested_not = format!(
            "{}a pr{}",
            "not (".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert!(matches!(
            parse(&nested_not),
            Err(FilterError::TooComplex(_))
        ));
    }
}

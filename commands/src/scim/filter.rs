//! SCIM filters and attribute paths (RFC 7644 §3.4.2.2, §3.5.2), parsed by a small
//! recursive-descent parser and evaluated over a resource's JSON. Pure: no I/O.
//!
//! Precedence is `not` > `and` > `or`; parentheses group; `attr[filter]` filters the values of
//! a multi-valued complex attribute. Attribute names are case-insensitive; string comparisons
//! are case-insensitive unless the attribute is `caseExact` (see [`case_exact`]).

use std::cmp::Ordering;

use serde_json::Value;

pub const CORE_USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const CORE_GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const ENTERPRISE_USER: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

/// Why a filter or path does not parse or cannot be evaluated (`invalidFilter` /
/// `invalidPath`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError(msg.into()))
}

/// `[urn:]name[.sub]`. `urn` is `None` when the path names no schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPath {
    pub urn: Option<String>,
    pub name: String,
    pub sub: Option<String>,
}

impl AttrPath {
    pub fn parse(raw: &str) -> Result<AttrPath, FilterError> {
        let raw = raw.trim();
        let (urn, rest) =
            if raw.len() > 4 && raw.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("urn:")) {
                // The attribute follows the schema URN's last colon (URNs contain dots: "2.0").
                match raw.rfind(':') {
                    Some(i) => (Some(raw[..i].to_owned()), &raw[i + 1..]),
                    None => return err(format!("bad attribute path {raw:?}")),
                }
            } else {
                (None, raw)
            };
        let mut parts = rest.splitn(2, '.');
        let name = parts.next().unwrap_or_default().to_owned();
        let sub = parts.next().map(str::to_owned);
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '$')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$'))
        };
        if !valid(&name) || sub.as_deref().is_some_and(|s| !valid(s)) {
            return err(format!("bad attribute path {raw:?}"));
        }
        Ok(AttrPath { urn, name, sub })
    }

    /// The path relative to the resource: `(extension URN or None, name, sub)`. The core
    /// schemas' URNs mean the top level.
    pub fn extension(&self) -> Option<&str> {
        self.urn
            .as_deref()
            .filter(|u| !u.eq_ignore_ascii_case(CORE_USER) && !u.eq_ignore_ascii_case(CORE_GROUP))
    }

    /// `name` or `name.sub`, lower-case (for caseExact rules and sorting).
    pub fn dotted(&self) -> String {
        match &self.sub {
            Some(s) => format!("{}.{}", self.name, s).to_lowercase(),
            None => self.name.to_lowercase(),
        }
    }
}

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

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Present(AttrPath),
    Compare(AttrPath, CompareOp, Value),
    /// `attr[filter]`, the inner filter evaluated over each value of `attr`.
    ValuePath(AttrPath, Box<Filter>),
    Not(Box<Filter>),
    /// Two or more terms. Kept flat (not a left-deep binary tree) so that evaluating and
    /// dropping a long chain of `and`s never recurses once per term.
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

/// The longest filter accepted, in bytes. Real clients send a few hundred at most.
pub const MAX_FILTER_LEN: usize = 8 * 1024;
/// The deepest nesting of `(`, `not(` and `attr[...]` accepted: parsing, evaluating and
/// dropping a filter recurse once per level, so this bounds the stack a request can use.
pub const MAX_FILTER_DEPTH: usize = 16;
/// The most comparisons (`attr op value`, `attr pr`) one filter may hold.
pub const MAX_FILTER_TERMS: usize = 256;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Open,
    Close,
    LBracket,
    RBracket,
}

fn tokenize(input: &str) -> Result<Vec<Token>, FilterError> {
    let mut out = vec![];
    let chars: Vec<char> = input.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Token::Open);
                i += 1
            }
            ')' => {
                out.push(Token::Close);
                i += 1
            }
            '[' => {
                out.push(Token::LBracket);
                i += 1
            }
            ']' => {
                out.push(Token::RBracket);
                i += 1
            }
            '"' => {
                // A JSON string: find its end, honouring escapes, and let serde decode it.
                let start = i;
                i += 1;
                let mut closed = false;
                while i < chars.len() {
                    match chars[i] {
                        '\\' => i += 2,
                        '"' => {
                            closed = true;
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                if !closed {
                    return err("unterminated string in filter");
                }
                let literal: String = chars[start..i].iter().collect();
                let s: String = serde_json::from_str(&literal)
                    .map_err(|_| FilterError(format!("bad string {literal} in filter")))?;
                out.push(Token::Str(s));
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && !chars[i].is_whitespace()
                    && !matches!(chars[i], '(' | ')' | '[' | ']' | '"')
                {
                    i += 1;
                }
                out.push(Token::Word(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(out)
}

/// One term stays itself; several become `join(terms)`.
fn flat(mut terms: Vec<Filter>, join: fn(Vec<Filter>) -> Filter) -> Filter {
    if terms.len() == 1 {
        terms.remove(0)
    } else {
        join(terms)
    }
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
    terms: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }
    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }
    fn peek_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn or(&mut self) -> Result<Filter, FilterError> {
        let mut terms = vec![self.and()?];
        while self.peek_keyword("or") {
            self.at += 1;
            terms.push(self.and()?);
        }
        Ok(flat(terms, Filter::Or))
    }

    fn and(&mut self) -> Result<Filter, FilterError> {
        let mut terms = vec![self.unary()?];
        while self.peek_keyword("and") {
            self.at += 1;
            terms.push(self.unary()?);
        }
        Ok(flat(terms, Filter::And))
    }

    /// Parses `inner` one nesting level down, refusing to go past [`MAX_FILTER_DEPTH`].
    fn nested(
        &mut self,
        inner: impl FnOnce(&mut Self) -> Result<Filter, FilterError>,
    ) -> Result<Filter, FilterError> {
        if self.depth == MAX_FILTER_DEPTH {
            return err(format!(
                "the filter nests deeper than {MAX_FILTER_DEPTH} levels"
            ));
        }
        self.depth += 1;
        let f = inner(self);
        self.depth -= 1;
        f
    }

    fn count_term(&mut self) -> Result<(), FilterError> {
        self.terms += 1;
        if self.terms > MAX_FILTER_TERMS {
            return err(format!(
                "the filter has more than {MAX_FILTER_TERMS} comparisons"
            ));
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<Filter, FilterError> {
        if self.peek_keyword("not") {
            self.at += 1;
            if self.next() != Some(Token::Open) {
                return err("\"not\" must be followed by \"(\"");
            }
            let inner = self.nested(Self::or)?;
            if self.next() != Some(Token::Close) {
                return err("missing \")\"");
            }
            return Ok(Filter::Not(Box::new(inner)));
        }
        match self.next() {
            Some(Token::Open) => {
                let inner = self.nested(Self::or)?;
                if self.next() != Some(Token::Close) {
                    return err("missing \")\"");
                }
                Ok(inner)
            }
            Some(Token::Word(w)) => {
                let path = AttrPath::parse(&w)?;
                if self.peek() == Some(&Token::LBracket) {
                    self.at += 1;
                    if path.sub.is_some() {
                        return err("a value filter applies to an attribute, not a sub-attribute");
                    }
                    let inner = self.nested(Self::or)?;
                    if self.next() != Some(Token::RBracket) {
                        return err("missing \"]\"");
                    }
                    return Ok(Filter::ValuePath(path, Box::new(inner)));
                }
                self.count_term()?;
                let op = match self.next() {
                    Some(Token::Word(op)) => op.to_ascii_lowercase(),
                    _ => return err(format!("an operator must follow {w:?}")),
                };
                let op = match op.as_str() {
                    "pr" => return Ok(Filter::Present(path)),
                    "eq" => CompareOp::Eq,
                    "ne" => CompareOp::Ne,
                    "co" => CompareOp::Co,
                    "sw" => CompareOp::Sw,
                    "ew" => CompareOp::Ew,
                    "gt" => CompareOp::Gt,
                    "ge" => CompareOp::Ge,
                    "lt" => CompareOp::Lt,
                    "le" => CompareOp::Le,
                    other => return err(format!("unknown operator {other:?}")),
                };
                let value = match self.next() {
                    Some(Token::Str(s)) => Value::String(s),
                    Some(Token::Word(w)) => match w.as_str() {
                        "true" => Value::Bool(true),
                        "false" => Value::Bool(false),
                        "null" => Value::Null,
                        n => match serde_json::from_str::<serde_json::Number>(n) {
                            Ok(n) => Value::Number(n),
                            Err(_) => return err(format!("bad comparison value {n:?}")),
                        },
                    },
                    _ => return err("a comparison value must follow the operator"),
                };
                Ok(Filter::Compare(path, op, value))
            }
            _ => err("expected an attribute, \"not\" or \"(\""),
        }
    }
}

impl Filter {
    pub fn parse(input: &str) -> Result<Filter, FilterError> {
        if input.len() > MAX_FILTER_LEN {
            return err(format!("the filter is longer than {MAX_FILTER_LEN} bytes"));
        }
        let tokens = tokenize(input)?;
        if tokens.is_empty() {
            return err("empty filter");
        }
        let mut p = Parser {
            tokens,
            at: 0,
            depth: 0,
            terms: 0,
        };
        let f = p.or()?;
        if p.at != p.tokens.len() {
            return err("unexpected text after the filter");
        }
        Ok(f)
    }

    /// Whether `resource` (a SCIM resource's JSON) matches.
    pub fn matches(&self, resource: &Value) -> bool {
        self.eval(resource, None)
    }

    /// `scope`: inside `attr[...]`, the parent attribute's name (for caseExact rules).
    fn eval(&self, node: &Value, scope: Option<&str>) -> bool {
        match self {
            Filter::And(terms) => terms.iter().all(|t| t.eval(node, scope)),
            Filter::Or(terms) => terms.iter().any(|t| t.eval(node, scope)),
            Filter::Not(a) => !a.eval(node, scope),
            Filter::Present(path) => values(node, path).iter().any(|v| present(v)),
            Filter::Compare(path, op, value) => {
                let exact = case_exact(&qualified(scope, path));
                let vals = values(node, path);
                if *op == CompareOp::Eq && value.is_null() {
                    return !vals.iter().any(|v| present(v));
                }
                vals.iter().any(|v| compare(v, *op, value, exact))
            }
            Filter::ValuePath(path, inner) => {
                let scope = path.name.to_lowercase();
                lookup(node, path)
                    .map(|v| match v {
                        Value::Array(items) => items.iter().any(|i| inner.eval(i, Some(&scope))),
                        other => inner.eval(other, Some(&scope)),
                    })
                    .unwrap_or(false)
            }
        }
    }
}

fn qualified(scope: Option<&str>, path: &AttrPath) -> String {
    match scope {
        Some(s) => format!("{s}.{}", path.dotted()),
        None => path.dotted(),
    }
}

/// Attributes whose string values compare case-sensitively (RFC 7643 §4, §8.7.1). Everything
/// else (userName, emails, names...) compares case-insensitively.
pub fn case_exact(dotted: &str) -> bool {
    matches!(
        dotted,
        "id" | "externalid" | "meta.version" | "meta.location" | "members.value" | "groups.value"
    ) || dotted.ends_with("$ref")
}

fn present(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

/// A key of `obj`, ignoring case.
pub fn get_ci<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// The attribute `path.name` of `node` (in the extension's object when the path names one).
fn lookup<'a>(node: &'a Value, path: &AttrPath) -> Option<&'a Value> {
    let obj = node.as_object()?;
    let obj = match path.extension() {
        Some(urn) => get_ci(obj, urn)?.as_object()?,
        None => obj,
    };
    get_ci(obj, &path.name)
}

/// Every value the path designates: a multi-valued attribute gives each of its values; a
/// complex multi-valued one without a sub-attribute gives each element's `value`.
fn values<'a>(node: &'a Value, path: &AttrPath) -> Vec<&'a Value> {
    let Some(v) = lookup(node, path) else {
        return vec![];
    };
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    let sub = path.sub.as_deref().or_else(|| {
        items
            .iter()
            .any(|i| i.is_object())
            .then_some("value")
            .filter(|_| v.is_array())
    });
    match sub {
        Some(sub) => items
            .into_iter()
            .filter_map(|i| i.as_object().and_then(|o| get_ci(o, sub)))
            .flat_map(|v| match v {
                Value::Array(a) => a.iter().collect::<Vec<_>>(),
                other => vec![other],
            })
            .collect(),
        None => items,
    }
}

fn compare(actual: &Value, op: CompareOp, expected: &Value, exact: bool) -> bool {
    use CompareOp as O;
    match (actual, expected) {
        (Value::String(a), Value::String(e)) => {
            let (a, e) = if exact {
                (a.clone(), e.clone())
            } else {
                (a.to_lowercase(), e.to_lowercase())
            };
            match op {
                O::Eq => a == e,
                O::Ne => a != e,
                O::Co => a.contains(&e),
                O::Sw => a.starts_with(&e),
                O::Ew => a.ends_with(&e),
                O::Gt => a > e,
                O::Ge => a >= e,
                O::Lt => a < e,
                O::Le => a <= e,
            }
        }
        (Value::Number(a), Value::Number(e)) => {
            let (Some(a), Some(e)) = (a.as_f64(), e.as_f64()) else {
                return false;
            };
            match op {
                O::Eq => a == e,
                O::Ne => a != e,
                O::Gt => a > e,
                O::Ge => a >= e,
                O::Lt => a < e,
                O::Le => a <= e,
                O::Co | O::Sw | O::Ew => false,
            }
        }
        (Value::Bool(a), Value::Bool(e)) => match op {
            O::Eq => a == e,
            O::Ne => a != e,
            _ => false,
        },
        (_, Value::Null) => op == O::Ne && present(actual),
        _ => op == O::Ne,
    }
}

/// A PATCH path (RFC 7644 §3.5.2): `attrPath` or `valuePath[.subAttr]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPath {
    pub attr: AttrPath,
    pub filter: Option<Filter>,
    /// After `]`: the sub-attribute of the matching values.
    pub sub_after_filter: Option<String>,
}

impl PatchPath {
    pub fn parse(raw: &str) -> Result<PatchPath, FilterError> {
        let raw = raw.trim();
        let Some(open) = raw.find('[') else {
            return Ok(PatchPath {
                attr: AttrPath::parse(raw)?,
                filter: None,
                sub_after_filter: None,
            });
        };
        let close = raw
            .rfind(']')
            .filter(|&close| close > open)
            .ok_or_else(|| FilterError("missing \"]\" in path".into()))?;
        let attr = AttrPath::parse(&raw[..open])?;
        if attr.sub.is_some() {
            return err("a value filter applies to an attribute, not a sub-attribute");
        }
        let filter = Filter::parse(&raw[open + 1..close])?;
        let rest = &raw[close + 1..];
        let sub_after_filter = match rest.strip_prefix('.') {
            Some(s) if AttrPath::parse(s).is_ok_and(|p| p.sub.is_none() && p.urn.is_none()) => {
                Some(s.to_owned())
            }
            None if rest.is_empty() => None,
            _ => return err(format!("bad path {raw:?}")),
        };
        Ok(PatchPath {
            attr,
            filter: Some(filter),
            sub_after_filter,
        })
    }

    /// Whether one value of a multi-valued attribute matches the path's filter.
    pub fn selects(&self, item: &Value) -> bool {
        match &self.filter {
            Some(f) => f.eval(item, Some(&self.attr.name.to_lowercase())),
            None => true,
        }
    }
}

/// The value to sort a resource by: a multi-valued attribute sorts by its primary (or first)
/// value. Strings compare case-insensitively unless caseExact.
pub fn sort_key(resource: &Value, path: &AttrPath) -> Option<Value> {
    let v = lookup(resource, path)?;
    let v = match v {
        Value::Array(items) => items
            .iter()
            .find(|i| i.get("primary") == Some(&Value::Bool(true)))
            .or_else(|| items.first())?,
        other => other,
    };
    let v = match (&path.sub, v) {
        (Some(sub), Value::Object(o)) => get_ci(o, sub)?,
        (None, Value::Object(o)) => get_ci(o, "value")?,
        (_, v) => v,
    };
    match v {
        Value::String(s) if !case_exact(&path.dotted()) => Some(Value::String(s.to_lowercase())),
        Value::Null => None,
        other => Some(other.clone()),
    }
}

/// Orders sort keys; absent values sort last in ascending order (RFC 7644 §3.4.2.3).
pub fn compare_keys(a: &Option<Value>, b: &Option<Value>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(a), Some(b)) => match (a, b) {
            (Value::String(x), Value::String(y)) => x.cmp(y),
            (Value::Number(x), Value::Number(y)) => x
                .as_f64()
                .partial_cmp(&y.as_f64())
                .unwrap_or(Ordering::Equal),
            (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
            _ => a.to_string().cmp(&b.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user() -> Value {
        json!({
            "id": "2819c223-7f76-453a-919d-413861904646",
            "userName": "BJensen@Example.com",
            "externalId": "Ext-1",
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "active": true,
            "emails": [
                {"value": "bjensen@example.com", "type": "work", "primary": true},
                {"value": "babs@jensen.org", "type": "home"}
            ],
            "meta": {"lastModified": "2011-05-13T04:42:34Z", "resourceType": "User"},
            ENTERPRISE_USER: {"department": "Tour Operations", "employeeNumber": "701984",
                              "manager": {"value": "26118915"}}
        })
    }

    fn m(f: &str) -> bool {
        Filter::parse(f)
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .matches(&user())
    }

    #[test]
    fn every_operator_compares_as_rfc_7644_says() {
        assert!(m(r#"userName eq "bjensen@example.com""#));
        assert!(m(r#"USERNAME Eq "BJENSEN@EXAMPLE.COM""#));
        assert!(!m(r#"userName ne "bjensen@example.com""#));
        assert!(m(r#"userName co "jensen""#));
        assert!(m(r#"userName sw "bJ""#));
        assert!(m(r#"userName ew ".COM""#));
        assert!(m("userName pr"));
        assert!(!m("title pr"));
        assert!(m(r#"meta.lastModified gt "2011-05-13T04:42:33Z""#));
        assert!(m(r#"meta.lastModified ge "2011-05-13T04:42:34Z""#));
        assert!(!m(r#"meta.lastModified lt "2011-05-13T04:42:34Z""#));
        assert!(m(r#"meta.lastModified le "2011-05-13T04:42:34Z""#));
        assert!(m("active eq true"));
        assert!(!m("active eq false"));
        assert!(m(r#"name.familyName eq "jensen""#));
        // caseExact attributes compare exactly.
        assert!(m(r#"externalId eq "Ext-1""#));
        assert!(!m(r#"externalId eq "ext-1""#));
        assert!(!m(r#"id eq "2819C223-7F76-453A-919D-413861904646""#));
    }

    #[test]
    fn logic_precedence_and_grouping() {
        assert!(m(
            r#"userName eq "x" or name.givenName eq "barbara" and active eq true"#
        ));
        assert!(!m(
            r#"(userName eq "x" or name.givenName eq "barbara") and active eq false"#
        ));
        assert!(m(r#"not (userName eq "x")"#));
        assert!(!m(r#"not(userName co "jensen")"#));
        assert!(m(
            r#"userName sw "b" and (emails.type eq "home" or title pr) and not (active eq false)"#
        ));
    }

    #[test]
    fn complex_attribute_filters_apply_to_one_value_at_a_time() {
        assert!(m(r#"emails[type eq "work" and value co "@example.com"]"#));
        assert!(!m(r#"emails[type eq "home" and value co "@example.com"]"#));
        assert!(m(r#"emails co "@jensen.org""#));
        assert!(m(r#"emails.value ew "jensen.org""#));
        assert!(m(r#"emails[not (type eq "work")]"#));
    }

    #[test]
    fn full_urn_paths_reach_the_enterprise_extension() {
        assert!(m(
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "tour operations""#
        ));
        assert!(m(
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value eq "26118915""#
        ));
        assert!(m(
            r#"urn:ietf:params:scim:schemas:core:2.0:User:userName sw "bjensen""#
        ));
    }

    #[test]
    fn bad_filters_are_refused() {
        for f in [
            "",
            "userName",
            r#"userName xx "a""#,
            r#"userName eq"#,
            r#"userName eq "a" and"#,
            r#"(userName eq "a""#,
            r#"emails[type eq "work""#,
            r#"userName eq "unterminated"#,
            r#"not userName eq "a""#,
            r#"userName eq bareword"#,
            r#"1abc eq "a""#,
        ] {
            assert!(Filter::parse(f).is_err(), "{f:?} parsed");
        }
    }

    #[test]
    fn nesting_length_and_term_count_are_bounded_so_no_filter_can_exhaust_the_stack() {
        let refused = |f: &str, why: &str| {
            let e = Filter::parse(f).expect_err("refused");
            assert!(e.0.contains(why), "{:?}: {}", &f[..f.len().min(40)], e.0);
        };
        let nest =
            |open: &str, n: usize| format!("{}userName eq \"a\"{}", open.repeat(n), ")".repeat(n));
        // What crashed the server: 1,300 parentheses, 3,000 `not(`, 40,000 `and`s.
        refused(&nest("(", 1300), "nests deeper than 16");
        refused(&nest("not(", 3000), "longer than 8192 bytes");
        refused(
            &vec![r#"userName eq "a""#; 40_000].join(" and "),
            "longer than",
        );
        // The limits themselves: 16 levels and 256 comparisons pass, one more does not.
        assert!(m(&nest("(", 16).replace("eq \"a\"", "sw \"b\"")));
        refused(&nest("(", 17), "nests deeper than 16");
        refused(&nest("not(", 17), "nests deeper than 16");
        let terms = |n: usize| vec![r#"title eq "x""#; n].join(" or ");
        assert!(!m(&terms(256)));
        refused(&terms(257), "more than 256 comparisons");
        let brackets = format!("{}type eq \"work\"{}", "emails[".repeat(17), "]".repeat(17));
        refused(&brackets, "nests deeper than 16");
        // The same bounds hold inside a PATCH path.
        let path = format!(
            "emails[{}type eq \"work\"{}]",
            "(".repeat(1300),
            ")".repeat(1300)
        );
        assert!(PatchPath::parse(&path).is_err());
    }

    #[test]
    fn malformed_paths_are_refused_not_sliced_out_of_bounds() {
        for raw in [
            "a]b[",
            "emails]x[",
            "é[",
            "abcé",
            "urn:é",
            "]",
            "[",
            "emails[]",
            "ab€c",
        ] {
            assert!(PatchPath::parse(raw).is_err(), "{raw:?} parsed");
        }
        assert!(AttrPath::parse("abcé").is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Text built from the filter grammar's own pieces, so that generated inputs reach
        /// deep into the parser rather than failing at the first character.
        fn filter_like() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("("),
                Just(")"),
                Just("["),
                Just("]"),
                Just("not"),
                Just("and"),
                Just("or"),
                Just("eq"),
                Just("co"),
                Just("gt"),
                Just("pr"),
                Just("\"x\""),
                Just("\"\\\""),
                Just("emails"),
                Just("type"),
                Just("userName"),
                Just("name.givenName"),
                Just("urn:ietf:params:scim:schemas:core:2.0:User:userName"),
                Just("true"),
                Just("null"),
                Just("1.5e3"),
                Just("."),
                Just("é"),
                Just("\\"),
            ];
            (prop::collection::vec(piece, 0..80), any::<bool>())
                .prop_map(|(v, spaced)| v.join(if spaced { " " } else { "" }))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            #[test]
            fn any_text_is_parsed_or_refused_never_a_panic(s in any::<String>()) {
                let _ = Filter::parse(&s);
                let _ = PatchPath::parse(&s);
                let _ = AttrPath::parse(&s);
            }

            #[test]
            fn filter_shaped_text_is_parsed_and_evaluated_or_refused(s in filter_like()) {
                if let Ok(f) = Filter::parse(&s) {
                    let _ = f.matches(&user());
                }
                if let Ok(p) = PatchPath::parse(&format!("emails[{s}]")) {
                    let _ = p.selects(&json!({"type": "work", "value": "x"}));
                }
            }
        }
    }

    #[test]
    fn patch_paths_with_value_filters() {
        let p = PatchPath::parse(r#"emails[type eq "work"].value"#).unwrap();
        assert_eq!(p.attr.name, "emails");
        assert_eq!(p.sub_after_filter.as_deref(), Some("value"));
        assert!(p.selects(&json!({"type": "WORK", "value": "a@b.c"})));
        let p = PatchPath::parse(r#"members[value eq "abc"]"#).unwrap();
        assert!(p.selects(&json!({"value": "abc"})));
        assert!(!p.selects(&json!({"value": "ABC"})));
        let p = PatchPath::parse(
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department",
        )
        .unwrap();
        assert_eq!(p.attr.extension(), Some(ENTERPRISE_USER));
        assert_eq!(p.attr.name, "department");
        assert!(PatchPath::parse("emails[type eq \"work\"]x").is_err());
    }

    #[test]
    fn sorting_uses_primary_values_and_puts_absent_last() {
        let path = AttrPath::parse("emails").unwrap();
        assert_eq!(sort_key(&user(), &path), Some(json!("bjensen@example.com")));
        let title = AttrPath::parse("title").unwrap();
        assert_eq!(
            compare_keys(&sort_key(&user(), &title), &Some(json!("a"))),
            Ordering::Greater
        );
    }
}

//! Kubernetes label selectors as the HPA sends them in `?labelSelector=`: equality
//! (`a=b`, `a==b`, `a!=b`), sets (`a in (x,y)`, `a notin (x)`) and existence (`a`, `!a`),
//! comma-separated and all required. Parsed strictly so a typo is a 400, not "match everything".

use std::collections::BTreeMap;

/// Why a selector string was refused; the message names the position and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {message}")]
pub struct SelectorError {
    /// The selector as received.
    pub selector: String,
    /// What was wrong and where.
    pub message: String,
}

/// One requirement on one label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value`.
    NotEquals(String, String),
    /// `key in (v1,v2)`.
    In(String, Vec<String>),
    /// `key notin (v1,v2)`.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

impl Requirement {
    /// Whether `labels` meet this requirement; `!=` and `notin` hold when the label is absent,
    /// as in Kubernetes.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_label(|key| labels.get(key).map(String::as_str))
    }

    /// [`Self::matches`] over labels read by `label` (a key's value, `None` when absent).
    pub fn matches_label<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            Self::Equals(k, v) => label(k) == Some(v),
            Self::NotEquals(k, v) => label(k) != Some(v),
            Self::In(k, set) => label(k).is_some_and(|v| set.iter().any(|s| s == v)),
            Self::NotIn(k, set) => label(k).is_none_or(|v| !set.iter().any(|s| s == v)),
            Self::Exists(k) => label(k).is_some(),
            Self::DoesNotExist(k) => label(k).is_none(),
        }
    }
}

/// A parsed selector: every requirement must hold. Empty selects everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    /// All must hold.
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// Whether `labels` meet every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether the labels `label` reads meet every requirement: [`Self::matches`] without a map.
    pub fn matches_label<'a>(&self, label: impl Fn(&str) -> Option<&'a str> + Copy) -> bool {
        self.requirements.iter().all(|r| r.matches_label(label))
    }

    /// The one value label `key` must have for this selector to match, when a requirement
    /// says so (`key=v`, `key==v`, `key in (v)`): what lets a caller look that value up
    /// instead of testing every candidate.
    pub fn pinned(&self, key: &str) -> Option<&str> {
        self.requirements.iter().find_map(|r| match r {
            Requirement::Equals(k, v) if k == key => Some(v.as_str()),
            Requirement::In(k, set) if k == key && set.len() == 1 => Some(set[0].as_str()),
            _ => None,
        })
    }

    /// Parses a selector string; an empty or blank string selects everything.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut parser = Parser {
            text,
            tokens: tokenize(text).map_err(|m| error(text, m))?,
            pos: 0,
        };
        let mut requirements = Vec::new();
        if parser.tokens.is_empty() {
            return Ok(Self { requirements });
        }
        loop {
            requirements.push(parser.requirement()?);
            match parser.next() {
                None => break,
                Some(Token::Comma) => continue,
                Some(other) => return Err(parser.fail(format!("expected ',' but found {other}"))),
            }
        }
        Ok(Self { requirements })
    }
}

fn error(selector: &str, message: String) -> SelectorError {
    SelectorError {
        selector: selector.to_owned(),
        message,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Comma,
    Open,
    Close,
    Bang,
    Eq,
    DoubleEq,
    NotEq,
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Word(w) => write!(f, "{w:?}"),
            Self::Comma => f.write_str("','"),
            Self::Open => f.write_str("'('"),
            Self::Close => f.write_str("')'"),
            Self::Bang => f.write_str("'!'"),
            Self::Eq => f.write_str("'='"),
            Self::DoubleEq => f.write_str("'=='"),
            Self::NotEq => f.write_str("'!='"),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            ',' => tokens.push(Token::Comma),
            '(' => tokens.push(Token::Open),
            ')' => tokens.push(Token::Close),
            '!' if chars.peek().is_some_and(|&(_, n)| n == '=') => {
                chars.next();
                tokens.push(Token::NotEq);
            }
            '!' => tokens.push(Token::Bang),
            '=' if chars.peek().is_some_and(|&(_, n)| n == '=') => {
                chars.next();
                tokens.push(Token::DoubleEq);
            }
            '=' => tokens.push(Token::Eq),
            c if is_word_char(c) => {
                let mut end = at + c.len_utf8();
                while let Some(&(i, n)) = chars.peek() {
                    if !is_word_char(n) {
                        break;
                    }
                    end = i + n.len_utf8();
                    chars.next();
                }
                tokens.push(Token::Word(text[at..end].to_owned()));
            }
            other => return Err(format!("unexpected character {other:?} at {at}")),
        }
    }
    Ok(tokens)
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser<'_> {
    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn fail(&self, message: String) -> SelectorError {
        error(self.text, message)
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        if self.peek() == Some(&Token::Bang) {
            self.pos += 1;
            let key = self.key()?;
            return match self.peek() {
                None | Some(Token::Comma) => Ok(Requirement::DoesNotExist(key)),
                Some(other) => {
                    Err(self.fail(format!("expected ',' after !{key} but found {other}")))
                }
            };
        }
        let key = self.key()?;
        match self.peek().cloned() {
            None | Some(Token::Comma) => Ok(Requirement::Exists(key)),
            Some(Token::Eq | Token::DoubleEq) => {
                self.pos += 1;
                Ok(Requirement::Equals(key, self.value()?))
            }
            Some(Token::NotEq) => {
                self.pos += 1;
                Ok(Requirement::NotEquals(key, self.value()?))
            }
            Some(Token::Word(op)) if op == "in" || op == "notin" => {
                self.pos += 1;
                let set = self.set()?;
                Ok(if op == "in" {
                    Requirement::In(key, set)
                } else {
                    Requirement::NotIn(key, set)
                })
            }
            Some(other) => Err(self.fail(format!(
                "expected an operator (=, ==, !=, in, notin) after {key:?} but found {other}"
            ))),
        }
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        match self.next() {
            Some(Token::Word(key)) => {
                validate_key(&key).map_err(|m| self.fail(m))?;
                Ok(key)
            }
            Some(other) => Err(self.fail(format!("expected a label key but found {other}"))),
            None => Err(self.fail("expected a label key but the selector ended".into())),
        }
    }

    /// A value after `=`/`!=`: may be empty (`a=` selects an empty value).
    fn value(&mut self) -> Result<String, SelectorError> {
        match self.peek().cloned() {
            Some(Token::Word(value)) => {
                self.pos += 1;
                validate_value(&value).map_err(|m| self.fail(m))?;
                Ok(value)
            }
            None | Some(Token::Comma) => Ok(String::new()),
            Some(other) => Err(self.fail(format!("expected a label value but found {other}"))),
        }
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        match self.next() {
            Some(Token::Open) => {}
            other => {
                return Err(self.fail(format!(
                    "expected '(' after in/notin but found {}",
                    other.map_or("the end".to_owned(), |t| t.to_string())
                )));
            }
        }
        let mut values = Vec::new();
        loop {
            match self.next() {
                Some(Token::Word(value)) => {
                    validate_value(&value).map_err(|m| self.fail(m))?;
                    values.push(value);
                    match self.next() {
                        Some(Token::Comma) => continue,
                        Some(Token::Close) => break,
                        other => {
                            return Err(self.fail(format!(
                                "expected ',' or ')' in a value set but found {}",
                                other.map_or("the end".to_owned(), |t| t.to_string())
                            )));
                        }
                    }
                }
                Some(Token::Close) if values.is_empty() => {
                    return Err(self.fail("a value set must not be empty".into()));
                }
                other => {
                    return Err(self.fail(format!(
                        "expected a value in a value set but found {}",
                        other.map_or("the end".to_owned(), |t| t.to_string())
                    )));
                }
            }
        }
        Ok(values)
    }
}

/// A qualified name: optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters that starts and ends alphanumeric.
fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let valid = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !valid {
            return Err(format!("invalid label key prefix {prefix:?}"));
        }
    }
    if name.is_empty() || !is_name(name) {
        return Err(format!("invalid label key {key:?}"));
    }
    Ok(())
}

fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_name(value) {
        Ok(())
    } else {
        Err(format!("invalid label value {value:?}"))
    }
}

fn is_name(s: &str) -> bool {
    s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::Requirement::*;
    use super::*;

    fn s(v: &str) -> String {
        v.to_owned()
    }

    #[test]
    fn a_value_is_pinned_by_equality_or_a_set_of_one() {
        let pinned = |text: &str| {
            Selector::parse(text)
                .unwrap()
                .pinned("k")
                .map(str::to_owned)
        };
        assert_eq!(pinned("k=a"), Some(s("a")));
        assert_eq!(pinned("x=y,k==a"), Some(s("a")));
        assert_eq!(pinned("k in (a)"), Some(s("a")));
        for loose in ["", "k", "k!=a", "k in (a,b)", "k notin (a)", "!k", "x=a"] {
            assert_eq!(pinned(loose), None, "{loose}");
        }
    }

    #[test]
    fn selectors_parse() {
        let cases: Vec<(&str, Vec<Requirement>)> = vec![
            ("", vec![]),
            ("   ", vec![]),
            ("a=b", vec![Equals(s("a"), s("b"))]),
            ("a==b", vec![Equals(s("a"), s("b"))]),
            ("a!=b", vec![NotEquals(s("a"), s("b"))]),
            ("a=", vec![Equals(s("a"), s(""))]),
            (
                "scaledobject.spillway.dev/name=orders",
                vec![Equals(s("scaledobject.spillway.dev/name"), s("orders"))],
            ),
            ("a in (x, y)", vec![In(s("a"), vec![s("x"), s("y")])]),
            ("a notin (x)", vec![NotIn(s("a"), vec![s("x")])]),
            ("a", vec![Exists(s("a"))]),
            ("!a", vec![DoesNotExist(s("a"))]),
            (
                "a=b,c in (x,y),!d, e",
                vec![
                    Equals(s("a"), s("b")),
                    In(s("c"), vec![s("x"), s("y")]),
                    DoesNotExist(s("d")),
                    Exists(s("e")),
                ],
            ),
        ];
        for (text, requirements) in cases {
            assert_eq!(
                Selector::parse(text),
                Ok(Selector { requirements }),
                "selector {text:?}"
            );
        }
    }

    #[test]
    fn bad_selectors_are_refused() {
        let cases = [
            "=b",
            "a=b,",
            ",a",
            "a b",
            "a in x",
            "a in (x",
            "a in ()",
            "a in (x,)",
            "!a=b",
            "a=b=c",
            "a=(b)",
            "a>1",
            "-a=b",
            "a=b-",
            "Example.com/a=b",
            "/a",
            "a=b;c=d",
        ];
        for text in cases {
            assert!(
                Selector::parse(text).is_err(),
                "selector {text:?} must fail"
            );
        }
    }

    #[test]
    fn selectors_match_like_kubernetes() {
        let labels: BTreeMap<String, String> =
            [(s("app"), s("orders")), (s("tier"), s("web"))].into();
        let cases = [
            ("", true),
            ("app=orders", true),
            ("app=jobs", false),
            ("app!=jobs", true),
            ("missing!=x", true),
            ("tier in (web,db)", true),
            ("tier in (db)", false),
            ("tier notin (db)", true),
            ("missing notin (db)", true),
            ("missing in (db)", false),
            ("app", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            ("app=orders,tier=db", false),
        ];
        for (text, expected) in cases {
            assert_eq!(
                Selector::parse(text).unwrap().matches(&labels),
                expected,
                "selector {text:?}"
            );
        }
    }
}

//! The expression language of `advanced.scalingModifiers.formula`: the part of
//! [expr-lang](https://expr-lang.org/docs/language-definition), the language KEDA evaluates
//! them in, that composes numbers. A formula names triggers by their `name` and yields one
//! number: `(kafka + rabbit) / 2`, `kafka > 2 ? kafka + rabbit : 1`,
//! `count([a, b, c], {# > 1}) > 1 ? 5 : 0`, `kafka ?? 0`.
//!
//! Supported, with expr's precedence and associativity: numbers, `true`, `false`, `nil`,
//! trigger names, array literals, `+ - * / % ** ^`, unary `- + ! not`, comparisons
//! `== != < > <= >=`, `in`, `&& || and or`, `??` (nil coalescing), `a ? b : c`, `a ?: b`,
//! `let x = ...; ...`, and the builtins `abs ceil floor round min max float int len sum mean
//! median first last count all any none one filter map` (predicates as `{# > 1}` or `# > 1`).
//! Strings, member access, ranges, pipes and other builtins are refused when the formula is
//! compiled, with where and why, so a spillway object never holds a formula it cannot run.
//!
//! Formulas come from tenants: [`Formula::compile`] bounds their length and nesting, and
//! [`Formula::evaluate`] walks the tree without panicking (every failure is a
//! [`FormulaError`]), so no formula can exhaust the stack or the CPU of the process that serves
//! every team's metrics.

use std::fmt;

/// The longest formula accepted, in bytes (the CRD's `maxLength` says the same).
pub const MAX_FORMULA_LENGTH: usize = 1024;

/// The deepest nesting accepted, of sub-expressions while parsing and of operations in the
/// compiled tree (a chain `a + b + c` is one level per operator): bounds the parser's and the
/// evaluator's recursion whatever a tenant writes.
pub const MAX_DEPTH: usize = 100;

/// Why a formula cannot be compiled or evaluated; `position` is a byte offset into the formula.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FormulaError {
    #[error("formula is empty")]
    Empty,
    #[error("formula is {0} bytes long; at most {MAX_FORMULA_LENGTH} are accepted")]
    TooLong(usize),
    #[error("formula nests deeper than {MAX_DEPTH} levels (each operator of a chain is one)")]
    TooDeep,
    #[error("at byte {position}: {message}")]
    Syntax { position: usize, message: String },
    #[error(
        "unknown name {name:?}: a formula names triggers by their name (this object's: {known})"
    )]
    UnknownName { name: String, known: String },
    #[error("{0}")]
    Eval(String),
}

/// A value while a formula runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Number(f64),
    Array(Vec<Value>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Self::Nil => "nil",
            Self::Bool(_) => "bool",
            Self::Number(_) => "number",
            Self::Array(_) => "array",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nil => f.write_str("nil"),
            Self::Bool(b) => write!(f, "{b}"),
            Self::Number(n) => write!(f, "{n}"),
            Self::Array(items) => write!(f, "array of {}", items.len()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinaryOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
    In,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Coalesce,
}

impl BinaryOp {
    /// expr's precedence and whether the operator binds to the right.
    fn precedence(self) -> (u16, bool) {
        match self {
            Self::Or => (10, false),
            Self::And => (15, false),
            Self::Eq | Self::Ne | Self::Lt | Self::Gt | Self::Le | Self::Ge | Self::In => {
                (20, false)
            }
            Self::Add | Self::Sub => (30, false),
            Self::Mul | Self::Div | Self::Mod => (60, false),
            Self::Pow => (100, true),
            Self::Coalesce => (500, false),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnaryOp {
    Not,
    Neg,
    Plus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Builtin {
    Abs,
    Ceil,
    Floor,
    Round,
    Min,
    Max,
    Float,
    Int,
    Len,
    Sum,
    Mean,
    Median,
    First,
    Last,
    Count,
    All,
    Any,
    None,
    One,
    Filter,
    Map,
}

const BUILTINS: &[(&str, Builtin)] = &[
    ("abs", Builtin::Abs),
    ("ceil", Builtin::Ceil),
    ("floor", Builtin::Floor),
    ("round", Builtin::Round),
    ("min", Builtin::Min),
    ("max", Builtin::Max),
    ("float", Builtin::Float),
    ("int", Builtin::Int),
    ("len", Builtin::Len),
    ("sum", Builtin::Sum),
    ("mean", Builtin::Mean),
    ("median", Builtin::Median),
    ("first", Builtin::First),
    ("last", Builtin::Last),
    ("count", Builtin::Count),
    ("all", Builtin::All),
    ("any", Builtin::Any),
    ("none", Builtin::None),
    ("one", Builtin::One),
    ("filter", Builtin::Filter),
    ("map", Builtin::Map),
];

impl Builtin {
    /// Whether the second argument is a predicate run per element (`{# > 1}`).
    fn takes_predicate(self) -> bool {
        matches!(
            self,
            Self::Count | Self::All | Self::Any | Self::None | Self::One | Self::Filter | Self::Map
        )
    }
}

/// A node of a compiled formula. Variables are resolved to slots when compiled.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Literal(Value),
    /// A trigger's value, by its position in the names the formula was compiled with.
    Input(usize),
    /// A `let` binding, by its depth among the bindings in scope.
    Local(usize),
    /// `#`: the element a predicate looks at, by the depth of predicates in scope.
    Element(usize),
    Array(Vec<Node>),
    Unary(UnaryOp, Box<Node>),
    Binary(BinaryOp, Box<Node>, Box<Node>),
    Conditional(Box<Node>, Box<Node>, Box<Node>),
    Let(Box<Node>, Box<Node>),
    Call(Builtin, Vec<Node>),
}

/// A compiled formula over named inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Formula {
    /// The formula as written.
    text: String,
    root: Node,
    /// The names the formula was compiled with, in the order [`Formula::evaluate`] takes values.
    names: Vec<String>,
    /// expr returns nil only from formulas with `??`: KEDA wraps the others in `float()`, so
    /// there a nil is an error.
    may_be_nil: bool,
}

impl Formula {
    /// Parses `text` with `names` as its variables (the object's trigger names), then runs it
    /// once with every input at -1 as KEDA's admission does, so a formula that cannot give a
    /// number (`a > 1`, `nil + a`) is refused before it is served.
    pub fn compile(text: &str, names: &[String]) -> Result<Self, FormulaError> {
        if text.trim().is_empty() {
            return Err(FormulaError::Empty);
        }
        if text.len() > MAX_FORMULA_LENGTH {
            return Err(FormulaError::TooLong(text.len()));
        }
        let tokens = lex(text)?;
        let mut parser = Parser {
            tokens,
            at: 0,
            depth: 0,
            names,
            locals: Vec::new(),
            predicates: 0,
            end: text.len(),
        };
        let root = parser.sequence()?;
        if let Some(token) = parser.tokens.get(parser.at) {
            return Err(parser.error_at(token.position, format!("unexpected {}", token.kind)));
        }
        if tree_depth(&root) > MAX_DEPTH {
            return Err(FormulaError::TooDeep);
        }
        let formula = Self {
            text: text.to_owned(),
            root,
            names: names.to_vec(),
            may_be_nil: text.contains("??"),
        };
        let probe: Vec<Option<f64>> = vec![Some(-1.0); names.len()];
        formula.evaluate(&probe)?;
        Ok(formula)
    }

    /// The formula as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The trigger names the formula takes values for, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Runs the formula with one value per name (`None`: nil, a trigger in fallback under
    /// `fallback.behavior: scalingModifiers`). `Ok(None)`: the formula gave nil.
    pub fn evaluate(&self, inputs: &[Option<f64>]) -> Result<Option<f64>, FormulaError> {
        let inputs: Vec<Value> = inputs
            .iter()
            .map(|v| v.map_or(Value::Nil, Value::Number))
            .collect();
        let mut frame = Frame {
            inputs: &inputs,
            locals: Vec::new(),
            elements: Vec::new(),
        };
        match eval(&self.root, &mut frame)? {
            Value::Number(n) => Ok(Some(n)),
            Value::Nil if self.may_be_nil => Ok(None),
            other => Err(FormulaError::Eval(format!(
                "the formula gives {} ({other}), not a number",
                other.kind()
            ))),
        }
    }
}

/// The depth of the tree under `root`, found without recursion (the tree is not yet known to
/// be shallow).
fn tree_depth(root: &Node) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(root, 1)];
    while let Some((node, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        let children: Vec<&Node> = match node {
            Node::Literal(_) | Node::Input(_) | Node::Local(_) | Node::Element(_) => Vec::new(),
            Node::Array(items) | Node::Call(_, items) => items.iter().collect(),
            Node::Unary(_, a) => vec![a],
            Node::Binary(_, a, b) | Node::Let(a, b) => vec![a, b],
            Node::Conditional(a, b, c) => vec![a, b, c],
        };
        stack.extend(children.into_iter().map(|child| (child, depth + 1)));
    }
    deepest
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    Number(f64),
    Ident(String),
    /// An operator or punctuation, as written.
    Op(&'static str),
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "number {n}"),
            Self::Ident(name) => write!(f, "{name:?}"),
            Self::Op(op) => write!(f, "{op:?}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    kind: TokenKind,
    position: usize,
}

/// Operators, longest first so `**` is not read as two `*`.
const OPERATORS: &[&str] = &[
    "**", "??", "==", "!=", "<=", ">=", "&&", "||", "..", "+", "-", "*", "/", "%", "^", "<", ">",
    "!", "?", ":", "(", ")", "[", "]", "{", "}", ",", ";", "=", "#", ".", "|",
];

fn lex(text: &str) -> Result<Vec<Token>, FormulaError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let c = bytes[at];
        if c.is_ascii_whitespace() {
            at += 1;
            continue;
        }
        let start = at;
        if c.is_ascii_digit() || (c == b'.' && bytes.get(at + 1).is_some_and(u8::is_ascii_digit)) {
            while at < bytes.len() && (bytes[at].is_ascii_digit() || bytes[at] == b'_') {
                at += 1;
            }
            // A fraction, but not the range operator `1..2`.
            if bytes.get(at) == Some(&b'.') && bytes.get(at + 1) != Some(&b'.') {
                at += 1;
                while at < bytes.len() && (bytes[at].is_ascii_digit() || bytes[at] == b'_') {
                    at += 1;
                }
            }
            if matches!(bytes.get(at), Some(b'e' | b'E')) {
                let mut end = at + 1;
                if matches!(bytes.get(end), Some(b'+' | b'-')) {
                    end += 1;
                }
                if bytes.get(end).is_some_and(u8::is_ascii_digit) {
                    at = end;
                    while at < bytes.len() && bytes[at].is_ascii_digit() {
                        at += 1;
                    }
                }
            }
            let literal: String = text[start..at].chars().filter(|c| *c != '_').collect();
            let value: f64 = literal.parse().map_err(|_| FormulaError::Syntax {
                position: start,
                message: format!("{:?} is not a number", &text[start..at]),
            })?;
            tokens.push(Token {
                kind: TokenKind::Number(value),
                position: start,
            });
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c == b'$' {
            while at < bytes.len()
                && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_' || bytes[at] == b'$')
            {
                at += 1;
            }
            tokens.push(Token {
                kind: TokenKind::Ident(text[start..at].to_owned()),
                position: start,
            });
            continue;
        }
        if c == b'"' || c == b'\'' || c == b'`' {
            return Err(FormulaError::Syntax {
                position: start,
                message: "strings have no place in a formula that yields a number".into(),
            });
        }
        let Some(op) = OPERATORS.iter().find(|op| text[at..].starts_with(**op)) else {
            let shown = text[at..].chars().next().unwrap_or('?');
            return Err(FormulaError::Syntax {
                position: start,
                message: format!("unexpected character {shown:?}"),
            });
        };
        at += op.len();
        tokens.push(Token {
            kind: TokenKind::Op(op),
            position: start,
        });
    }
    Ok(tokens)
}

// ---------------------------------------------------------------------------------------------
// Parser: precedence climbing, as expr's own parser does it.

struct Parser<'a> {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
    names: &'a [String],
    /// `let` names in scope, innermost last.
    locals: Vec<String>,
    /// Predicates in scope (where `#` means an element).
    predicates: usize,
    end: usize,
}

impl Parser<'_> {
    fn error_at(&self, position: usize, message: String) -> FormulaError {
        FormulaError::Syntax { position, message }
    }

    fn position(&self) -> usize {
        self.tokens.get(self.at).map_or(self.end, |t| t.position)
    }

    fn peek(&self) -> Option<&TokenKind> {
        self.tokens.get(self.at).map(|t| &t.kind)
    }

    fn peek_op(&self) -> Option<&'static str> {
        match self.peek() {
            Some(TokenKind::Op(op)) => Some(op),
            _ => None,
        }
    }

    fn eat_op(&mut self, op: &str) -> bool {
        if self.peek_op() == Some(op) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect_op(&mut self, op: &str) -> Result<(), FormulaError> {
        if self.eat_op(op) {
            return Ok(());
        }
        let found = self
            .peek()
            .map_or_else(|| "the end".to_owned(), ToString::to_string);
        Err(self.error_at(self.position(), format!("expected {op:?}, found {found}")))
    }

    fn enter(&mut self) -> Result<(), FormulaError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(FormulaError::TooDeep);
        }
        Ok(())
    }

    /// `let name = value; body` chains, else one expression.
    fn sequence(&mut self) -> Result<Node, FormulaError> {
        if matches!(self.peek(), Some(TokenKind::Ident(word)) if word == "let") {
            self.enter()?;
            self.at += 1;
            let position = self.position();
            let name = match self.peek() {
                Some(TokenKind::Ident(name)) => name.clone(),
                _ => return Err(self.error_at(position, "expected a name after let".into())),
            };
            self.at += 1;
            self.expect_op("=")?;
            let value = self.expression(0)?;
            self.expect_op(";")?;
            self.locals.push(name);
            let body = self.sequence();
            self.locals.pop();
            self.depth -= 1;
            return Ok(Node::Let(Box::new(value), Box::new(body?)));
        }
        self.expression(0)
    }

    fn binary_op(&self) -> Option<BinaryOp> {
        let op = match self.peek()? {
            TokenKind::Op(op) => match *op {
                "||" => BinaryOp::Or,
                "&&" => BinaryOp::And,
                "==" => BinaryOp::Eq,
                "!=" => BinaryOp::Ne,
                "<" => BinaryOp::Lt,
                ">" => BinaryOp::Gt,
                "<=" => BinaryOp::Le,
                ">=" => BinaryOp::Ge,
                "+" => BinaryOp::Add,
                "-" => BinaryOp::Sub,
                "*" => BinaryOp::Mul,
                "/" => BinaryOp::Div,
                "%" => BinaryOp::Mod,
                "**" | "^" => BinaryOp::Pow,
                "??" => BinaryOp::Coalesce,
                _ => return None,
            },
            TokenKind::Ident(word) => match word.as_str() {
                "or" => BinaryOp::Or,
                "and" => BinaryOp::And,
                "in" => BinaryOp::In,
                _ => return None,
            },
            TokenKind::Number(_) => return None,
        };
        Some(op)
    }

    fn expression(&mut self, min_precedence: u16) -> Result<Node, FormulaError> {
        self.enter()?;
        let mut node = self.unary()?;
        while let Some(op) = self.binary_op() {
            let (precedence, right) = op.precedence();
            if precedence < min_precedence {
                break;
            }
            self.at += 1;
            let rhs = self.expression(if right { precedence } else { precedence + 1 })?;
            node = Node::Binary(op, Box::new(node), Box::new(rhs));
        }
        if let Some(op @ (".." | "|" | ".")) = self.peek_op() {
            let what = match op {
                ".." => "ranges",
                "|" => "pipes",
                _ => "member access",
            };
            return Err(self.error_at(self.position(), format!("{what} are not supported here")));
        }
        if min_precedence == 0 {
            node = self.conditional(node)?;
        }
        self.depth -= 1;
        Ok(node)
    }

    fn conditional(&mut self, condition: Node) -> Result<Node, FormulaError> {
        if !self.eat_op("?") {
            return Ok(condition);
        }
        // `a ?: b` is `a ? a : b`, as expr parses it.
        let then = if self.eat_op(":") {
            condition.clone()
        } else {
            let then = self.expression(0)?;
            self.expect_op(":")?;
            then
        };
        let otherwise = self.expression(0)?;
        Ok(Node::Conditional(
            Box::new(condition),
            Box::new(then),
            Box::new(otherwise),
        ))
    }

    fn unary(&mut self) -> Result<Node, FormulaError> {
        let op = match self.peek() {
            Some(TokenKind::Op("!")) => Some((UnaryOp::Not, 50)),
            Some(TokenKind::Ident(word)) if word == "not" => Some((UnaryOp::Not, 50)),
            Some(TokenKind::Op("-")) => Some((UnaryOp::Neg, 90)),
            Some(TokenKind::Op("+")) => Some((UnaryOp::Plus, 90)),
            _ => None,
        };
        if let Some((op, precedence)) = op {
            self.at += 1;
            let operand = self.expression(precedence)?;
            return Ok(Node::Unary(op, Box::new(operand)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Node, FormulaError> {
        let position = self.position();
        let Some(token) = self.tokens.get(self.at).cloned() else {
            return Err(self.error_at(position, "unexpected end of formula".into()));
        };
        self.at += 1;
        match token.kind {
            TokenKind::Number(n) => Ok(Node::Literal(Value::Number(n))),
            TokenKind::Op("(") => {
                let inner = self.sequence()?;
                self.expect_op(")")?;
                Ok(inner)
            }
            TokenKind::Op("[") => {
                let items = self.list("]")?;
                Ok(Node::Array(items))
            }
            TokenKind::Op("#") => {
                if self.predicates == 0 {
                    return Err(self.error_at(
                        position,
                        "# stands for an element only inside a predicate such as count(list, {# > 1})"
                            .into(),
                    ));
                }
                if matches!(self.peek(), Some(TokenKind::Ident(_))) {
                    return Err(self.error_at(position, "#index and #acc are not supported".into()));
                }
                Ok(Node::Element(self.predicates - 1))
            }
            TokenKind::Ident(name) => self.name(name, position),
            TokenKind::Op(op) => Err(self.error_at(position, format!("unexpected {op:?}"))),
        }
    }

    /// Comma-separated expressions up to `close` (a trailing comma allowed, as in expr).
    fn list(&mut self, close: &str) -> Result<Vec<Node>, FormulaError> {
        let mut items = Vec::new();
        while !self.eat_op(close) {
            if !items.is_empty() {
                self.expect_op(",")?;
                if self.eat_op(close) {
                    break;
                }
            }
            items.push(self.expression(0)?);
        }
        Ok(items)
    }

    fn name(&mut self, name: String, position: usize) -> Result<Node, FormulaError> {
        match name.as_str() {
            "true" => return Ok(Node::Literal(Value::Bool(true))),
            "false" => return Ok(Node::Literal(Value::Bool(false))),
            "nil" => return Ok(Node::Literal(Value::Nil)),
            _ => {}
        }
        if self.eat_op("(") {
            let Some(&(_, builtin)) = BUILTINS.iter().find(|(n, _)| *n == name) else {
                let known: Vec<&str> = BUILTINS.iter().map(|(n, _)| *n).collect();
                return Err(self.error_at(
                    position,
                    format!(
                        "unknown function {name}(); a formula may call {}",
                        known.join(", ")
                    ),
                ));
            };
            let args = if builtin.takes_predicate() {
                self.predicate_args()?
            } else {
                self.list(")")?
            };
            check_arity(builtin, &name, args.len()).map_err(|m| self.error_at(position, m))?;
            return Ok(Node::Call(builtin, args));
        }
        if let Some(depth) = self.locals.iter().rposition(|l| *l == name) {
            return Ok(Node::Local(depth));
        }
        if let Some(index) = self.names.iter().position(|n| *n == name) {
            return Ok(Node::Input(index));
        }
        Err(FormulaError::UnknownName {
            name,
            known: if self.names.is_empty() {
                "none: give the triggers a name".into()
            } else {
                self.names.join(", ")
            },
        })
    }

    /// `(list, predicate)`: the predicate is `{...}` or a bare expression, where `#` is the
    /// element.
    fn predicate_args(&mut self) -> Result<Vec<Node>, FormulaError> {
        let list = self.expression(0)?;
        self.expect_op(",")?;
        self.predicates += 1;
        let predicate = if self.eat_op("{") {
            let inner = self.sequence();
            let inner = inner.and_then(|node| self.expect_op("}").map(|()| node));
            self.predicates -= 1;
            inner?
        } else {
            let inner = self.expression(0);
            self.predicates -= 1;
            inner?
        };
        self.eat_op(",");
        self.expect_op(")")?;
        Ok(vec![list, predicate])
    }
}

fn check_arity(builtin: Builtin, name: &str, count: usize) -> Result<(), String> {
    let (min, max) = match builtin {
        Builtin::Min | Builtin::Max => (1, usize::MAX),
        Builtin::Round => (1, 1),
        b if b.takes_predicate() => (2, 2),
        _ => (1, 1),
    };
    if count < min || count > max {
        let wants = if min == max {
            format!("{min}")
        } else {
            format!("at least {min}")
        };
        return Err(format!("{name}() takes {wants} argument(s), not {count}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Evaluator

struct Frame<'a> {
    inputs: &'a [Value],
    locals: Vec<Value>,
    elements: Vec<Value>,
}

fn eval_error(message: String) -> FormulaError {
    FormulaError::Eval(message)
}

fn number(value: &Value, what: &str) -> Result<f64, FormulaError> {
    match value {
        Value::Number(n) => Ok(*n),
        other => Err(eval_error(format!(
            "{what} needs a number, got {} ({other}); `name ?? 0` gives a default for a trigger in fallback",
            other.kind()
        ))),
    }
}

fn truthy(value: &Value, what: &str) -> Result<bool, FormulaError> {
    match value {
        Value::Bool(b) => Ok(*b),
        other => Err(eval_error(format!(
            "{what} needs true or false, got {} ({other})",
            other.kind()
        ))),
    }
}

fn array<'v>(value: &'v Value, what: &str) -> Result<&'v [Value], FormulaError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(eval_error(format!(
            "{what} needs an array such as [a, b], got {} ({other})",
            other.kind()
        ))),
    }
}

fn numbers(values: &[Value], what: &str) -> Result<Vec<f64>, FormulaError> {
    values.iter().map(|v| number(v, what)).collect()
}

fn eval(node: &Node, frame: &mut Frame<'_>) -> Result<Value, FormulaError> {
    Ok(match node {
        Node::Literal(value) => value.clone(),
        Node::Input(index) => frame.inputs.get(*index).cloned().unwrap_or(Value::Nil),
        Node::Local(depth) => frame.locals.get(*depth).cloned().unwrap_or(Value::Nil),
        Node::Element(depth) => frame.elements.get(*depth).cloned().unwrap_or(Value::Nil),
        Node::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| eval(item, frame))
                .collect::<Result<_, _>>()?,
        ),
        Node::Unary(op, operand) => {
            let value = eval(operand, frame)?;
            match op {
                UnaryOp::Not => Value::Bool(!truthy(&value, "not")?),
                UnaryOp::Neg => Value::Number(-number(&value, "-")?),
                UnaryOp::Plus => Value::Number(number(&value, "+")?),
            }
        }
        Node::Binary(op, lhs, rhs) => binary(*op, lhs, rhs, frame)?,
        Node::Conditional(condition, then, otherwise) => {
            if truthy(&eval(condition, frame)?, "a condition (a ? b : c)")? {
                eval(then, frame)?
            } else {
                eval(otherwise, frame)?
            }
        }
        Node::Let(value, body) => {
            let value = eval(value, frame)?;
            frame.locals.push(value);
            let result = eval(body, frame);
            frame.locals.pop();
            result?
        }
        Node::Call(builtin, args) => call(*builtin, args, frame)?,
    })
}

fn binary(
    op: BinaryOp,
    lhs: &Node,
    rhs: &Node,
    frame: &mut Frame<'_>,
) -> Result<Value, FormulaError> {
    let left = eval(lhs, frame)?;
    // Short circuits, as in expr.
    match op {
        BinaryOp::Coalesce => {
            return if left == Value::Nil {
                eval(rhs, frame)
            } else {
                Ok(left)
            };
        }
        BinaryOp::And if !truthy(&left, "and")? => return Ok(Value::Bool(false)),
        BinaryOp::Or if truthy(&left, "or")? => return Ok(Value::Bool(true)),
        BinaryOp::And => return Ok(Value::Bool(truthy(&eval(rhs, frame)?, "and")?)),
        BinaryOp::Or => return Ok(Value::Bool(truthy(&eval(rhs, frame)?, "or")?)),
        _ => {}
    }
    let right = eval(rhs, frame)?;
    Ok(match op {
        BinaryOp::Eq => Value::Bool(left == right),
        BinaryOp::Ne => Value::Bool(left != right),
        BinaryOp::In => Value::Bool(array(&right, "in")?.contains(&left)),
        BinaryOp::Lt | BinaryOp::Gt | BinaryOp::Le | BinaryOp::Ge => {
            let (a, b) = (number(&left, "<")?, number(&right, "<")?);
            Value::Bool(match op {
                BinaryOp::Lt => a < b,
                BinaryOp::Gt => a > b,
                BinaryOp::Le => a <= b,
                _ => a >= b,
            })
        }
        _ => {
            let what = match op {
                BinaryOp::Add => "+",
                BinaryOp::Sub => "-",
                BinaryOp::Mul => "*",
                BinaryOp::Div => "/",
                BinaryOp::Mod => "%",
                _ => "**",
            };
            let (a, b) = (number(&left, what)?, number(&right, what)?);
            Value::Number(match op {
                BinaryOp::Add => a + b,
                BinaryOp::Sub => a - b,
                BinaryOp::Mul => a * b,
                BinaryOp::Div => a / b,
                BinaryOp::Mod if b == 0.0 => {
                    return Err(eval_error("% by zero".into()));
                }
                BinaryOp::Mod => a % b,
                _ => a.powf(b),
            })
        }
    })
}

fn call(builtin: Builtin, args: &[Node], frame: &mut Frame<'_>) -> Result<Value, FormulaError> {
    if builtin.takes_predicate() {
        let list = eval(&args[0], frame)?;
        let items = array(&list, "a predicate builtin")?.to_vec();
        let mut results = Vec::with_capacity(items.len());
        for item in &items {
            frame.elements.push(item.clone());
            let result = eval(&args[1], frame);
            frame.elements.pop();
            results.push(result?);
        }
        let tests = || -> Result<Vec<bool>, FormulaError> {
            results.iter().map(|r| truthy(r, "a predicate")).collect()
        };
        return Ok(match builtin {
            Builtin::Map => Value::Array(results),
            Builtin::Filter => Value::Array(
                items
                    .into_iter()
                    .zip(tests()?)
                    .filter(|(_, keep)| *keep)
                    .map(|(item, _)| item)
                    .collect(),
            ),
            Builtin::Count => Value::Number(tests()?.iter().filter(|t| **t).count() as f64),
            Builtin::All => Value::Bool(tests()?.iter().all(|t| *t)),
            Builtin::Any => Value::Bool(tests()?.iter().any(|t| *t)),
            Builtin::None => Value::Bool(!tests()?.iter().any(|t| *t)),
            _ => Value::Bool(tests()?.iter().filter(|t| **t).count() == 1),
        });
    }
    let values: Vec<Value> = args
        .iter()
        .map(|a| eval(a, frame))
        .collect::<Result<_, _>>()?;
    let one = |what: &str| number(&values[0], what);
    let list =
        |what: &str| -> Result<Vec<f64>, FormulaError> { numbers(array(&values[0], what)?, what) };
    Ok(match builtin {
        Builtin::Abs => Value::Number(one("abs()")?.abs()),
        Builtin::Ceil => Value::Number(one("ceil()")?.ceil()),
        Builtin::Floor => Value::Number(one("floor()")?.floor()),
        Builtin::Round => Value::Number(one("round()")?.round()),
        Builtin::Float => Value::Number(one("float()")?),
        Builtin::Int => Value::Number(one("int()")?.trunc()),
        Builtin::Min | Builtin::Max => {
            let items = match values.as_slice() {
                [Value::Array(items)] => numbers(items, "min() and max()")?,
                _ => numbers(&values, "min() and max()")?,
            };
            let pick = if builtin == Builtin::Min {
                f64::min
            } else {
                f64::max
            };
            match items.into_iter().reduce(pick) {
                Some(n) => Value::Number(n),
                None => return Err(eval_error("min() and max() of an empty array".into())),
            }
        }
        Builtin::Len => Value::Number(array(&values[0], "len()")?.len() as f64),
        Builtin::Sum => Value::Number(list("sum()")?.iter().sum()),
        Builtin::Mean => {
            let items = list("mean()")?;
            if items.is_empty() {
                return Err(eval_error("mean() of an empty array".into()));
            }
            Value::Number(items.iter().sum::<f64>() / items.len() as f64)
        }
        Builtin::Median => {
            let mut items = list("median()")?;
            if items.is_empty() {
                return Err(eval_error("median() of an empty array".into()));
            }
            items.sort_by(f64::total_cmp);
            let mid = items.len() / 2;
            Value::Number(if items.len() % 2 == 0 {
                (items[mid - 1] + items[mid]) / 2.0
            } else {
                items[mid]
            })
        }
        Builtin::First | Builtin::Last => {
            let items = array(&values[0], "first() and last()")?;
            let item = if builtin == Builtin::First {
                items.first()
            } else {
                items.last()
            };
            item.cloned().unwrap_or(Value::Nil)
        }
        _ => unreachable!("predicate builtins are handled above"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| (*n).to_owned()).collect()
    }

    fn run(text: &str, inputs: &[(&str, Option<f64>)]) -> Result<Option<f64>, FormulaError> {
        let list: Vec<&str> = inputs.iter().map(|(n, _)| *n).collect();
        let formula = Formula::compile(text, &names(&list))?;
        let values: Vec<Option<f64>> = inputs.iter().map(|(_, v)| *v).collect();
        formula.evaluate(&values)
    }

    #[test]
    fn keda_s_documented_formulas_give_keda_s_values() {
        let two = |a: f64, b: f64| [("trig_one", Some(a)), ("trig_two", Some(b))];
        assert_eq!(
            run("(trig_one + trig_two)/2", &two(3.0, 5.0)),
            Ok(Some(4.0))
        );
        let ternary = "trig_one > 2 ? trig_one + trig_two : 1";
        assert_eq!(run(ternary, &two(3.0, 5.0)), Ok(Some(8.0)));
        assert_eq!(run(ternary, &two(2.0, 5.0)), Ok(Some(1.0)));
        let nested = "trig_one < 2 ? trig_one+trig_two >= 2 ? 5 : 10 : 0";
        assert_eq!(run(nested, &two(1.0, 1.0)), Ok(Some(5.0)));
        assert_eq!(run(nested, &two(1.0, 0.5)), Ok(Some(10.0)));
        assert_eq!(run(nested, &two(2.0, 5.0)), Ok(Some(0.0)));
        let count = "count([trig_one,trig_two,trig_three],{#>1}) > 1 ? 5 : 0";
        let three = |a: f64, b: f64, c: f64| {
            [
                ("trig_one", Some(a)),
                ("trig_two", Some(b)),
                ("trig_three", Some(c)),
            ]
        };
        assert_eq!(run(count, &three(2.0, 2.0, 0.0)), Ok(Some(5.0)));
        assert_eq!(run(count, &three(2.0, 1.0, 0.0)), Ok(Some(0.0)));
        // The RabbitMQ scaler's documented example.
        let rabbit = "max(p2d_ratio, qlen/1000)";
        let pair = [("p2d_ratio", Some(0.8)), ("qlen", Some(1500.0))];
        assert_eq!(run(rabbit, &pair), Ok(Some(1.5)));
        // The same predicate without braces, as newer expr accepts it.
        let bare = "count([trig_one,trig_two,trig_three], # > 1)";
        assert_eq!(run(bare, &three(2.0, 2.0, 0.0)), Ok(Some(2.0)));
    }

    #[test]
    fn precedence_and_associativity_follow_expr() {
        let none: [(&str, Option<f64>); 0] = [];
        let cases = [
            ("1 + 2 * 3", 7.0),
            ("(1 + 2) * 3", 9.0),
            ("2 ** 3 ** 2", 512.0),
            ("2 ^ 3", 8.0),
            ("-2 ** 2", -4.0),
            ("10 - 4 - 3", 3.0),
            ("12 / 3 / 2", 2.0),
            ("7 % 4", 3.0),
            ("1 < 2 && 3 > 2 ? 1 : 0", 1.0),
            ("not (1 > 2) ? 4 : 5", 4.0),
            ("false or true ? 6 : 7", 6.0),
            ("1 in [1, 2] ? 8 : 9", 8.0),
            ("let x = 3; let y = x * 2; x + y", 9.0),
            ("max(1, 5, 3) + min([4, 2])", 7.0),
            ("sum([1, 2, 3]) + mean([2, 4]) + median([5, 1, 3])", 12.0),
            (
                "abs(-2) + ceil(1.2) + floor(1.8) + round(2.5) + int(3.9)",
                11.0,
            ),
            (
                "len(filter([1, 5, 7], # > 4)) + sum(map([1, 2], {# * 10}))",
                32.0,
            ),
            (
                "all([2, 3], # > 1) && any([0, 3], # > 1) && none([0], # > 1) && one([0, 3], # > 1) ? 1 : 0",
                1.0,
            ),
            ("1_000 + 1.5e1 + .5", 1015.5),
            ("nil ?? 3", 3.0),
            ("(false ?: true) ? 4 : 5", 4.0),
        ];
        for (text, want) in cases {
            assert_eq!(run(text, &none), Ok(Some(want)), "{text}");
        }
    }

    #[test]
    fn nil_from_a_trigger_in_fallback_takes_the_default_or_is_nil() {
        let inputs = [("kafka", None), ("rabbit", Some(4.0))];
        assert_eq!(run("kafka ?? 0 + rabbit", &inputs), Ok(Some(4.0)));
        assert_eq!(run("(kafka ?? rabbit) * 2", &inputs), Ok(Some(8.0)));
        // With ?? the formula may give nil: the caller serves the fallback.
        assert_eq!(run("kafka ?? nil", &inputs), Ok(None));
        // Without a default, arithmetic on nil is an error that says how to give one.
        let err = run("kafka + rabbit", &inputs).unwrap_err();
        assert!(err.to_string().contains("?? 0"), "{err}");
    }

    #[test]
    fn a_formula_that_cannot_give_a_number_is_refused_when_compiled() {
        let both = names(&["kafka", "rabbit"]);
        let compile = |text: &str| Formula::compile(text, &both).unwrap_err().to_string();
        assert!(compile("kafka > 1").contains("not a number"));
        assert!(compile("kafka + queue").contains("unknown name \"queue\""));
        assert!(compile("kafka + queue").contains("kafka, rabbit"));
        assert!(compile("sqrt(kafka)").contains("unknown function sqrt()"));
        assert!(compile("'a' + kafka").contains("strings"));
        assert!(compile("kafka.lag").contains("member access"));
        assert!(compile("1..3").contains("ranges"));
        assert!(compile("kafka +").contains("unexpected end"));
        assert!(compile("(kafka").contains("expected \")\""));
        assert!(compile("kafka rabbit").contains("unexpected"));
        assert!(compile("#").contains("predicate"));
        assert!(compile("min()").contains("at least 1"));
        assert!(compile("kafka % 0").contains("by zero"));
        assert!(compile("nil").contains("not a number"), "nil only with ??");
        assert_eq!(Formula::compile(" ", &both), Err(FormulaError::Empty));
        let long = "1+".repeat(600) + "1";
        assert!(matches!(
            Formula::compile(&long, &both),
            Err(FormulaError::TooLong(_))
        ));
        let deep = "(".repeat(200) + "1" + &")".repeat(200);
        // Parentheses alone do not deepen the tree, but they nest the parser.
        assert_eq!(Formula::compile(&deep, &both), Err(FormulaError::TooDeep));
        let unnamed = Formula::compile("kafka", &[]).unwrap_err().to_string();
        assert!(unnamed.contains("give the triggers a name"), "{unnamed}");
    }

    #[test]
    fn the_longest_formulas_run_within_bounds() {
        let none: [(&str, Option<f64>); 0] = [];
        // A left-leaning chain is as deep as it is long: up to the bound it runs, past it it is
        // refused (512 additions overflowed a debug build's 2 MiB stack).
        let chain = "1+".repeat(MAX_DEPTH - 1) + "1";
        assert_eq!(run(&chain, &none), Ok(Some(MAX_DEPTH as f64)));
        let longer = "1+".repeat(511) + "1";
        assert_eq!(run(&longer, &none), Err(FormulaError::TooDeep));
        let unary = "-".repeat(1000) + "1";
        assert_eq!(run(&unary, &none), Err(FormulaError::TooDeep));
        let arrays = "[".repeat(300) + &"]".repeat(300);
        assert_eq!(run(&arrays, &none), Err(FormulaError::TooDeep));
    }

    #[test]
    fn division_by_zero_is_infinite_not_an_error_as_in_expr() {
        // The caller refuses to serve a value that is not finite.
        assert_eq!(
            run(
                "kafka / rabbit",
                &[("kafka", Some(1.0)), ("rabbit", Some(0.0))]
            ),
            Ok(Some(f64::INFINITY))
        );
    }
}

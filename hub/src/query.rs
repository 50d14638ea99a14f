//! A subset of the IoT Hub query language over twins:
//! `SELECT * FROM devices [WHERE <condition>]`, where a condition combines comparisons
//! (`=`, `!=`, `<>`, `<`, `<=`, `>`, `>=`), `IN [...]`, `NIN [...]`, `IS_DEFINED(path)`,
//! `NOT`, `AND`, `OR` and parentheses over paths such as `tags.site`, `deviceId`,
//! `properties.reported.deviceState`.

use serde_json::Value;

use crate::error::Refusal;

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    filter: Option<Expr>,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp(Vec<String>, Op, Value),
    In(Vec<String>, Vec<Value>, bool),
    Defined(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Lit(Value),
    Sym(&'static str),
}

fn bad(msg: impl Into<String>) -> Refusal {
    Refusal::new(400, "BadRequest", format!("query: {}", msg.into()))
}

fn lex(text: &str) -> Result<Vec<Tok>, Refusal> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let end = chars[i + 1..]
                .iter()
                .position(|&d| d == c)
                .ok_or_else(|| bad("unclosed string"))?;
            out.push(Tok::Lit(Value::String(
                chars[i + 1..i + 1 + end].iter().collect(),
            )));
            i += end + 2;
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_digit() || chars[i] == '.' || chars[i] == 'e')
            {
                i += 1;
            }
            let s: String = chars[start..i].iter().collect();
            let v: Value = serde_json::from_str(&s).map_err(|_| bad(format!("bad number {s}")))?;
            out.push(Tok::Lit(v));
        } else if c.is_alphanumeric() || c == '_' || c == '$' || c == '*' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || "_$.*-".contains(chars[i])) {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let sym = ["<=", ">=", "!=", "<>"].into_iter().find(|s| *s == two);
            if let Some(s) = sym {
                out.push(Tok::Sym(s));
                i += 2;
            } else {
                let s = ["=", "<", ">", "(", ")", "[", "]", ","]
                    .into_iter()
                    .find(|s| s.starts_with(c))
                    .ok_or_else(|| bad(format!("unexpected {c:?}")))?;
                out.push(Tok::Sym(s));
                i += 1;
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w))
    }

    fn expect_word(&mut self, w: &str) -> Result<(), Refusal> {
        if self.peek_word(w) {
            self.pos += 1;
            Ok(())
        } else {
            Err(bad(format!("expected {w}")))
        }
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        if matches!(self.toks.get(self.pos), Some(Tok::Sym(x)) if *x == s) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Expr, Refusal> {
        let mut left = self.and()?;
        while self.peek_word("OR") {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, Refusal> {
        let mut left = self.unary()?;
        while self.peek_word("AND") {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, Refusal> {
        if self.peek_word("NOT") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.eat_sym("(") {
            let inner = self.or()?;
            return if self.eat_sym(")") {
                Ok(inner)
            } else {
                Err(bad("expected )"))
            };
        }
        if self.peek_word("IS_DEFINED") {
            self.pos += 1;
            if !self.eat_sym("(") {
                return Err(bad("expected ( after IS_DEFINED"));
            }
            let path = self.path()?;
            return if self.eat_sym(")") {
                Ok(Expr::Defined(path))
            } else {
                Err(bad("expected )"))
            };
        }
        let path = self.path()?;
        for (word, negated) in [("IN", false), ("NIN", true)] {
            if self.peek_word(word) {
                self.pos += 1;
                return Ok(Expr::In(path, self.list()?, negated));
            }
        }
        let op = match self.toks.get(self.pos) {
            Some(Tok::Sym("=")) => Op::Eq,
            Some(Tok::Sym("!=" | "<>")) => Op::Ne,
            Some(Tok::Sym("<")) => Op::Lt,
            Some(Tok::Sym("<=")) => Op::Le,
            Some(Tok::Sym(">")) => Op::Gt,
            Some(Tok::Sym(">=")) => Op::Ge,
            _ => return Err(bad("expected a comparison")),
        };
        self.pos += 1;
        Ok(Expr::Cmp(path, op, self.literal()?))
    }

    fn path(&mut self) -> Result<Vec<String>, Refusal> {
        match self.toks.get(self.pos) {
            Some(Tok::Word(w)) => {
                self.pos += 1;
                let w = w.strip_prefix("devices.").unwrap_or(w);
                Ok(w.split('.').map(str::to_string).collect())
            }
            _ => Err(bad("expected a property path")),
        }
    }

    fn literal(&mut self) -> Result<Value, Refusal> {
        let v = match self.toks.get(self.pos) {
            Some(Tok::Lit(v)) => v.clone(),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("true") => Value::Bool(true),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("false") => Value::Bool(false),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("null") => Value::Null,
            _ => return Err(bad("expected a literal")),
        };
        self.pos += 1;
        Ok(v)
    }

    fn list(&mut self) -> Result<Vec<Value>, Refusal> {
        if !self.eat_sym("[") {
            return Err(bad("expected ["));
        }
        let mut items = vec![self.literal()?];
        while self.eat_sym(",") {
            items.push(self.literal()?);
        }
        if self.eat_sym("]") {
            Ok(items)
        } else {
            Err(bad("expected ]"))
        }
    }
}

impl Query {
    /// Parses `SELECT * FROM devices [WHERE ...]`.
    pub fn parse(text: &str) -> Result<Self, Refusal> {
        let mut p = Parser {
            toks: lex(text)?,
            pos: 0,
        };
        p.expect_word("SELECT")?;
        p.expect_word("*")?;
        p.expect_word("FROM")?;
        p.expect_word("devices")?;
        let filter = if p.peek_word("WHERE") {
            p.pos += 1;
            Some(p.or()?)
        } else {
            None
        };
        if p.pos != p.toks.len() {
            return Err(bad("unsupported trailing clause"));
        }
        Ok(Self { filter })
    }

    /// Whether a twin (service view) matches.
    pub fn matches(&self, twin: &Value) -> bool {
        self.filter.as_ref().is_none_or(|e| eval(e, twin))
    }
}

fn lookup<'a>(twin: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(twin, |v, key| v.get(key))
        .filter(|v| !v.is_null())
}

fn eval(e: &Expr, twin: &Value) -> bool {
    match e {
        Expr::Or(a, b) => eval(a, twin) || eval(b, twin),
        Expr::And(a, b) => eval(a, twin) && eval(b, twin),
        Expr::Not(a) => !eval(a, twin),
        Expr::Defined(p) => lookup(twin, p).is_some(),
        Expr::In(p, items, negated) => lookup(twin, p).is_some_and(|v| {
            items
                .iter()
                .any(|i| compare(v, i) == Some(std::cmp::Ordering::Equal))
                != *negated
        }),
        Expr::Cmp(p, op, lit) => {
            let Some(v) = lookup(twin, p) else {
                return false;
            };
            let Some(ord) = compare(v, lit) else {
                return *op == Op::Ne;
            };
            match op {
                Op::Eq => ord.is_eq(),
                Op::Ne => ord.is_ne(),
                Op::Lt => ord.is_lt(),
                Op::Le => ord.is_le(),
                Op::Gt => ord.is_gt(),
                Op::Ge => ord.is_ge(),
            }
        }
    }
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn twin() -> Value {
        json!({"deviceId": "d1", "tags": {"site": "basement", "floor": 3},
               "properties": {"reported": {"deviceState": "READY", "ok": true}}})
    }

    #[test]
    fn where_over_tags_reported_in_and_or() {
        let t = twin();
        let yes = [
            "SELECT * FROM devices",
            "SELECT * FROM devices WHERE tags.site = 'basement'",
            "select * from devices where tags.floor >= 3 AND properties.reported.ok = true",
            "SELECT * FROM devices WHERE properties.reported.deviceState IN ['BUSY', 'READY']",
            "SELECT * FROM devices WHERE tags.site = 'x' OR (deviceId = \"d1\" AND NOT tags.floor < 2)",
            "SELECT * FROM devices WHERE IS_DEFINED(tags.site) AND NOT tags.missing = 'a'",
            "SELECT * FROM devices WHERE tags.site NIN ['roof']",
        ];
        for q in yes {
            assert!(Query::parse(q).unwrap().matches(&t), "{q}");
        }
        let no = [
            "SELECT * FROM devices WHERE tags.site = 'roof'",
            "SELECT * FROM devices WHERE tags.missing = 'a'",
            "SELECT * FROM devices WHERE tags.missing != 'a'",
            "SELECT * FROM devices WHERE tags.floor > 3 OR properties.reported.deviceState IN ['BUSY']",
        ];
        for q in no {
            assert!(!Query::parse(q).unwrap().matches(&t), "{q}");
        }
    }

    #[test]
    fn malformed_queries_are_400() {
        for q in [
            "SELECT deviceId FROM devices",
            "SELECT * FROM devices WHERE",
            "SELECT * FROM devices WHERE tags.a = 'x",
        ] {
            assert_eq!(Query::parse(q).unwrap_err().status, 400, "{q}");
        }
    }
}

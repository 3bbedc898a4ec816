//! A minimal JSON reader, enough for cargo's `--message-format=json` lines.
//!
//! Written here so that the xtask stays free of dependencies (it must build while the rest of
//! the workspace changes, and must not move the shared `Cargo.lock`).

use std::collections::BTreeMap;

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`
    Null,
    /// `true` or `false`
    Bool(bool),
    /// Any number (cargo's messages hold only small integers).
    Number(f64),
    /// A string, escapes decoded.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object (key order is not kept).
    Object(BTreeMap<String, Value>),
}

impl Value {
    /// The member `key` of an object, or `None` for anything else.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(map) => map.get(key),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

/// Parses one JSON document; `None` if it is not valid JSON.
pub fn parse(text: &str) -> Option<Value> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let v = p.value()?;
    p.ws();
    (p.i == p.s.len()).then_some(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.i += 1)
    }

    fn literal(&mut self, word: &str, v: Value) -> Option<Value> {
        self.s[self.i..].starts_with(word.as_bytes()).then(|| {
            self.i += word.len();
            v
        })
    }

    fn value(&mut self) -> Option<Value> {
        self.ws();
        match self.peek()? {
            b'{' => self.object(),
            b'[' => self.array(),
            b'"' => self.string().map(Value::String),
            b't' => self.literal("true", Value::Bool(true)),
            b'f' => self.literal("false", Value::Bool(false)),
            b'n' => self.literal("null", Value::Null),
            _ => self.number(),
        }
    }

    fn object(&mut self) -> Option<Value> {
        self.eat(b'{')?;
        let mut map = BTreeMap::new();
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(Value::Object(map));
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.ws();
            self.eat(b':')?;
            let v = self.value()?;
            map.insert(key, v);
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(Value::Object(map));
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self) -> Option<Value> {
        self.eat(b'[')?;
        let mut items = Vec::new();
        self.ws();
        if self.eat(b']').is_some() {
            return Some(Value::Array(items));
        }
        loop {
            items.push(self.value()?);
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(Value::Array(items));
                }
                _ => return None,
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = std::str::from_utf8(self.s.get(self.i..self.i + 4)?).ok()?;
        self.i += 4;
        u32::from_str_radix(digits, 16).ok()
    }

    fn string(&mut self) -> Option<String> {
        self.eat(b'"')?;
        let mut out = String::new();
        loop {
            // Copy the run of plain bytes up to the next quote or backslash in one go.
            let start = self.i;
            while !matches!(self.peek()?, b'"' | b'\\') {
                self.i += 1;
            }
            out.push_str(std::str::from_utf8(&self.s[start..self.i]).ok()?);
            if self.peek()? == b'"' {
                self.i += 1;
                return Some(out);
            }
            self.i += 1; // the backslash
            let esc = self.peek()?;
            self.i += 1;
            match esc {
                b'"' => out.push('"'),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'b' => out.push('\u{8}'),
                b'f' => out.push('\u{c}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'u' => {
                    let hi = self.hex4()?;
                    let code = if (0xD800..0xDC00).contains(&hi) {
                        self.eat(b'\\')?;
                        self.eat(b'u')?;
                        let lo = self.hex4()?;
                        0x10000 + ((hi - 0xD800) << 10) + (lo.checked_sub(0xDC00)? & 0x3FF)
                    } else {
                        hi
                    };
                    out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
                }
                _ => return None,
            }
        }
    }

    fn number(&mut self) -> Option<Value> {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
        {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        text.parse().ok().map(Value::Number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_artifact_line() {
        let line = r#"{"reason":"compiler-artifact","package_id":"path+file:///w#probeset@0.1.0","target":{"kind":["test"],"name":"kprobe"},"profile":{"opt_level":"0","debuginfo":2,"test":true},"executable":"/w/target/debug/deps/kprobe-1a2b","fresh":false,"filenames":["/w/target/debug/deps/kprobe-1a2b"]}"#;
        let v = parse(line).unwrap();
        assert_eq!(v.get("reason").unwrap().as_str(), Some("compiler-artifact"));
        let profile = v.get("profile").unwrap();
        assert_eq!(profile.get("test").unwrap().as_bool(), Some(true));
        assert_eq!(
            v.get("executable").unwrap().as_str(),
            Some("/w/target/debug/deps/kprobe-1a2b")
        );
        assert_eq!(profile.get("debuginfo"), Some(&Value::Number(2.0)));
    }

    #[test]
    fn escapes_and_nesting() {
        let v =
            parse(r#" {"a": ["x\"y\\z\n", "\u00e9\ud83d\ude00", null, false, -1.5e2, {}, []]} "#)
                .unwrap();
        let Value::Array(items) = v.get("a").unwrap() else {
            panic!("not an array")
        };
        assert_eq!(items[0].as_str(), Some("x\"y\\z\n"));
        assert_eq!(items[1].as_str(), Some("é😀"));
        assert_eq!(items[2], Value::Null);
        assert_eq!(items[3], Value::Bool(false));
        assert_eq!(items[4], Value::Number(-150.0));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse("   Compiling probeset v0.1.0"), None);
        assert_eq!(parse(r#"{"a":1"#), None);
        assert_eq!(parse(r#"{"a":1} x"#), None);
        assert_eq!(parse(r#""unterminated"#), None);
    }
}

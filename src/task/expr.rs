//! The arithmetic of a Countdown answer, evaluated as Python's `eval` would for the inputs
//! TinyZero's reward lets through — without `eval`. Grammar (Python precedence):
//!
//! ```text
//! expr   := term (('+' | '-') term)*
//! term   := unary (('*' | '/') unary)*
//! unary  := ('+' | '-') unary | atom
//! atom   := number | '(' expr ')'
//! number := digits ['.' [digits]] | '.' digits
//! ```
//!
//! Values are f64 with true division. `**` and `//` are rejected (TinyZero's `eval` accepts
//! them; ours is the one deliberate difference). Bounded: at most `MAX_LEN` bytes and
//! `MAX_DEPTH` nested parentheses/unary operators, so every input is parsed in linear time
//! with bounded recursion and never panics.

pub const MAX_LEN: usize = 100_000;
/// Python's parser refuses more than 200 nested parentheses; so do we.
pub const MAX_DEPTH: usize = 200;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EvalError {
    TooLong,
    TooDeep,
    Syntax(String),
    DivisionByZero,
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    /// Python source whitespace inside an expression: space, tab, form feed.
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | 0x0c) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn err<T>(&self, what: &str) -> Result<T, EvalError> {
        Err(EvalError::Syntax(format!("{what} at byte {}", self.i)))
    }

    fn enter(&mut self) -> Result<(), EvalError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(EvalError::TooDeep);
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<f64, EvalError> {
        let mut v = self.term()?;
        while let Some(op @ (b'+' | b'-')) = self.peek() {
            self.i += 1;
            let r = self.term()?;
            v = if op == b'+' { v + r } else { v - r };
        }
        Ok(v)
    }

    fn term(&mut self) -> Result<f64, EvalError> {
        let mut v = self.unary()?;
        while let Some(op @ (b'*' | b'/')) = self.peek() {
            self.i += 1;
            if self.s.get(self.i) == Some(&op) {
                return self.err(if op == b'*' { "'**' is not allowed" } else { "'//' is not allowed" });
            }
            let r = self.unary()?;
            if op == b'*' {
                v *= r;
            } else {
                if r == 0.0 {
                    return Err(EvalError::DivisionByZero);
                }
                v /= r;
            }
        }
        Ok(v)
    }

    fn unary(&mut self) -> Result<f64, EvalError> {
        match self.peek() {
            Some(op @ (b'+' | b'-')) => {
                self.i += 1;
                self.enter()?;
                let v = self.unary()?;
                self.depth -= 1;
                Ok(if op == b'-' { -v } else { v })
            }
            _ => self.atom(),
        }
    }

    fn atom(&mut self) -> Result<f64, EvalError> {
        match self.peek() {
            Some(b'(') => {
                self.i += 1;
                self.enter()?;
                let v = self.expr()?;
                self.depth -= 1;
                if self.peek() != Some(b')') {
                    return self.err("expected ')'");
                }
                self.i += 1;
                Ok(v)
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => self.number(),
            Some(_) => self.err("unexpected character"),
            None => self.err("unexpected end"),
        }
    }

    fn number(&mut self) -> Result<f64, EvalError> {
        let start = self.i;
        let digits = |p: &mut Self| {
            let s = p.i;
            while p.i < p.s.len() && p.s[p.i].is_ascii_digit() {
                p.i += 1;
            }
            p.i - s
        };
        let int_digits = digits(self);
        let mut frac = false;
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            frac = true;
            let frac_digits = digits(self);
            if int_digits == 0 && frac_digits == 0 {
                return self.err("a lone '.'");
            }
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
        // Python rejects integer literals with leading zeros ("08"), but accepts "0", "00".
        if !frac && text.len() > 1 && text.starts_with('0') && text.bytes().any(|b| b != b'0') {
            return self.err("leading zeros in an integer literal");
        }
        // A number directly followed by '(' or another number is a call or juxtaposition in
        // Python: an error either way.
        text.parse::<f64>().map_err(|_| EvalError::Syntax(format!("bad number '{text}'")))
    }
}

/// Evaluates `s` (already checked against TinyZero's character class by the caller).
pub fn eval(s: &str) -> Result<f64, EvalError> {
    if s.len() > MAX_LEN {
        return Err(EvalError::TooLong);
    }
    let mut p = Parser { s: s.as_bytes(), i: 0, depth: 0 };
    let v = p.expr()?;
    if p.peek().is_some() {
        return p.err("trailing input");
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_semantics() {
        assert_eq!(eval("(1 + 2) / 3"), Ok(1.0));
        assert_eq!(eval("44 + 19 + 35"), Ok(98.0));
        assert_eq!(eval("2 - 3 * 4"), Ok(-10.0));
        assert_eq!(eval("--1"), Ok(1.0));
        assert_eq!(eval("-(2+3)*+2"), Ok(-10.0));
        assert_eq!(eval("7/2"), Ok(3.5));
        assert_eq!(eval("1.5*2"), Ok(3.0));
        assert_eq!(eval(".5 + 1."), Ok(1.5));
        assert_eq!(eval("00 + 1"), Ok(1.0));
        assert!(matches!(eval("08 + 1"), Err(EvalError::Syntax(_))));
        assert!(matches!(eval("2**3"), Err(EvalError::Syntax(_))));
        assert!(matches!(eval("7//2"), Err(EvalError::Syntax(_))));
        assert_eq!(eval("1/0"), Err(EvalError::DivisionByZero));
        assert_eq!(eval("1/(2-2)"), Err(EvalError::DivisionByZero));
        for bad in ["", "()", "(1", "1)", "1 2", "(1)(2)", "+", "1+", ".", "1..2"] {
            assert!(eval(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bounded() {
        let deep = format!("{}1{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
        assert_eq!(eval(&deep), Err(EvalError::TooDeep));
        let ok = format!("{}1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert_eq!(eval(&ok), Ok(1.0));
        assert_eq!(eval(&"-".repeat(100_000)), Err(EvalError::TooDeep));
        assert_eq!(eval(&"1+".repeat(60_000)), Err(EvalError::TooLong));
        assert_eq!(eval(&"9".repeat(400)), Ok(f64::INFINITY));
    }
}

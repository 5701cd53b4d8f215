//! The field format language, parsed and compiled into an automaton.
//!
//! Owns the syntax of a field's `format` and what it means. A format
//! describes one printed line, character by character:
//!
//! | syntax | matches |
//! |---|---|
//! | `\d` | a digit `0-9` |
//! | `\u` | an upper-case letter `A-Z` |
//! | `\l` | a lower-case letter `a-z` |
//! | `\w` | an upper-case letter or a digit |
//! | `.` | any printable ASCII character but the space |
//! | `[A-F0-9/]` | one of a set: characters, ranges, `\d` `\u` `\l` `\w` |
//! | `X`, `-`, `\.` | that character (escape `\ . [ ] ( ) < > { } ? * + \|` with `\`) |
//! | a space | a space that the print (or the reader) may drop |
//! | `(a\|b)` | either |
//! | `?` `*` `+` `{n}` `{n,m}` `{n,}` | repeats of what precedes |
//! | `<...>` | the field's value (at most one; without it, the whole line) |
//!
//! A space in a format is always written once in the value, whether or not
//! it was read. Literals are written as declared.
//!
//! Promise: [`Pattern::parse`] accepts exactly this language, rejects
//! anything else with the column of the problem, and bounds the automaton
//! ([`MAX_STATES`]) whatever the repeat counts, so a format cannot make the
//! decoder allocate without bound.

use std::fmt;

/// Most automaton states a format may compile to.
pub const MAX_STATES: usize = 512;
/// Largest repeat count.
pub const MAX_REPEAT: u32 = 64;
/// Longest format, in characters.
pub const MAX_LEN: usize = 512;
/// Transitions of a compiled format at most (nested repeats of a star make
/// many; a label line needs a few hundred).
pub const MAX_STEPS: usize = 16_384;

/// Marks in an automaton's output where the value starts and ends.
pub(crate) const OPEN: char = '\u{2}';
pub(crate) const CLOSE: char = '\u{3}';

/// A character class: the characters one position may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    /// The characters, sorted, no duplicates.
    pub chars: Vec<char>,
    /// Written as a literal (one fixed character).
    pub literal: bool,
}

impl Class {
    fn of(mut chars: Vec<char>, literal: bool) -> Self {
        chars.sort_unstable();
        chars.dedup();
        Self { chars, literal }
    }
}

/// An automaton edge.
#[derive(Debug, Clone)]
pub(crate) enum EdgeKind {
    /// Consumes one character of the class.
    Char(usize),
    /// Consumes nothing and writes this (a dropped space, a value mark).
    Eps(Option<char>),
}

#[derive(Debug, Clone)]
pub(crate) struct Edge {
    pub(crate) to: usize,
    pub(crate) kind: EdgeKind,
}

/// One step of the epsilon-free automaton: from a state, read a character
/// of `class`, writing `prefix` first, and land in `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) from: usize,
    pub(crate) class: usize,
    pub(crate) to: usize,
    pub(crate) prefix: String,
}

/// A parsed and compiled format.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    pub(crate) classes: Vec<Class>,
    /// Number of states; state 0 is the start.
    pub(crate) states: usize,
    /// Epsilon-free steps, grouped by nothing in particular.
    pub(crate) steps: Vec<Step>,
    /// For each state: `Some(suffix)` if the line may end there, with what
    /// to write at the end.
    pub(crate) accept: Vec<Option<String>>,
    has_value: bool,
}

/// Why a format was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    /// 1-based column (in characters) of the problem; 0 for the whole format.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.column == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "at column {}: {}", self.column, self.message)
        }
    }
}

impl std::error::Error for PatternError {}

#[derive(Debug, Clone)]
enum Node {
    Class(usize),
    SoftSpace(usize),
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    Repeat(Box<Node>, u32, Option<u32>),
    Value(Box<Node>),
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    classes: Vec<Class>,
    values: usize,
    depth_in_value: usize,
}

fn err<T>(column: usize, message: impl Into<String>) -> Result<T, PatternError> {
    Err(PatternError { column, message: message.into() })
}

const SPECIAL: &str = "\\.[]()<>{}?*+|";

fn named_class(c: char) -> Option<Vec<char>> {
    match c {
        'd' => Some(('0'..='9').collect()),
        'u' => Some(('A'..='Z').collect()),
        'l' => Some(('a'..='z').collect()),
        'w' => Some(('A'..='Z').chain('0'..='9').collect()),
        _ => None,
    }
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn col(&self) -> usize {
        self.pos + 1
    }

    fn class(&mut self, chars: Vec<char>, literal: bool) -> usize {
        let c = Class::of(chars, literal);
        if let Some(i) = self.classes.iter().position(|k| *k == c) {
            return i;
        }
        self.classes.push(c);
        self.classes.len() - 1
    }

    fn alt(&mut self) -> Result<Node, PatternError> {
        let mut alts = vec![self.concat()?];
        while self.peek() == Some('|') {
            self.pos += 1;
            alts.push(self.concat()?);
        }
        Ok(if alts.len() == 1 { alts.remove(0) } else { Node::Alt(alts) })
    }

    fn concat(&mut self) -> Result<Node, PatternError> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if matches!(c, '|' | ')' | '>') {
                break;
            }
            items.push(self.repeat()?);
        }
        Ok(Node::Concat(items))
    }

    fn count(&mut self) -> Result<u32, PatternError> {
        let start = self.pos;
        let mut n: u32 = 0;
        while let Some(d) = self.peek().and_then(|c| c.to_digit(10)) {
            n = n.saturating_mul(10).saturating_add(d);
            self.pos += 1;
        }
        if self.pos == start {
            return err(self.col(), "a repeat count is a number, as in {3} or {2,5}");
        }
        if n > MAX_REPEAT {
            return err(start + 1, format!("repeat count {n} is over {MAX_REPEAT}"));
        }
        Ok(n)
    }

    fn repeat(&mut self) -> Result<Node, PatternError> {
        let mut node = self.atom()?;
        loop {
            let col = self.col();
            let (min, max) = match self.peek() {
                Some('?') => {
                    self.pos += 1;
                    (0, Some(1))
                }
                Some('*') => {
                    self.pos += 1;
                    (0, None)
                }
                Some('+') => {
                    self.pos += 1;
                    (1, None)
                }
                Some('{') => {
                    self.pos += 1;
                    let min = self.count()?;
                    let max = if self.peek() == Some(',') {
                        self.pos += 1;
                        if self.peek() == Some('}') {
                            None
                        } else {
                            Some(self.count()?)
                        }
                    } else {
                        Some(min)
                    };
                    if self.peek() != Some('}') {
                        return err(self.col(), "a repeat count ends with }");
                    }
                    self.pos += 1;
                    if max.is_some_and(|m| m < min) {
                        return err(
                            col,
                            format!("repeat {{{min},{}}}: the maximum is below the minimum", max.unwrap_or(0)),
                        );
                    }
                    (min, max)
                }
                _ => return Ok(node),
            };
            if matches!(node, Node::Value(_)) {
                return err(col, "the value <...> cannot be repeated; put the repeat inside it");
            }
            node = Node::Repeat(Box::new(node), min, max);
        }
    }

    fn atom(&mut self) -> Result<Node, PatternError> {
        let col = self.col();
        let Some(c) = self.peek() else { return err(col, "unexpected end") };
        self.pos += 1;
        match c {
            '(' => {
                let inner = self.alt()?;
                if self.peek() != Some(')') {
                    return err(col, "this ( is not closed");
                }
                self.pos += 1;
                Ok(inner)
            }
            '<' => {
                if self.values > 0 || self.depth_in_value > 0 {
                    return err(col, "a format has at most one value <...>");
                }
                self.values += 1;
                self.depth_in_value += 1;
                let inner = self.alt()?;
                self.depth_in_value -= 1;
                if self.peek() != Some('>') {
                    return err(col, "this < is not closed by >");
                }
                self.pos += 1;
                Ok(Node::Value(Box::new(inner)))
            }
            '[' => self.set(col),
            '\\' => {
                let Some(e) = self.peek() else { return err(col, "a \\ at the end escapes nothing") };
                self.pos += 1;
                if let Some(chars) = named_class(e) {
                    Ok(Node::Class(self.class(chars, false)))
                } else if SPECIAL.contains(e) || e == ' ' {
                    Ok(Node::Class(self.class(vec![e], true)))
                } else {
                    err(col, format!("unknown escape \\{e} (classes: \\d \\u \\l \\w; or escape one of {SPECIAL})"))
                }
            }
            '.' => Ok(Node::Class(self.class(('!'..='~').collect(), false))),
            ' ' => Ok(Node::SoftSpace(self.class(vec![' '], true))),
            ')' | ']' | '>' | '}' | '?' | '*' | '+' | '{' | '|' => {
                err(col, format!("{c:?} here has nothing to apply to (escape it as \\{c} for the character)"))
            }
            c if c.is_control() => err(col, "control characters cannot be printed on a label"),
            c => Ok(Node::Class(self.class(vec![c], true))),
        }
    }

    fn set(&mut self, col: usize) -> Result<Node, PatternError> {
        let mut chars = Vec::new();
        let mut first = true;
        loop {
            let Some(c) = self.peek() else { return err(col, "this [ is not closed") };
            self.pos += 1;
            match c {
                ']' if !first => break,
                ']' => return err(col, "an empty set []"),
                '\\' => {
                    let Some(e) = self.peek() else { return err(col, "this [ is not closed") };
                    self.pos += 1;
                    if let Some(named) = named_class(e) {
                        chars.extend(named);
                    } else {
                        chars.push(e);
                    }
                }
                c if c.is_control() => return err(self.pos, "control characters cannot be printed on a label"),
                c => {
                    if self.peek() == Some('-') && self.chars.get(self.pos + 1).is_some_and(|&n| n != ']') {
                        let hi = self.chars[self.pos + 1];
                        if hi < c {
                            return err(self.pos, format!("range {c}-{hi} runs backwards"));
                        }
                        if (hi as u32 - c as u32) > 256 {
                            return err(self.pos, format!("range {c}-{hi} is over 256 characters"));
                        }
                        chars.extend(c..=hi);
                        self.pos += 2;
                    } else {
                        chars.push(c);
                    }
                }
            }
            first = false;
        }
        Ok(Node::Class(self.class(chars, false)))
    }
}

/// Thompson construction with outputs on epsilon edges.
struct Builder {
    edges: Vec<Vec<Edge>>,
}

impl Builder {
    fn state(&mut self) -> Result<usize, PatternError> {
        if self.edges.len() >= MAX_STATES * 4 {
            return err(0, format!("the format is too large (over {MAX_STATES} positions once repeats are counted)"));
        }
        self.edges.push(Vec::new());
        Ok(self.edges.len() - 1)
    }

    fn edge(&mut self, from: usize, to: usize, kind: EdgeKind) {
        self.edges[from].push(Edge { to, kind });
    }

    fn build(&mut self, n: &Node, from: usize) -> Result<usize, PatternError> {
        Ok(match n {
            Node::Class(c) => {
                let t = self.state()?;
                self.edge(from, t, EdgeKind::Char(*c));
                t
            }
            Node::SoftSpace(c) => {
                let t = self.state()?;
                self.edge(from, t, EdgeKind::Char(*c));
                self.edge(from, t, EdgeKind::Eps(Some(' ')));
                t
            }
            Node::Concat(items) => {
                let mut cur = from;
                for i in items {
                    cur = self.build(i, cur)?;
                }
                cur
            }
            Node::Alt(alts) => {
                let t = self.state()?;
                for a in alts {
                    let e = self.build(a, from)?;
                    self.edge(e, t, EdgeKind::Eps(None));
                }
                t
            }
            Node::Value(inner) => {
                let s = self.state()?;
                self.edge(from, s, EdgeKind::Eps(Some(OPEN)));
                let e = self.build(inner, s)?;
                let t = self.state()?;
                self.edge(e, t, EdgeKind::Eps(Some(CLOSE)));
                t
            }
            Node::Repeat(inner, min, max) => {
                let mut cur = from;
                for _ in 0..*min {
                    cur = self.build(inner, cur)?;
                }
                match max {
                    None => {
                        let s = self.state()?;
                        self.edge(cur, s, EdgeKind::Eps(None));
                        let e = self.build(inner, s)?;
                        self.edge(e, s, EdgeKind::Eps(None));
                        s
                    }
                    Some(max) => {
                        for _ in *min..*max {
                            let e = self.build(inner, cur)?;
                            let t = self.state()?;
                            self.edge(cur, t, EdgeKind::Eps(None));
                            self.edge(e, t, EdgeKind::Eps(None));
                            cur = t;
                        }
                        cur
                    }
                }
            }
        })
    }

    /// States reachable from `s` by epsilon edges, each with the output
    /// written on the way (the first way found, breadth first).
    fn closure(&self, s: usize) -> Vec<(usize, String)> {
        let mut seen = vec![false; self.edges.len()];
        let mut out = vec![(s, String::new())];
        seen[s] = true;
        let mut i = 0;
        while i < out.len() {
            let (r, w) = out[i].clone();
            for e in &self.edges[r] {
                if let EdgeKind::Eps(o) = e.kind {
                    if !seen[e.to] {
                        seen[e.to] = true;
                        let mut w2 = w.clone();
                        w2.extend(o);
                        out.push((e.to, w2));
                    }
                }
            }
            i += 1;
        }
        out
    }
}

impl Pattern {
    /// Parses and compiles a format.
    ///
    /// # Errors
    /// A [`PatternError`] naming the column and the problem.
    pub fn parse(source: &str) -> Result<Self, PatternError> {
        if source.chars().count() > MAX_LEN {
            return err(0, format!("a format is at most {MAX_LEN} characters"));
        }
        if source.trim().is_empty() {
            return err(0, "the format is empty");
        }
        let mut p =
            Parser { chars: source.chars().collect(), pos: 0, classes: Vec::new(), values: 0, depth_in_value: 0 };
        let ast = p.alt()?;
        if let Some(c) = p.peek() {
            return err(p.col(), format!("{c:?} does not close anything"));
        }
        let mut b = Builder { edges: Vec::new() };
        let start = b.state()?;
        let end = b.build(&ast, start)?;
        // Keep the start and every state a character leads to.
        let n = b.edges.len();
        let mut keep = vec![false; n];
        keep[start] = true;
        for es in &b.edges {
            for e in es {
                if matches!(e.kind, EdgeKind::Char(_)) {
                    keep[e.to] = true;
                }
            }
        }
        let mut index = vec![usize::MAX; n];
        let mut states = 0;
        for (i, k) in keep.iter().enumerate() {
            if *k {
                index[i] = states;
                states += 1;
            }
        }
        if states > MAX_STATES {
            return err(0, format!("the format is too large ({states} positions, at most {MAX_STATES})"));
        }
        let mut steps: Vec<Step> = Vec::new();
        let mut seen_steps: std::collections::HashSet<(usize, usize, usize)> = std::collections::HashSet::new();
        let mut accept = vec![None; states];
        for s in (0..n).filter(|&s| keep[s]) {
            for (r, w) in b.closure(s) {
                if r == end && accept[index[s]].is_none() {
                    accept[index[s]] = Some(w.clone());
                }
                for e in &b.edges[r] {
                    if let EdgeKind::Char(c) = e.kind {
                        if seen_steps.insert((index[s], c, index[e.to])) {
                            if steps.len() >= MAX_STEPS {
                                return err(
                                    0,
                                    format!("the format is too large (over {MAX_STEPS} transitions once repeats are counted)"),
                                );
                            }
                            steps.push(Step { from: index[s], class: c, to: index[e.to], prefix: w.clone() });
                        }
                    }
                }
            }
        }
        if accept[0].is_some() {
            return err(0, "the format matches an empty line; it must ask for at least one character");
        }
        Ok(Self { source: source.to_owned(), classes: p.classes, states, steps, accept, has_value: p.values > 0 })
    }

    /// The format as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the format marks a value with `<...>`.
    pub fn has_value(&self) -> bool {
        self.has_value
    }

    /// Automaton states.
    pub fn states(&self) -> usize {
        self.states
    }

    /// Whether `text` is a line of this format, exactly (a space may be
    /// missing where the format has one). Returns the value it gives.
    pub fn matches(&self, text: &str) -> Option<String> {
        // Sets of (state, output so far); formats are small.
        let mut cur: Vec<(usize, String)> = vec![(0, String::new())];
        for ch in text.chars() {
            let mut next: Vec<(usize, String)> = Vec::new();
            for (s, w) in &cur {
                for st in self.steps.iter().filter(|st| st.from == *s) {
                    if self.classes[st.class].chars.binary_search(&ch).is_ok() && !next.iter().any(|(n, _)| *n == st.to)
                    {
                        next.push((st.to, format!("{w}{}{ch}", st.prefix)));
                    }
                }
            }
            if next.is_empty() {
                return None;
            }
            cur = next;
        }
        cur.into_iter().find_map(|(s, w)| self.accept[s].as_ref().map(|sfx| value_of(&format!("{w}{sfx}"))))
    }
}

/// The value in an automaton output: between the marks, or all of it.
pub(crate) fn value_of(out: &str) -> String {
    match (out.find(OPEN), out.find(CLOSE)) {
        (Some(a), Some(b)) if a < b => out[a + OPEN.len_utf8()..b].to_owned(),
        _ => out.chars().filter(|&c| c != OPEN && c != CLOSE).collect(),
    }
}

#[cfg(test)]
mod tests;

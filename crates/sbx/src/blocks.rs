//! When is a block of typed (or piped) code complete enough to send?
//!
//! A session sends code block by block, so the prompt must know when the user has finished
//! one: `def f():` alone is not a block, nor is `foo(` or a half-written `if … fi`. Each
//! language gets a small line-at-a-time scanner that tracks what is still open (brackets,
//! multi-line strings, comments, heredocs, shell keywords, a trailing `\`). It does not parse:
//! when it is unsure it leans towards "complete" and lets the interpreter report the error,
//! because a prompt that never ends a block is worse than a syntax error. For the same
//! reason two empty lines in a row end any block, unless they are inside a string, a
//! comment or a heredoc.
//!
//! The rules, per language:
//! - **python**: a block continues while a bracket, a triple-quoted string or a trailing `\`
//!   is open. A block whose logical line ends in `:` (or that starts with a decorator) is a
//!   compound statement and ends at an empty line, as in the Python REPL. Single-quoted
//!   strings end at the line's end, as in Python itself.
//! - **javascript**: brackets, template literals (with `${…}`), `/* */` comments, a
//!   trailing `\`, or a line ending in an operator that needs a right-hand side.
//! - **raw** (bash): quotes (which may span lines), `(`/`$(`/`${`, `{ … }`, `if … fi`,
//!   `for/while/until … done`, `case … esac`, heredocs, a trailing `\`, `|`, `&&` or `||`.

use sandbox::Language;

/// One block being assembled line by line.
pub struct Block {
    lines: Vec<String>,
    scan: Scan,
    source: Source,
    /// Empty lines at the end of the block so far.
    trailing_blank: usize,
}

/// Where the lines come from, which decides what an empty line means.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Typed at the prompt: an empty line ends a Python compound statement, as in the
    /// Python REPL, and [`FORCE_BLANK_LINES`] send whatever is open.
    Prompt,
    /// A script from a pipe: empty lines are layout (a function body may contain them), a
    /// Python compound statement ends where the next one starts at column 0, and an open
    /// bracket runs to the end of the script, as `python script.py` would read it.
    Script,
}

/// At the prompt, this many empty lines in a row send a block the scanner still thinks is
/// open (`def f(:`), so the interpreter reports what is wrong instead of the prompt waiting
/// forever — unless they are inside a string, comment or heredoc, where they are text.
const FORCE_BLANK_LINES: usize = 2;

enum Scan {
    Python(PyScan),
    Js(JsScan),
    Shell(ShScan),
}

impl Block {
    pub fn new(language: Language, source: Source) -> Block {
        let scan = match language {
            Language::Python => Scan::Python(PyScan::default()),
            Language::Javascript => Scan::Js(JsScan::default()),
            Language::Raw => Scan::Shell(ShScan::default()),
        };
        Block {
            lines: Vec::new(),
            scan,
            source,
            trailing_blank: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn push(&mut self, line: &str) {
        match &mut self.scan {
            Scan::Python(s) => s.line(line, self.lines.is_empty()),
            Scan::Js(s) => s.line(line),
            Scan::Shell(s) => s.line(line),
        }
        self.lines.push(line.to_string());
        self.trailing_blank = if line.trim().is_empty() {
            self.trailing_blank + 1
        } else {
            0
        };
    }

    /// True when the block can be sent as it stands.
    pub fn is_complete(&self) -> bool {
        let Some(last) = self.lines.last() else {
            return false;
        };
        let in_literal = match &self.scan {
            Scan::Python(s) => s.in_literal(),
            Scan::Js(s) => s.in_literal(),
            Scan::Shell(s) => s.in_literal(),
        };
        let forced = self.source == Source::Prompt && self.trailing_blank >= FORCE_BLANK_LINES;
        if forced && !in_literal {
            return true;
        }
        match &self.scan {
            Scan::Python(s) if self.source == Source::Script => !s.open() && !s.compound,
            Scan::Python(s) => {
                !s.open() && (!s.compound || (self.lines.len() > 1 && last.trim().is_empty()))
            }
            Scan::Js(s) => !s.open(),
            Scan::Shell(s) => !s.open(),
        }
    }

    /// The block's code, without the blank lines that ended it.
    pub fn text(&self) -> String {
        let end = self
            .lines
            .iter()
            .rposition(|l| !l.trim().is_empty())
            .map_or(0, |i| i + 1);
        self.lines[..end].join("\n")
    }

    /// For a script read from a pipe: does `next` start a new statement after a Python
    /// compound block that lacks the blank line the REPL would need? A line back at column 0
    /// does, unless the block still waits for its body or `next` continues the statement
    /// (`else:`, `except`…).
    fn ended_by_dedent(&self, next: &str) -> bool {
        let Scan::Python(s) = &self.scan else {
            return false;
        };
        let starts_statement = next
            .chars()
            .next()
            .is_some_and(|c| !c.is_whitespace() && c != '#');
        const CLAUSES: [&str; 4] = ["else", "elif", "except", "finally"];
        let continues = CLAUSES.iter().any(|kw| {
            next.strip_prefix(kw)
                .is_some_and(|rest| rest.starts_with([':', ' ', '\t', '(', '*']))
        });
        s.compound && !s.open() && !s.expect_body && starts_statement && !continues
    }
}

/// Splits a whole script (read from a pipe) into top-level statements, each sent as one
/// call (see [`Source::Script`]).
pub fn split(language: Language, text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut block = Block::new(language, Source::Script);
    // A complete block is held back until the next line shows it is not continued there
    // (a JavaScript `.then(…)` or `else` on its own line); a script can look ahead where a
    // prompt cannot.
    let mut held = false;
    for line in text.lines() {
        if block.is_empty() && line.trim().is_empty() {
            continue;
        }
        if held && !line.trim().is_empty() {
            if !continues_statement(language, line) {
                blocks.push(block.text());
                block = Block::new(language, Source::Script);
            }
            held = false;
        }
        if block.ended_by_dedent(line) {
            blocks.push(block.text());
            block = Block::new(language, Source::Script);
        }
        block.push(line);
        if block.is_complete() && !line.trim().is_empty() {
            held = true;
        }
    }
    if !block.is_empty() {
        blocks.push(block.text());
    }
    blocks.retain(|b| !b.trim().is_empty());
    blocks
}

/// Whether `next` carries on the statement before it rather than starting one: in
/// JavaScript a line that starts with a member access, a binary operator or `else`/`catch`/
/// `finally` (ASI would not end the statement before it, or could not start one with it).
/// The other languages mark continuation on the line before, which the scanners see.
fn continues_statement(language: Language, next: &str) -> bool {
    if language != Language::Javascript {
        return false;
    }
    let t = next.trim_start();
    let keyword = ["else", "catch", "finally"].iter().any(|kw| {
        t.strip_prefix(kw)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '{', '(']))
    });
    if keyword {
        return true;
    }
    // `++x` and `--x` start statements; `...` and `.5` are not member accesses.
    if t.starts_with("++") || t.starts_with("--") || t.starts_with("...") {
        return false;
    }
    if let Some(rest) = t.strip_prefix('.') {
        return rest.starts_with(|c: char| c.is_alphabetic() || c == '_' || c == '$' || c == '#');
    }
    [
        "?.", "??", "&&", "||", "?", ":", "+", "-", "*", "%", "|", "&", "^", "=", ",", "<", ">",
    ]
    .iter()
    .any(|op| t.starts_with(op))
}

/// The primary and continuation prompts.
pub fn prompts(language: Language) -> (&'static str, &'static str) {
    match language {
        Language::Python => (">>> ", "... "),
        Language::Javascript => ("> ", "... "),
        Language::Raw => ("$ ", "> "),
    }
}

/// Python: brackets, strings, trailing backslash and whether this is a compound statement.
#[derive(Default)]
struct PyScan {
    depth: usize,
    /// Inside a triple-quoted string: its quote character.
    triple: Option<char>,
    /// Inside a one-line string continued with a trailing `\`: its quote character.
    single: Option<char>,
    /// The last physical line ended in a `\` outside a string.
    continued: bool,
    /// The last significant character of the logical line so far.
    last: Option<char>,
    /// At the start of a logical line (its first significant character not seen yet).
    line_start: bool,
    compound: bool,
    /// The last logical line wants an indented body (it ended in `:` or was a decorator).
    expect_body: bool,
    /// The logical line being scanned is a decorator (`@…`): a definition must follow.
    decorator: bool,
    /// A one-line string ran to the line's end: a syntax error, so nothing later can make
    /// the block valid; send it and let Python say so.
    broken: bool,
}

/// Statements that make the Python REPL wait for an empty line even when written on one
/// line (`for i in x: print(i)`).
const PY_COMPOUND: [&str; 8] = ["if", "for", "while", "def", "class", "with", "try", "async"];

impl PyScan {
    /// Inside a string that spans lines.
    fn in_literal(&self) -> bool {
        !self.broken && (self.triple.is_some() || self.single.is_some())
    }

    fn open(&self) -> bool {
        !self.broken
            && (self.depth > 0 || self.triple.is_some() || self.single.is_some() || self.continued)
    }

    fn line(&mut self, line: &str, first: bool) {
        if !self.open() {
            self.line_start = true;
            let head = line.trim_start();
            self.decorator = head.starts_with('@');
            if self.decorator {
                self.compound = true;
            }
            let keyword = PY_COMPOUND.iter().any(|kw| {
                head.strip_prefix(kw)
                    .is_some_and(|rest| rest.starts_with([' ', '\t', '(', ':']))
            });
            if first && keyword {
                self.compound = true;
            }
        }
        self.continued = false;
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        if let Some(q) = self.single.take() {
            i = self.one_line_string(&chars, 0, q);
        }
        while i < chars.len() {
            let c = chars[i];
            if let Some(q) = self.triple {
                if c == '\\' {
                    i += 2;
                    continue;
                }
                if c == q && chars.get(i + 1) == Some(&q) && chars.get(i + 2) == Some(&q) {
                    self.triple = None;
                    self.last = Some(q);
                    i += 3;
                    continue;
                }
                i += 1;
                continue;
            }
            match c {
                '#' => break,
                '\'' | '"' => {
                    if chars.get(i + 1) == Some(&c) && chars.get(i + 2) == Some(&c) {
                        self.triple = Some(c);
                        i += 3;
                    } else {
                        i = self.one_line_string(&chars, i + 1, c);
                    }
                    self.line_start = false;
                    continue;
                }
                '(' | '[' | '{' => self.depth += 1,
                ')' | ']' | '}' => self.depth = self.depth.saturating_sub(1),
                '\\' if i + 1 == chars.len() => {
                    self.continued = true;
                    break;
                }
                _ => {}
            }
            if !c.is_whitespace() {
                self.last = Some(c);
                self.line_start = false;
            }
            i += 1;
        }
        if !self.open() {
            // A decorator line (`@functools.lru_cache`) wants the definition after it.
            self.expect_body = self.last == Some(':') || self.decorator;
            if self.expect_body {
                self.compound = true;
            }
            self.last = None;
            self.decorator = false;
        }
    }

    /// Scans a one-line string's body from `i` (after its opening quote); returns the
    /// index after its closing quote. Unterminated, it ends at the line's end (Python
    /// reports that; the prompt must not wait for it) unless a `\` continues it.
    fn one_line_string(&mut self, chars: &[char], mut i: usize, quote: char) -> usize {
        while i < chars.len() {
            match chars[i] {
                '\\' if i + 1 == chars.len() => {
                    self.single = Some(quote);
                    return chars.len();
                }
                '\\' => i += 2,
                c if c == quote => {
                    self.last = Some(quote);
                    return i + 1;
                }
                _ => i += 1,
            }
        }
        self.broken = true;
        chars.len()
    }
}

/// `f()` or `function f` alone on a line: the body (`{ … }`) follows on the next one.
fn is_function_header(line: &str) -> bool {
    let t = line.trim();
    let name_ok =
        |name: &str| !name.is_empty() && name.chars().all(|c| is_word_char(c) || c == '-');
    if let Some(name) = t.strip_suffix("()") {
        let name = name.trim_end();
        let name = name.strip_prefix("function").map_or(name, str::trim_start);
        return name_ok(name);
    }
    let mut words = t.split_whitespace();
    words.next() == Some("function") && words.next().is_some_and(name_ok) && words.next().is_none()
}

/// What a JavaScript scanner is inside of, innermost last.
#[derive(Clone, Copy, PartialEq, Eq)]
enum JsFrame {
    Bracket,
    /// A template literal's text.
    Template,
    /// `${…}` inside a template literal.
    Interpolation,
    BlockComment,
}

#[derive(Default)]
struct JsScan {
    stack: Vec<JsFrame>,
    /// Inside a quoted string continued with a trailing `\`: its quote character.
    single: Option<char>,
    continued: bool,
    /// A quoted string ran to the line's end: a syntax error nothing later can fix.
    broken: bool,
    /// The line ended in an operator that needs a right-hand side.
    dangling: bool,
    /// The last significant character outside strings and comments, to tell a regex
    /// literal's `/` from a division.
    last: Option<char>,
}

impl JsScan {
    /// Inside a template literal's text, a block comment or a continued string.
    fn in_literal(&self) -> bool {
        !self.broken
            && (self.single.is_some()
                || matches!(
                    self.stack.last(),
                    Some(JsFrame::Template | JsFrame::BlockComment)
                ))
    }

    fn open(&self) -> bool {
        !self.broken
            && (!self.stack.is_empty() || self.single.is_some() || self.continued || self.dangling)
    }

    fn line(&mut self, line: &str) {
        self.continued = false;
        self.dangling = false;
        let chars: Vec<char> = line.chars().collect();
        // The last significant characters on this line, for the dangling-operator check.
        let mut tail = String::new();
        let mut i = 0;
        if let Some(q) = self.single.take() {
            i = self.quoted(&chars, 0, q);
            tail.push(q);
        }
        while i < chars.len() {
            let c = chars[i];
            match self.stack.last() {
                Some(JsFrame::BlockComment) => {
                    if c == '*' && chars.get(i + 1) == Some(&'/') {
                        self.stack.pop();
                        i += 2;
                    } else {
                        i += 1;
                    }
                    continue;
                }
                Some(JsFrame::Template) => {
                    match c {
                        '\\' => i += 1,
                        '`' => {
                            self.stack.pop();
                            self.last = Some('`');
                            tail.push('`');
                        }
                        '$' if chars.get(i + 1) == Some(&'{') => {
                            self.stack.push(JsFrame::Interpolation);
                            i += 1;
                        }
                        _ => {}
                    }
                    i += 1;
                    continue;
                }
                _ => {}
            }
            match c {
                '/' if chars.get(i + 1) == Some(&'/') => break,
                '/' if chars.get(i + 1) == Some(&'*') => {
                    self.stack.push(JsFrame::BlockComment);
                    i += 2;
                    continue;
                }
                '/' if self.regex_allowed() => {
                    i = skip_regex(&chars, i + 1);
                    self.last = Some('/');
                    tail.push('/');
                    continue;
                }
                '\'' | '"' => {
                    i = self.quoted(&chars, i + 1, c);
                    self.last = Some(c);
                    tail.push(c);
                    continue;
                }
                '`' => self.stack.push(JsFrame::Template),
                '(' | '[' | '{' => self.stack.push(JsFrame::Bracket),
                '}' if self.stack.last() == Some(&JsFrame::Interpolation) => {
                    self.stack.pop();
                    // Back in the template's text; this `}` is not code.
                    i += 1;
                    continue;
                }
                ')' | ']' | '}' if self.stack.last() == Some(&JsFrame::Bracket) => {
                    self.stack.pop();
                }
                '\\' if i + 1 == chars.len() => {
                    self.continued = true;
                    i += 1;
                    continue;
                }
                _ => {}
            }
            if !c.is_whitespace() {
                self.last = Some(c);
                tail.push(c);
            }
            i += 1;
        }
        if self.stack.is_empty() && !self.continued {
            self.dangling = needs_operand(&tail);
        }
    }

    /// Skips a quoted string's body from `i`; returns the index after its closing quote. It
    /// ends at the line's end unless a trailing `\` continues it.
    fn quoted(&mut self, chars: &[char], mut i: usize, quote: char) -> usize {
        while i < chars.len() {
            match chars[i] {
                '\\' if i + 1 == chars.len() => {
                    self.single = Some(quote);
                    return chars.len();
                }
                '\\' => i += 2,
                c if c == quote => return i + 1,
                _ => i += 1,
            }
        }
        self.broken = true;
        chars.len()
    }

    fn regex_allowed(&self) -> bool {
        match self.last {
            None => true,
            Some(c) => "(,=:[!&|?{};+-*%<>~^".contains(c),
        }
    }
}

/// Skips a regex literal's body from just after its opening `/`; returns the index after
/// its flags. A regex cannot span lines, so an unterminated one ends at the line's end.
fn skip_regex(chars: &[char], mut i: usize) -> usize {
    let mut class = false;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            '[' => class = true,
            ']' => class = false,
            '/' if !class => {
                i += 1;
                while i < chars.len() && chars[i].is_ascii_alphabetic() {
                    i += 1;
                }
                return i;
            }
            _ => {}
        }
        i += 1;
    }
    chars.len()
}

/// True when a line's code ends in a binary operator (or `=>`, `,`, `.`) that needs more.
/// `++`/`--` are complete postfix operators.
fn needs_operand(tail: &str) -> bool {
    if tail.ends_with("++") || tail.ends_with("--") {
        return false;
    }
    tail.ends_with([
        '=', ',', '.', '?', ':', '&', '|', '^', '*', '%', '<', '>', '+', '-',
    ])
}

/// What a shell scanner is inside of, innermost last.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ShFrame {
    /// `(`, `$(`, `((`.
    Paren,
    /// `{ … }` as a command group.
    Group,
    /// `if`, `for`/`while`/`until`/`select`, `case`.
    If,
    Loop,
    Case,
    /// Double quotes (may span lines); `$(…)` inside them nests.
    Double,
    /// Single quotes (may span lines; no escapes).
    Single,
}

#[derive(Default)]
struct ShScan {
    stack: Vec<ShFrame>,
    continued: bool,
    /// The line ended in `|`, `&&` or `||`.
    dangling: bool,
    /// Heredoc delimiters whose bodies start on the next line, in order; the bool says
    /// leading tabs are stripped (`<<-`).
    pending: Vec<(String, bool)>,
    /// Inside a heredoc body: its delimiter.
    heredoc: Option<(String, bool)>,
}

impl ShScan {
    /// Inside quotes or a heredoc body, where empty lines are data.
    fn in_literal(&self) -> bool {
        self.heredoc.is_some()
            || !self.pending.is_empty()
            || matches!(self.stack.last(), Some(ShFrame::Double | ShFrame::Single))
    }

    fn open(&self) -> bool {
        !self.stack.is_empty()
            || self.continued
            || self.dangling
            || self.heredoc.is_some()
            || !self.pending.is_empty()
    }

    fn line(&mut self, line: &str) {
        if let Some((delim, tabs)) = &self.heredoc {
            let candidate = if *tabs {
                line.trim_start_matches('\t')
            } else {
                line
            };
            if candidate == delim {
                self.heredoc = None;
                self.start_next_heredoc();
            }
            return;
        }
        self.continued = false;
        self.dangling = false;
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        // At the start of a command, where keywords and `{`/`}` count.
        let mut command_start = true;
        let mut last_op: Option<&str> = None;
        while i < chars.len() {
            let c = chars[i];
            match self.stack.last() {
                Some(ShFrame::Single) => {
                    if c == '\'' {
                        self.stack.pop();
                    }
                    i += 1;
                    continue;
                }
                Some(ShFrame::Double) => {
                    match c {
                        '\\' => i += 1,
                        '"' => {
                            self.stack.pop();
                        }
                        '$' if chars.get(i + 1) == Some(&'(') => {
                            self.stack.push(ShFrame::Paren);
                            i += 1;
                        }
                        _ => {}
                    }
                    i += 1;
                    continue;
                }
                _ => {}
            }
            if c.is_whitespace() {
                i += 1;
                continue;
            }
            last_op = None;
            match c {
                '#' if i == 0 || chars[i - 1].is_whitespace() || ";&|()".contains(chars[i - 1]) => {
                    break
                }
                '\\' => {
                    if i + 1 == chars.len() {
                        self.continued = true;
                    }
                    i += 2;
                    command_start = false;
                    continue;
                }
                '\'' => {
                    self.stack.push(ShFrame::Single);
                    command_start = false;
                }
                '"' => {
                    self.stack.push(ShFrame::Double);
                    command_start = false;
                }
                '$' if chars.get(i + 1) == Some(&'(') => {
                    self.stack.push(ShFrame::Paren);
                    i += 2;
                    command_start = true;
                    continue;
                }
                '$' if chars.get(i + 1) == Some(&'{') => {
                    // `${…}` rarely spans lines or nests; it ends at the first `}`.
                    i += 2;
                    while i < chars.len() && chars[i] != '}' {
                        i += 1;
                    }
                    i += 1;
                    command_start = false;
                    continue;
                }
                '$' if chars.get(i + 1) == Some(&'\'') => {
                    // ANSI-C quoting: backslash escapes, ends at the first unescaped `'`.
                    i += 2;
                    while i < chars.len() && chars[i] != '\'' {
                        if chars[i] == '\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                    i += 1;
                    command_start = false;
                    continue;
                }
                '(' => {
                    self.stack.push(ShFrame::Paren);
                    command_start = true;
                }
                ')' => {
                    // In a `case`, `pattern)` has no opening parenthesis.
                    if self.stack.last() == Some(&ShFrame::Paren) {
                        self.stack.pop();
                    }
                    command_start = true;
                }
                ';' | '&' | '|' => {
                    let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
                    last_op = Some(match two.as_str() {
                        "&&" => "&&",
                        "||" => "||",
                        _ if c == '|' => "|",
                        _ => ";",
                    });
                    i += if two == "&&" || two == "||" || two == ";;" {
                        2
                    } else {
                        1
                    };
                    command_start = true;
                    continue;
                }
                '<' if chars[i..].starts_with(&['<', '<', '<']) => {
                    i += 3;
                    command_start = false;
                    continue;
                }
                '<' if chars.get(i + 1) == Some(&'<') => {
                    i = self.heredoc_operator(&chars, i + 2);
                    command_start = false;
                    continue;
                }
                _ => {
                    let start = i;
                    while i < chars.len() && is_word_char(chars[i]) {
                        i += 1;
                    }
                    if i == start {
                        i += 1;
                        command_start = false;
                        continue;
                    }
                    let word: String = chars[start..i].iter().collect();
                    command_start = self.word(&word, command_start);
                    continue;
                }
            }
            i += 1;
        }
        self.dangling = (matches!(last_op, Some("|" | "&&" | "||")) || is_function_header(line))
            && self.stack.is_empty();
        if !self.continued {
            self.start_next_heredoc();
        }
    }

    /// Applies a word's effect on the nesting; returns whether the next word starts a
    /// command.
    fn word(&mut self, word: &str, command_start: bool) -> bool {
        if !command_start {
            return false;
        }
        let top = self.stack.last().copied();
        match word {
            "if" => self.stack.push(ShFrame::If),
            "fi" if top == Some(ShFrame::If) => {
                self.stack.pop();
            }
            "for" | "while" | "until" | "select" => self.stack.push(ShFrame::Loop),
            "done" if top == Some(ShFrame::Loop) => {
                self.stack.pop();
            }
            "case" => {
                self.stack.push(ShFrame::Case);
                return false;
            }
            "esac" if top == Some(ShFrame::Case) => {
                self.stack.pop();
            }
            "{" => self.stack.push(ShFrame::Group),
            "}" if top == Some(ShFrame::Group) => {
                self.stack.pop();
            }
            "then" | "do" | "else" | "elif" | "!" | "time" => return true,
            _ => return false,
        }
        true
    }

    /// Reads a heredoc operator's delimiter (after `<<`); returns the index after it.
    fn heredoc_operator(&mut self, chars: &[char], mut i: usize) -> usize {
        let tabs = chars.get(i) == Some(&'-');
        if tabs {
            i += 1;
        }
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let mut delim = String::new();
        while i < chars.len() && !chars[i].is_whitespace() && !";&|<>()".contains(chars[i]) {
            let c = chars[i];
            if c == '\'' || c == '"' {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    delim.push(chars[i]);
                    i += 1;
                }
            } else if c == '\\' {
                if let Some(&next) = chars.get(i + 1) {
                    delim.push(next);
                }
                i += 1;
            } else {
                delim.push(c);
            }
            i += 1;
        }
        if !delim.is_empty() {
            self.pending.push((delim, tabs));
        }
        i
    }

    fn start_next_heredoc(&mut self) {
        if self.heredoc.is_none() && !self.pending.is_empty() {
            self.heredoc = Some(self.pending.remove(0));
        }
    }
}

fn is_word_char(c: char) -> bool {
    !c.is_whitespace() && !"'\"`;&|()<>$\\".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds lines as a user would type them; returns after which line the block was
    /// complete (1-based), or None.
    fn completes_after(language: Language, lines: &[&str]) -> Option<usize> {
        let mut b = Block::new(language, Source::Prompt);
        for (n, line) in lines.iter().enumerate() {
            b.push(line);
            if b.is_complete() {
                return Some(n + 1);
            }
        }
        None
    }

    #[test]
    fn python_simple_lines_are_complete() {
        for line in [
            "x = 1",
            "print(x)",
            "s = 'a # not a comment'",
            "d = {'a': 1}",
            "f = lambda: 1",
            "x = 1  # trailing: comment:",
            "print('unterminated",
            "f(\"unterminated",
            "a[1:2]",
        ] {
            assert_eq!(
                completes_after(Language::Python, &[line]),
                Some(1),
                "{line}"
            );
        }
    }

    #[test]
    fn python_open_constructs_continue() {
        let py = Language::Python;
        assert_eq!(completes_after(py, &["print(1,", "2)"]), Some(2));
        assert_eq!(completes_after(py, &["x = [", "1,", "]"]), Some(3));
        assert_eq!(completes_after(py, &["s = '''a", "b", "c'''"]), Some(3));
        assert_eq!(completes_after(py, &["x = 1 + \\", "2"]), Some(2));
        assert_eq!(completes_after(py, &["s = 'a\\", "b'"]), Some(2));
        assert_eq!(
            completes_after(py, &["s = \"\"\"x ''' y", "\"\"\""]),
            Some(2)
        );
    }

    #[test]
    fn python_compound_statements_end_at_a_blank_line() {
        let py = Language::Python;
        assert_eq!(
            completes_after(py, &["def f(x):", "    return x * 2", ""]),
            Some(3)
        );
        assert_eq!(
            completes_after(py, &["if x:", "    a()", "else:", "    b()", "   ", "z"]),
            Some(5)
        );
        assert_eq!(
            completes_after(py, &["for i in range(3): print(i)", ""]),
            Some(2)
        );
        assert_eq!(
            completes_after(py, &["@decorator", "def f():", "    pass", ""]),
            Some(4)
        );
        assert_eq!(
            completes_after(py, &["if (a and", "        b):  # why", "    pass", ""]),
            Some(4)
        );
        // A blank line inside brackets does not end the block.
        assert_eq!(
            completes_after(py, &["def f():", "    return [", "", "    ]", ""]),
            Some(5)
        );
        let mut b = Block::new(py, Source::Prompt);
        for line in ["def f():", "    return 1", ""] {
            b.push(line);
        }
        assert_eq!(b.text(), "def f():\n    return 1");
    }

    #[test]
    fn scripts_keep_decorators_continuations_and_function_bodies_with_their_statement() {
        assert_eq!(
            split(
                Language::Python,
                "import functools\n@functools.lru_cache\ndef fib(n):\n    return n\nprint(fib(20))\n@a\n@b(1)\nclass C:\n    pass\n"
            ),
            vec![
                "import functools",
                "@functools.lru_cache\ndef fib(n):\n    return n",
                "print(fib(20))",
                "@a\n@b(1)\nclass C:\n    pass",
            ]
        );
        assert_eq!(
            split(
                Language::Javascript,
                "const r = [1, 2, 3]\n  .map(x => x * 2)\nconsole.log(r)\nconst t = 1\n  + 2\nif (t > 5) {\n  f()\n}\nelse {\n  g()\n}\ntry { h() }\ncatch (e) {}\nfinally {}\n++i\n...x\n"
            ),
            vec![
                "const r = [1, 2, 3]\n  .map(x => x * 2)",
                "console.log(r)",
                "const t = 1\n  + 2",
                "if (t > 5) {\n  f()\n}\nelse {\n  g()\n}",
                "try { h() }\ncatch (e) {}\nfinally {}",
                "++i",
                "...x",
            ]
        );
        assert_eq!(
            split(
                Language::Raw,
                "f()\n{\n  echo in-f\n}\nf\nfunction g\n{\n  echo g\n}\necho 'h()'\n"
            ),
            vec![
                "f()\n{\n  echo in-f\n}",
                "f",
                "function g\n{\n  echo g\n}",
                "echo 'h()'",
            ]
        );
    }

    #[test]
    fn python_scripts_split_like_typed_blocks() {
        let script = "x = 1\n\nprint(x)\ndef f():\n    return 2\nprint(f())\nif x:\n    pass\nelse:\n    pass\n# note\nclass A:\n    '''doc\n\nmore'''\n    y = 1\n\n\nz = (1,\n\n 2)\n";
        assert_eq!(
            split(Language::Python, script),
            vec![
                "x = 1",
                "print(x)",
                "def f():\n    return 2",
                "print(f())",
                // A comment at column 0 does not start a statement; it joins the block.
                "if x:\n    pass\nelse:\n    pass\n# note",
                "class A:\n    '''doc\n\nmore'''\n    y = 1",
                "z = (1,\n\n 2)",
            ]
        );
        assert_eq!(
            split(Language::Python, "x=1\nprint(x)\n"),
            vec!["x=1", "print(x)"]
        );
        assert!(split(Language::Python, "\n  \n").is_empty());
        // Unfinished input is still sent, for the interpreter to report.
        assert_eq!(split(Language::Python, "print((1)\n"), vec!["print((1)"]);
        // Empty lines inside a definition are layout, as in a script file.
        assert_eq!(
            split(
                Language::Python,
                "def f():\n    x = 1\n\n\n    return x\nclass A:\n    def m(self):\n        return 1\n\n    def n(self):\n        return 2\n\nprint(f())\n"
            ),
            vec![
                "def f():\n    x = 1\n\n\n    return x",
                "class A:\n    def m(self):\n        return 1\n\n    def n(self):\n        return 2",
                "print(f())"
            ]
        );
        assert_eq!(
            split(
                Language::Javascript,
                "function f() {\n\n\n  return 1\n}\nf()\n"
            ),
            vec!["function f() {\n\n\n  return 1\n}", "f()"]
        );
    }

    #[test]
    fn two_empty_lines_send_an_open_block_at_the_prompt_unless_in_a_literal() {
        let (py, js, sh) = (Language::Python, Language::Javascript, Language::Raw);
        assert_eq!(completes_after(py, &["def f(:", "", ""]), Some(3));
        assert_eq!(completes_after(py, &["s = '''a", "", "", "b'''"]), Some(4));
        assert_eq!(completes_after(js, &["f(", "", ""]), Some(3));
        assert_eq!(
            completes_after(js, &["const t = `a", "", "", "b`"]),
            Some(4)
        );
        assert_eq!(completes_after(js, &["/* a", "", "", "*/"]), Some(4));
        assert_eq!(completes_after(sh, &["if true; then", "", ""]), Some(3));
        assert_eq!(completes_after(sh, &["cat <<EOF", "", "", "EOF"]), Some(4));
        assert_eq!(completes_after(sh, &["echo 'x", "", "", "y'"]), Some(4));
    }

    #[test]
    fn javascript_rules() {
        let js = Language::Javascript;
        assert_eq!(completes_after(js, &["const x = 1"]), Some(1));
        assert_eq!(completes_after(js, &["console.log('oops"]), Some(1));
        assert_eq!(completes_after(js, &["f('a\\", "b')"]), Some(2));
        assert_eq!(completes_after(js, &["x++"]), Some(1));
        assert_eq!(
            completes_after(js, &["function f() {", "  return 1", "}"]),
            Some(3)
        );
        assert_eq!(
            completes_after(js, &["const s = `a", "${1 + {a: 1}.a}", "`"]),
            Some(3)
        );
        assert_eq!(completes_after(js, &["/* a", "b */ 1"]), Some(2));
        assert_eq!(completes_after(js, &["const r = /[(]/.test('(')"]), Some(1));
        assert_eq!(completes_after(js, &["const q = a / b / c"]), Some(1));
        assert_eq!(completes_after(js, &["const s = '{' // {"]), Some(1));
        assert_eq!(completes_after(js, &["const y =", "  2"]), Some(2));
        assert_eq!(completes_after(js, &["[1, 2]", ""]), Some(1));
        assert_eq!(completes_after(js, &["foo", "  .bar()"]), Some(1));
        assert_eq!(completes_after(js, &["x = a &&", "b"]), Some(2));
        assert_eq!(
            split(
                js,
                "const a = 1\nfunction f() {\n  return a\n}\nconsole.log(f())\n"
            ),
            vec![
                "const a = 1",
                "function f() {\n  return a\n}",
                "console.log(f())"
            ]
        );
    }

    #[test]
    fn shell_rules() {
        let sh = Language::Raw;
        for line in [
            "cd /tmp && export V=7 && f() { echo fn; }",
            "pwd; echo $V; f",
            "echo }",
            "echo {a,b}",
            "echo 'it''s' \"q\\\"\" $'a\\'b'",
            "if true; then echo y; fi",
            "for i in 1 2; do echo $i; done",
            "case x in a) echo a;; *) echo b;; esac",
            "echo ${HOME} $(pwd) # a comment (",
            "sleep 1 &",
            "echo a#b",
            "cat <<< word",
        ] {
            assert_eq!(completes_after(sh, &[line]), Some(1), "{line}");
        }
        assert_eq!(
            completes_after(sh, &["if true", "then", "  echo y", "fi"]),
            Some(4)
        );
        assert_eq!(
            completes_after(sh, &["while read l; do", "  if [ x ]; then :; fi", "done"]),
            Some(3)
        );
        assert_eq!(completes_after(sh, &["echo 'a", "b'"]), Some(2));
        assert_eq!(completes_after(sh, &["echo \"$(echo ')')", "\""]), Some(2));
        assert_eq!(completes_after(sh, &["ls |", "wc -l"]), Some(2));
        assert_eq!(completes_after(sh, &["true &&", "echo y"]), Some(2));
        assert_eq!(completes_after(sh, &["echo a \\", "b"]), Some(2));
        assert_eq!(completes_after(sh, &["f() {", "  echo", "}"]), Some(3));
        assert_eq!(
            completes_after(sh, &["cat <<'EOF' | tr a-z A-Z", "if (", "EOF"]),
            Some(3)
        );
        assert_eq!(
            completes_after(sh, &["cat <<-END", "\tx", "\tEND"]),
            Some(3)
        );
        assert_eq!(
            completes_after(sh, &["case $x in", "  a) echo a ;;", "esac"]),
            Some(3)
        );
        assert_eq!(
            split(
                sh,
                "cd /tmp && export V=7 && f() { echo fn; }\npwd; echo $V; f\n"
            ),
            vec![
                "cd /tmp && export V=7 && f() { echo fn; }",
                "pwd; echo $V; f"
            ]
        );
    }
}

//! Query-text normalization: literals become placeholders before a text
//! leaves the host, so values (names, e-mail addresses, card numbers) are
//! never stored while the statement's shape still is.
//!
//! `SELECT * FROM t WHERE email = 'a@b.c' AND id > 42` becomes
//! `SELECT * FROM t WHERE email = $1 AND id > $2`, numbered like
//! `pg_stat_statements` after any `$n` the text already has. String
//! constants (with `E`, `B`, `X`, `N` and `U&` prefixes), dollar-quoted
//! strings and numbers are replaced; identifiers (quoted or not),
//! comments, keywords and parameters are kept. A text cut short by
//! `query_max_len` inside a literal loses the literal's remainder too.

/// `text` with every literal replaced by a numbered placeholder.
pub fn normalize(text: &str) -> String {
    let b = text.as_bytes();
    let mut next = highest_param(b) + 1;
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    // Bytes [copied, i) are pending verbatim output.
    let mut copied = 0;
    let mut placeholder = |out: &mut String, from: usize, to: usize, copied: &mut usize| {
        out.push_str(&text[*copied..from]);
        out.push('$');
        out.push_str(&next.to_string());
        next += 1;
        *copied = to;
    };
    while i < b.len() {
        let c = b[i];
        let after_ident = i > 0 && is_ident(b[i - 1]);
        match c {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = find(b, i, b"\n").map_or(b.len(), |e| e + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = find(b, i + 2, b"*/").map_or(b.len(), |e| e + 2);
            }
            b'"' => {
                i = find(b, i + 1, b"\"").map_or(b.len(), |e| e + 1);
            }
            b'\'' => {
                let start = literal_prefix_start(b, i);
                let backslashes = start < i && matches!(b[start], b'e' | b'E');
                let end = string_end(b, i + 1, backslashes);
                placeholder(&mut out, start, end, &mut copied);
                i = end;
            }
            b'$' if !after_ident => match dollar_tag(b, i) {
                Some(tag_end) => {
                    let tag = &b[i..tag_end];
                    let end = find(b, tag_end, tag).map_or(b.len(), |e| e + tag.len());
                    placeholder(&mut out, i, end, &mut copied);
                    i = end;
                }
                None => {
                    // A parameter ($1) or a lone $: keep it and its digits.
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            },
            b'0'..=b'9' | b'.' if !after_ident && starts_number(b, i) => {
                let end = number_end(b, i);
                placeholder(&mut out, i, end, &mut copied);
                i = end;
            }
            _ => i += 1,
        }
    }
    out.push_str(&text[copied..]);
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The highest `$n` parameter in the text (0 when none).
fn highest_param(b: &[u8]) -> u64 {
    let mut highest = 0;
    for (i, _) in b.iter().enumerate().filter(|(_, &c)| c == b'$') {
        let digits: Vec<u8> = b[i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .copied()
            .collect();
        if let Ok(n) = std::str::from_utf8(&digits).unwrap_or("").parse::<u64>() {
            highest = highest.max(n);
        }
    }
    highest
}

/// Where a string constant starting with a quote at `quote` really starts:
/// before an `E`, `B`, `X`, `N` or `U&` prefix that stands alone.
fn literal_prefix_start(b: &[u8], quote: usize) -> usize {
    let standalone = |at: usize| at == 0 || !is_ident(b[at - 1]);
    if quote >= 2
        && b[quote - 1] == b'&'
        && matches!(b[quote - 2], b'u' | b'U')
        && standalone(quote - 2)
    {
        return quote - 2;
    }
    if quote >= 1
        && matches!(
            b[quote - 1],
            b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N'
        )
        && standalone(quote - 1)
    {
        return quote - 1;
    }
    quote
}

/// The end (exclusive) of a quoted string whose body starts at `from`;
/// `''` is a quote inside it, and so is `\'` with backslash escapes.
fn string_end(b: &[u8], from: usize, backslashes: bool) -> usize {
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'\\' if backslashes => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// The end of a `$tag$` opening at `at` (exclusive), if it is one.
fn dollar_tag(b: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    if b.get(i).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80) {
        i += 1;
    }
    (b.get(i) == Some(&b'$')).then_some(i + 1)
}

fn starts_number(b: &[u8], i: usize) -> bool {
    b[i].is_ascii_digit() || (b[i] == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
}

/// The end of a numeric constant: digits (with `_` separators), a
/// fraction, an exponent, or a `0x`/`0o`/`0b` integer.
fn number_end(b: &[u8], start: usize) -> usize {
    let mut i = start;
    if b[i] == b'0' && matches!(b.get(i + 1), Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')) {
        i += 2;
        while i < b.len() && (b[i].is_ascii_hexdigit() || b[i] == b'_') {
            i += 1;
        }
        return i;
    }
    let digits = |mut i: usize| {
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
            i += 1;
        }
        i
    };
    i = digits(i);
    if b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
        i = digits(i + 1);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if b.get(j).is_some_and(u8::is_ascii_digit) {
            i = digits(j);
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_numbers_become_placeholders() {
        assert_eq!(
            normalize("SELECT * FROM t WHERE email = 'a@b.c' AND id > 42"),
            "SELECT * FROM t WHERE email = $1 AND id > $2"
        );
        assert_eq!(
            normalize("UPDATE t SET x = 1.5e3, y = -.5, s = E'it\\'s', h = X'1F'"),
            "UPDATE t SET x = $1, y = -$2, s = $3, h = $4"
        );
        assert_eq!(
            normalize("SELECT 'O''Brien', $$a'b$$, $q$x$q$"),
            "SELECT $1, $2, $3"
        );
    }

    #[test]
    fn identifiers_comments_and_parameters_stay() {
        assert_eq!(
            normalize("SELECT t1.c2, \"col 3\" FROM s.t1 -- 'note' 7\nWHERE a = $1 AND b = 2"),
            "SELECT t1.c2, \"col 3\" FROM s.t1 -- 'note' 7\nWHERE a = $1 AND b = $2"
        );
        assert_eq!(normalize("/* 5 */ SELECT now()"), "/* 5 */ SELECT now()");
        assert_eq!(
            normalize("SELECT x::numeric(10,2)"),
            "SELECT x::numeric($1,$2)"
        );
    }

    #[test]
    fn a_text_cut_inside_a_literal_loses_the_rest() {
        assert_eq!(
            normalize("INSERT INTO t VALUES ('secr"),
            "INSERT INTO t VALUES ($1"
        );
        assert_eq!(
            normalize("SELECT 1 ; SELECT ñ, 'ü'"),
            "SELECT $1 ; SELECT ñ, $2"
        );
    }
}

//! The engine's shell-word rules for Dockerfile arguments: words split at
//! unquoted whitespace, quotes removed (`'...'` literal, `"..."` with `\"`,
//! `\\` and `\$` escapes), `$VAR`, `${VAR}`, `${VAR:-default}` and
//! `${VAR:+alternative}` substituted.

use std::collections::BTreeMap;

/// Substitute variables and remove quotes in one word (no splitting).
pub(super) fn substitute(word: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = lex(word, vars, false)?;
    Ok(out.pop().unwrap_or_default())
}

/// Split `rest` into words at unquoted whitespace, quotes removed, `$VAR` substituted
/// when `expand` (the engine's shell-word rules).
pub(super) fn words(
    rest: &str,
    vars: &BTreeMap<String, String>,
    expand: bool,
) -> Result<Vec<String>, String> {
    if expand {
        lex(rest, vars, true)
    } else {
        lex(rest, &BTreeMap::new(), true)
    }
}

pub(super) fn lex(
    input: &str,
    vars: &BTreeMap<String, String>,
    split: bool,
) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = input.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() && split => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated ' in `{input}`")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.peek() {
                            Some(&n @ ('"' | '\\' | '$')) => {
                                chars.next();
                                word.push(n);
                            }
                            _ => word.push('\\'),
                        },
                        Some('$') => word.push_str(&variable(&mut chars, vars)?),
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated \" in `{input}`")),
                    }
                }
            }
            '$' => {
                in_word = true;
                word.push_str(&variable(&mut chars, vars)?);
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word || !split {
        words.push(word);
    }
    Ok(words)
}

/// After a `$`: `NAME`, `{NAME}`, `{NAME:-default}`, `{NAME:+alternative}`.
pub(super) fn variable(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    vars: &BTreeMap<String, String>,
) -> Result<String, String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if chars.peek() == Some(&'{') {
        chars.next();
        let mut inner = String::new();
        loop {
            match chars.next() {
                Some('}') => break,
                Some(c) => inner.push(c),
                None => return Err("unterminated ${".into()),
            }
        }
        let (name, modifier) = match inner.find(|c: char| !is_name(c)) {
            Some(i) => (&inner[..i], Some(&inner[i..])),
            None => (inner.as_str(), None),
        };
        let value = vars.get(name).filter(|v| !v.is_empty());
        return match modifier {
            None => Ok(vars.get(name).cloned().unwrap_or_default()),
            Some(m) if m.starts_with(":-") => {
                Ok(value.cloned().unwrap_or_else(|| m[2..].to_owned()))
            }
            Some(m) if m.starts_with(":+") => {
                Ok(value.map(|_| m[2..].to_owned()).unwrap_or_default())
            }
            Some(m) => Err(format!(
                "the substitution `${{{name}{m}}}` is not supported"
            )),
        };
    }
    let mut name = String::new();
    while let Some(&c) = chars.peek() {
        if !is_name(c) {
            break;
        }
        name.push(c);
        chars.next();
    }
    if name.is_empty() {
        return Ok("$".into());
    }
    Ok(vars.get(&name).cloned().unwrap_or_default())
}

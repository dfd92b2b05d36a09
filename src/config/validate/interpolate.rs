//! `${NAME}` in config string values, replaced by the environment variable
//! before the file is parsed, so that secrets and per-host addresses can
//! come from the unit file or the container instead of the config. Only
//! string *values* are expanded (never keys or comments); `$${` writes a
//! literal `${`, and a `$` not followed by `{` is kept as it is.
//!
//! The expansion works on the text: each string value that needs it is
//! re-written in place as a basic TOML string, so that the parser's error
//! positions and key paths still point into the file as written.

use std::borrow::Cow;

use toml_edit::{ImDocument, Item, Table, Value};

/// What a value may not contain: names the key, the value as written and why.
#[derive(Debug, PartialEq)]
pub(crate) struct Unexpandable {
    /// Dotted key path, e.g. `pools.p.stamps[0].address`.
    pub key: String,
    /// The value as written in the file (quoted).
    pub value: String,
    /// e.g. `environment variable STAMP_HOST is not set`.
    pub rule: String,
}

/// Reminder appended to every error: the one escape there is.
const ESCAPE_HINT: &str = "write $${ for a literal ${";

/// `text` with every `${NAME}` in string values replaced by `lookup(NAME)`.
/// A document that does not parse is returned unchanged: the TOML parser
/// reports that with its position.
pub(crate) fn expand_document<'a>(
    text: &'a str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Cow<'a, str>, Unexpandable> {
    if !text.contains("${") {
        return Ok(Cow::Borrowed(text));
    }
    let Ok(doc) = ImDocument::parse(text) else {
        return Ok(Cow::Borrowed(text));
    };
    let mut edits = Vec::new();
    walk_table(doc.as_table(), &mut Vec::new(), &mut |path, value| {
        let Value::String(s) = value else {
            return Ok(());
        };
        let Some(span) = value.span() else {
            return Ok(());
        };
        match expand(s.value(), lookup) {
            Ok(None) => Ok(()),
            Ok(Some(expanded)) => {
                edits.push((span, toml_basic_string(&expanded)));
                Ok(())
            }
            Err(rule) => Err(Unexpandable {
                key: path.join("."),
                value: text.get(span).unwrap_or_default().trim().to_owned(),
                rule: format!("{rule} ({ESCAPE_HINT})"),
            }),
        }
    })?;
    if edits.is_empty() {
        return Ok(Cow::Borrowed(text));
    }
    // From the end, so that earlier spans stay valid.
    edits.sort_by_key(|(span, _)| std::cmp::Reverse(span.start));
    let mut out = text.to_owned();
    for (span, replacement) in edits {
        out.replace_range(span, &replacement);
    }
    Ok(Cow::Owned(out))
}

type Visit<'a> = dyn FnMut(&[String], &Value) -> Result<(), Unexpandable> + 'a;

fn walk_table(
    table: &Table,
    path: &mut Vec<String>,
    f: &mut Visit<'_>,
) -> Result<(), Unexpandable> {
    for (key, item) in table.iter() {
        path.push(super::key_segment(key));
        walk_item(item, path, f)?;
        path.pop();
    }
    Ok(())
}

fn walk_item(item: &Item, path: &mut Vec<String>, f: &mut Visit<'_>) -> Result<(), Unexpandable> {
    match item {
        Item::None => Ok(()),
        Item::Value(v) => walk_value(v, path, f),
        Item::Table(t) => walk_table(t, path, f),
        Item::ArrayOfTables(tables) => {
            for (i, t) in tables.iter().enumerate() {
                indexed(path, i, |path| walk_table(t, path, f))?;
            }
            Ok(())
        }
    }
}

fn walk_value(
    value: &Value,
    path: &mut Vec<String>,
    f: &mut Visit<'_>,
) -> Result<(), Unexpandable> {
    match value {
        Value::Array(array) => {
            for (i, v) in array.iter().enumerate() {
                indexed(path, i, |path| walk_value(v, path, f))?;
            }
            Ok(())
        }
        Value::InlineTable(t) => {
            for (key, v) in t.iter() {
                path.push(super::key_segment(key));
                walk_value(v, path, f)?;
                path.pop();
            }
            Ok(())
        }
        _ => f(path, value),
    }
}

/// Runs `f` with the last path segment suffixed `[i]`.
fn indexed<T>(path: &mut Vec<String>, i: usize, f: impl FnOnce(&mut Vec<String>) -> T) -> T {
    let name = path.pop().unwrap_or_default();
    path.push(format!("{name}[{i}]"));
    let out = f(path);
    path.pop();
    path.push(name);
    out
}

/// Expands one string: `None` when it has nothing to expand.
fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>, String> {
    if !s.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| "\"${\" without a closing \"}\"".to_owned())?;
            let name = &after[..end];
            if !is_variable_name(name) {
                return Err(format!(
                    "\"${{{name}}}\" is not a variable name (letters, digits and '_', not starting with a digit)"
                ));
            }
            let value =
                lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(Some(out))
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `s` as a TOML basic string, quotes included.
fn toml_basic_string(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("10.0.0.7".into()),
            "TRICKY" => Some("a\"b\\c\nd".into()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<String, Unexpandable> {
        expand_document(text, &env).map(Cow::into_owned)
    }

    #[test]
    fn variables_in_values_are_replaced_everywhere() {
        let text = "[admin]\nlisten = \"${HOST}:9901\"\n[[p.s]]\nx = [\"a\", \"${HOST}\"]\ny = { z = 'lit ${HOST}' }\n";
        let out = run(text).unwrap();
        assert!(out.contains("listen = \"10.0.0.7:9901\""), "{out}");
        assert!(out.contains("x = [\"a\", \"10.0.0.7\"]"), "{out}");
        assert!(out.contains("z = \"lit 10.0.0.7\""), "{out}");
    }

    #[test]
    fn escape_dollars_and_comments_are_kept() {
        let text = "# ${NOPE} in a comment\na = \"$${HOST} costs $5\"\n";
        let out = run(text).unwrap();
        assert!(out.contains("# ${NOPE} in a comment"), "{out}");
        assert!(out.contains("a = \"${HOST} costs $5\""), "{out}");
    }

    #[test]
    fn expanded_values_are_quoted_for_toml() {
        let out = run("a = \"${TRICKY}\"\n").unwrap();
        let v: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(v["a"].as_str(), Some("a\"b\\c\nd"));
    }

    #[test]
    fn an_unset_variable_names_itself_and_the_key() {
        let err = run("[[routes]]\nname = \"a\"\n[[routes]]\nname = \"${MISSING}\"\n").unwrap_err();
        assert_eq!(err.key, "routes[1].name");
        assert_eq!(err.value, "\"${MISSING}\"");
        assert!(
            err.rule
                .starts_with("environment variable MISSING is not set"),
            "{}",
            err.rule
        );
        assert!(err.rule.contains("$${"), "{}", err.rule);
    }

    #[test]
    fn malformed_references_are_refused() {
        assert!(
            run("a = \"${HOST\"\n")
                .unwrap_err()
                .rule
                .contains("without a closing")
        );
        assert!(
            run("a = \"${1X}\"\n")
                .unwrap_err()
                .rule
                .contains("not a variable name")
        );
        assert!(
            run("a = \"${}\"\n")
                .unwrap_err()
                .rule
                .contains("not a variable name")
        );
    }

    #[test]
    fn text_without_references_is_borrowed() {
        assert!(matches!(
            expand_document("a = \"$x\"\n", &env),
            Ok(Cow::Borrowed(_))
        ));
    }
}

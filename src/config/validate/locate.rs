//! Turns the byte span of a TOML or serde error into what a person needs:
//! line, column, the dotted key path (`routes[1].retry.attempts`) and the
//! value as written. `toml` reports only the span and the bare key name.
//! Shared with the drill's scenario files, which report errors the same way.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Key, Table, Value};

/// Where an error sits in the file.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Dotted key path, when the document parses and the span hits a key.
    pub key: Option<String>,
    /// The value as written, when the span hits a one-line value.
    pub value: Option<String>,
}

/// Values longer than this are cut in messages: the line number finds the
/// rest.
const MAX_VALUE_CHARS: usize = 60;

/// Locates byte offset `span.start` in `text`.
pub(crate) fn locate(text: &str, span: &Range<usize>) -> Location {
    let (line, column) = line_column(text, span.start);
    let hit = ImDocument::parse(text)
        .ok()
        .and_then(|doc| find_in_table(doc.as_table(), &mut Vec::new(), span.start));
    let Some(hit) = hit else {
        return Location {
            line,
            column,
            ..Location::default()
        };
    };
    Location {
        line,
        column,
        key: Some(hit.path),
        value: hit.value_span.and_then(|s| value_text(text, s)),
    }
}

/// 1-based line and character column of a byte offset (clamped to the text).
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The source text of a value, on one line and not too long.
fn value_text(text: &str, span: Range<usize>) -> Option<String> {
    let raw = text.get(span)?.trim();
    if raw.contains('\n') {
        return None;
    }
    if raw.chars().count() <= MAX_VALUE_CHARS {
        return Some(raw.to_string());
    }
    let cut: String = raw.chars().take(MAX_VALUE_CHARS).collect();
    Some(format!("{cut}…"))
}

struct Hit {
    path: String,
    value_span: Option<Range<usize>>,
}

fn contains(span: Option<Range<usize>>, pos: usize) -> bool {
    span.is_some_and(|s| s.contains(&pos) || (s.is_empty() && s.start == pos))
}

/// Depth first, so that the innermost key containing `pos` wins.
fn find_in_table(table: &Table, path: &mut Vec<String>, pos: usize) -> Option<Hit> {
    let pairs = table.iter().filter_map(|(k, _)| table.get_key_value(k));
    find_in_pairs(pairs, path, pos)
}

fn find_in_pairs<'a>(
    pairs: impl Iterator<Item = (&'a Key, &'a Item)>,
    path: &mut Vec<String>,
    pos: usize,
) -> Option<Hit> {
    for (key, item) in pairs {
        path.push(super::key_segment(key.get()));
        let hit = find_in_item(key, item, path, pos);
        path.pop();
        if hit.is_some() {
            return hit;
        }
    }
    None
}

fn find_in_item(key: &Key, item: &Item, path: &mut Vec<String>, pos: usize) -> Option<Hit> {
    let here = |path: &[String], value_span| Hit {
        path: path.join("."),
        value_span,
    };
    match item {
        Item::None => None,
        Item::Value(value) => {
            if let Some(hit) = find_in_value(value, path, pos) {
                return Some(hit);
            }
            let key_or_value = contains(key.span(), pos) || contains(value.span(), pos);
            key_or_value.then(|| here(path, value.span()))
        }
        Item::Table(table) => find_in_table(table, path, pos).or_else(|| {
            let hit = contains(key.span(), pos) || contains(table.span(), pos);
            hit.then(|| here(path, None))
        }),
        Item::ArrayOfTables(tables) => {
            for (i, table) in tables.iter().enumerate() {
                let name = path.pop().unwrap_or_default();
                path.push(format!("{name}[{i}]"));
                let hit = find_in_table(table, path, pos)
                    .or_else(|| contains(table.span(), pos).then(|| here(path, None)));
                path.pop();
                path.push(name);
                if hit.is_some() {
                    return hit;
                }
            }
            contains(key.span(), pos).then(|| here(path, None))
        }
    }
}

/// Looks inside arrays and inline tables for a deeper match.
fn find_in_value(value: &Value, path: &mut Vec<String>, pos: usize) -> Option<Hit> {
    match value {
        Value::Array(array) => array.iter().enumerate().find_map(|(i, element)| {
            let name = path.pop().unwrap_or_default();
            path.push(format!("{name}[{i}]"));
            let hit = find_in_value(element, path, pos).or_else(|| {
                contains(element.span(), pos).then(|| Hit {
                    path: path.join("."),
                    value_span: element.span(),
                })
            });
            path.pop();
            path.push(name);
            hit
        }),
        Value::InlineTable(table) => {
            let pairs = table.iter().filter_map(|(k, _)| table.get_key_value(k));
            find_in_pairs(pairs, path, pos)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str, needle: &str) -> Location {
        let start = text.find(needle).expect("needle in text");
        locate(text, &(start..start + needle.len()))
    }

    #[test]
    fn line_and_column_are_one_based_characters() {
        assert_eq!(line_column("a = 1\nbé = 2\n", 0), (1, 1));
        assert_eq!(line_column("a = 1\nbé = 2\n", 6), (2, 1));
        // "é" is two bytes but one column.
        assert_eq!(line_column("a = 1\nbé = 2\n", 10), (2, 4));
    }

    #[test]
    fn key_in_a_table_section() {
        let loc = at("[proxy]\nlisen = [\"x\"]\n", "lisen");
        assert_eq!((loc.line, loc.column), (2, 1));
        assert_eq!(loc.key.as_deref(), Some("proxy.lisen"));
        assert_eq!(loc.value.as_deref(), Some("[\"x\"]"));
    }

    #[test]
    fn value_inside_an_array_of_tables_and_inline_table() {
        let text =
            "[[routes]]\nname = \"a\"\n[[routes]]\nname = \"b\"\nretry = { attempts = \"x\" }\n";
        let loc = at(text, "\"x\"");
        assert_eq!(loc.key.as_deref(), Some("routes[1].retry.attempts"));
        assert_eq!(loc.value.as_deref(), Some("\"x\""));
        assert_eq!(loc.line, 5);
    }

    #[test]
    fn array_element_and_quoted_keys() {
        let loc = at("[proxy]\nlisten = [\"a\", 7]\n", "7");
        assert_eq!(loc.key.as_deref(), Some("proxy.listen[1]"));
        let loc = at("[p.probe.headers]\n\"X Y\" = 1\n", "1");
        assert_eq!(loc.key.as_deref(), Some("p.probe.headers.\"X Y\""));
    }

    #[test]
    fn table_header_span_names_the_table() {
        let text = "[[routes]]\nname = \"a\"\n[[routes]]\nname = \"b\"\n";
        let second = text.rfind("[[routes]]").expect("header");
        let loc = locate(text, &(second..text.len()));
        assert_eq!(loc.key.as_deref(), Some("routes[1]"));
        assert_eq!(loc.value, None);
    }

    #[test]
    fn syntax_errors_keep_line_and_column() {
        let loc = locate("[proxy]\nlisten = [\n", &(18..18));
        assert_eq!((loc.line, loc.column, loc.key), (2, 11, None));
    }
}

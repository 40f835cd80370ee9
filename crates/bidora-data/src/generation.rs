//! Data-to-text and sequence-to-sequence data: the E2E NLG challenge CSV (`mr,ref`, several
//! references per meaning representation) and JSON Lines with `"source"` and `"target"` (a
//! string, or a list of reference strings), `"prompt"` and `"completion"`, or chat `"messages"`.

use std::path::Path;

use serde_json::Value;

use crate::chat::Message;
use crate::example::{Example, Label};
use crate::lines::{json_objects, read};
use crate::DataError;

/// Parses RFC 4180 CSV (quoted fields, `""` escapes, newlines inside quotes) into records with
/// their starting line numbers.
pub fn parse_csv(bytes: &[u8], path: &Path) -> Result<Vec<(usize, Vec<String>)>, DataError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        DataError::parse(path, line, "invalid UTF-8")
    })?;
    let mut records = Vec::new();
    let mut field = String::new();
    let mut record: Vec<String> = Vec::new();
    let (mut line, mut start) = (1usize, 1usize);
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if at_field_start => {
                quoted = true;
                at_field_start = false;
            }
            ',' => {
                record.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                if !(record.len() == 1 && record[0].is_empty()) {
                    records.push((start, std::mem::take(&mut record)));
                }
                record.clear();
                line += 1;
                start = line;
                at_field_start = true;
            }
            _ => {
                field.push(c);
                at_field_start = false;
            }
        }
    }
    if quoted {
        return Err(DataError::parse(path, start, "unterminated quoted field"));
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push((start, record));
    }
    Ok(records)
}

/// E2E CSV: a header with `mr` and `ref` columns; rows with the same `mr` are grouped into one
/// example with several references (first-seen order).
pub fn parse_e2e(bytes: &[u8], path: &Path) -> Result<Vec<Example>, DataError> {
    let records = parse_csv(bytes, path)?;
    let Some(((_, header), rows)) = records.split_first() else {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    };
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| DataError::parse(path, 1, format!("the header has no `{name}` column")))
    };
    let (mr, rf) = (col("mr")?, col("ref")?);
    let mut out: Vec<Example> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (line, row) in rows {
        if row.len() <= mr.max(rf) {
            return Err(DataError::parse(
                path,
                *line,
                format!("{} fields, expected {}", row.len(), header.len()),
            ));
        }
        let (m, r) = (row[mr].trim().to_string(), row[rf].trim().to_string());
        match index.get(&m) {
            Some(&i) => {
                if let Some(Label::References(refs)) = &mut out[i].label {
                    refs.push(r);
                }
            }
            None => {
                index.insert(m.clone(), out.len());
                out.push(Example::single(m, Some(Label::References(vec![r])), *line));
            }
        }
    }
    if out.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// JSON Lines with `"source"` and `"target"`, or `"prompt"` and `"completion"` (the target a
/// string or a list of reference strings), or chat rows: `"messages"`, a list of `{"role",
/// "content"}` ending with the assistant's answer (kept as the example's conversation until
/// [`crate::chat::apply`] renders it with the model's template).
pub fn parse_jsonl(bytes: &[u8], path: &Path) -> Result<Vec<Example>, DataError> {
    let mut out = Vec::new();
    for (number, v) in json_objects(bytes, path)? {
        let err = |m: String| DataError::parse(path, number, m);
        if let Some(messages) = v.get("messages") {
            out.push(conversation(messages).map_err(err)?.at(number));
            continue;
        }
        let (source_key, target_key) = if v.get("prompt").is_some() {
            ("prompt", "completion")
        } else {
            ("source", "target")
        };
        let source = v
            .get(source_key)
            .and_then(Value::as_str)
            .ok_or_else(|| err("missing string field `source` (or `prompt`)".into()))?;
        let refs = match v.get(target_key) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| err(format!("`{target_key}` list must hold strings")))
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(err(format!(
                    "`{target_key}` must be a string or a non-empty list of strings"
                )))
            }
        };
        out.push(Example::single(
            source,
            Some(Label::References(refs)),
            number,
        ));
    }
    if out.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// A parsed chat row, waiting for its line.
struct Conversation(Vec<Message>);

impl Conversation {
    fn at(self, line: usize) -> Example {
        let answer = self.0.last().map(|m| m.content.clone()).unwrap_or_default();
        Example {
            messages: Some(self.0),
            ..Example::single("", Some(Label::References(vec![answer])), line)
        }
    }
}

/// A `messages` value: a non-empty list of `{"role", "content"}` strings, the assistant's last.
fn conversation(v: &Value) -> Result<Conversation, String> {
    let list = v
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or("`messages` must be a non-empty list of {\"role\", \"content\"} objects")?;
    let messages = list
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |k: &str| {
                m.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or(format!("message {i} has no string `{k}`"))
            };
            Ok(Message {
                role: field("role")?,
                content: field("content")?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    match messages.last() {
        Some(m) if m.role == "assistant" => Ok(Conversation(messages)),
        Some(m) => Err(format!(
            "the last message is the {}'s; a chat row ends with the assistant's answer",
            m.role
        )),
        None => Err("`messages` is empty".into()),
    }
}

/// Loads an E2E CSV (`.csv`) or a JSON Lines file (anything else).
pub fn load(path: &Path) -> Result<Vec<Example>, DataError> {
    let bytes = read(path)?;
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        parse_e2e(&bytes, path)
    } else {
        parse_jsonl(&bytes, path)
    }
}

/// One training example per reference (the model learns every reference).
pub fn expand_references(examples: &[Example]) -> Vec<Example> {
    let mut out = Vec::new();
    for e in examples {
        if let Some(Label::References(refs)) = &e.label {
            for r in refs {
                out.push(Example {
                    label: Some(Label::References(vec![r.clone()])),
                    ..e.clone()
                });
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn e2e_groups_references_and_handles_quotes() {
        let p = Path::new("devset.csv");
        let csv = "mr,ref\r\n\"name[The Vaults], eatType[pub]\",\"The Vaults is a pub.\"\r\n\"name[The Vaults], eatType[pub]\",\"A \"\"pub\"\",\nThe Vaults.\"\r\nname[X],X.\r\n";
        let ex = parse_e2e(csv.as_bytes(), p).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].text_a, "name[The Vaults], eatType[pub]");
        assert_eq!(
            ex[0].label,
            Some(Label::References(vec![
                "The Vaults is a pub.".into(),
                "A \"pub\",\nThe Vaults.".into()
            ]))
        );
        assert_eq!(ex[1].line, 5);
        assert_eq!(expand_references(&ex).len(), 3);
        let e = parse_e2e(b"mr,ref\n\"open", p).unwrap_err();
        assert_eq!(e.to_string(), "devset.csv:2: unterminated quoted field");
        let e = parse_e2e(b"meaning,ref\nx,y\n", p).unwrap_err();
        assert!(e.to_string().contains("no `mr` column"));
    }

    #[test]
    fn chat_rows_keep_their_conversation_and_name_bad_lines() {
        let p = Path::new("c.jsonl");
        let rows = b"{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}]}\n";
        let got = parse_jsonl(rows, p).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].label, Some(Label::References(vec!["Hello".into()])));
        let m = got[0].messages.as_ref().unwrap();
        assert_eq!(
            (m[0].role.as_str(), m[1].content.as_str()),
            ("user", "Hello")
        );
        // Expanding references keeps the conversation.
        assert_eq!(expand_references(&got)[0].messages, got[0].messages);
        for (row, want) in [
            (
                &b"\n{\"messages\": []}"[..],
                "c.jsonl:2: `messages` must be a non-empty list",
            ),
            (
                b"{\"messages\": [{\"role\": \"user\"}]}",
                "c.jsonl:1: message 0 has no string `content`",
            ),
            (
                b"{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}",
                "c.jsonl:1: the last message is the user's",
            ),
        ] {
            let e = parse_jsonl(row, p).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
    }

    #[test]
    fn jsonl_targets() {
        let p = Path::new("g.jsonl");
        let ex = parse_jsonl(b"{\"source\": \"a\", \"target\": \"b\"}\n{\"source\": \"c\", \"target\": [\"d\", \"e\"]}\n", p).unwrap();
        assert_eq!(
            ex[1].label,
            Some(Label::References(vec!["d".into(), "e".into()]))
        );
        let e = parse_jsonl(b"{\"source\": \"a\", \"target\": []}", p).unwrap_err();
        assert!(e.to_string().contains("non-empty list"));
        let ex = parse_jsonl(
            b"{\"prompt\": \"Q: 2+2?\\nA:\", \"completion\": \" 4\"}\n",
            p,
        )
        .unwrap();
        assert_eq!(ex[0].text_a, "Q: 2+2?\nA:");
        assert_eq!(ex[0].label, Some(Label::References(vec![" 4".into()])));
        let e = parse_jsonl(b"\n{\"prompt\": \"a\", \"completion\": 3}", p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "g.jsonl:2: `completion` must be a string or a non-empty list of strings"
        );
    }
}

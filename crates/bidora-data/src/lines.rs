//! Reading text files line by line with exact line numbers, strict UTF-8 and no panics.

use std::path::Path;

use crate::DataError;

/// One line of a file: its 1-based number and its text (no line terminator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    /// 1-based line number.
    pub number: usize,
    /// Text without `\n` / `\r\n`.
    pub text: &'a str,
}

/// Reads a whole file.
pub fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Splits bytes into lines, stripping a UTF-8 byte-order mark, `\r\n` endings and a missing
/// final newline; invalid UTF-8 is an error naming the line.
pub fn lines<'a>(bytes: &'a [u8], path: &Path) -> Result<Vec<Line<'a>>, DataError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut out = Vec::new();
    if bytes.is_empty() {
        return Ok(out);
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = std::str::from_utf8(raw).map_err(|e| {
            DataError::parse(
                path,
                i + 1,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            )
        })?;
        out.push(Line {
            number: i + 1,
            text,
        });
    }
    Ok(out)
}

/// One JSON object.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// The JSON objects of a JSON Lines file, with their line numbers; blank lines are skipped,
/// invalid JSON and non-objects are errors naming the line.
pub fn json_objects(bytes: &[u8], path: &Path) -> Result<Vec<(usize, JsonObject)>, DataError> {
    let mut out = Vec::new();
    for line in lines(bytes, path)? {
        if line.text.trim().is_empty() {
            continue;
        }
        let err = |m: String| DataError::parse(path, line.number, m);
        match serde_json::from_str(line.text).map_err(|e| err(format!("invalid JSON: {e}")))? {
            serde_json::Value::Object(obj) => out.push((line.number, obj)),
            _ => return Err(err("expected a JSON object".into())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bom_crlf_and_missing_final_newline() {
        let p = Path::new("x.tsv");
        let l = lines(b"\xEF\xBB\xBFa\tb\r\nc\n\nd", p).unwrap_or_default();
        let texts: Vec<&str> = l.iter().map(|l| l.text).collect();
        assert_eq!(texts, vec!["a\tb", "c", "", "d"]);
        assert_eq!(l[3].number, 4);
        let err = lines(b"ok\n\xff\xfe\n", p).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("x.tsv:2: invalid UTF-8 at byte 0"));
    }
}

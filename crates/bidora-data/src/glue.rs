//! GLUE task files in their original TSV layout (as GLUE's download script writes them).
//!
//! Fields are separated by tabs and never quoted (quotes are literal text). Column layouts:
//!
//! | task  | header | text a | text b | label | labels |
//! |-------|--------|--------|--------|-------|--------|
//! | CoLA  | none   | col 3  | —      | col 1 | `0`, `1` |
//! | SST-2 | yes    | col 0  | —      | col 1 | `0`, `1` |
//! | MRPC  | yes (BOM) | col 3 | col 4 | col 0 | `0`, `1` |
//! | QQP   | yes    | col 3  | col 4  | col 5 | `0`, `1` |
//! | STS-B | yes    | col 7  | col 8  | last  | score 0–5 |
//! | MNLI  | yes    | col 8  | col 9  | last  | `contradiction`, `entailment`, `neutral` |
//! | QNLI  | yes    | col 1  | col 2  | col 3 | `entailment`, `not_entailment` |
//! | RTE   | yes    | col 1  | col 2  | col 3 | `entailment`, `not_entailment` |
//! | WNLI  | yes    | col 1  | col 2  | col 3 | `0`, `1` |
//!
//! Label orders follow HF's GLUE processors, so class indices agree with models fine-tuned there.

use std::path::Path;

use crate::example::{Example, Label};
use crate::lines::{lines, read};
use crate::DataError;

/// A GLUE task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GlueTask {
    /// Corpus of Linguistic Acceptability.
    Cola,
    /// Stanford Sentiment Treebank (binary).
    Sst2,
    /// Microsoft Research Paraphrase Corpus.
    Mrpc,
    /// Quora Question Pairs.
    Qqp,
    /// Semantic Textual Similarity Benchmark (regression).
    Stsb,
    /// Multi-Genre NLI (dev: matched and mismatched).
    Mnli,
    /// Question NLI.
    Qnli,
    /// Recognising Textual Entailment.
    Rte,
    /// Winograd NLI.
    Wnli,
}

struct Layout {
    header: bool,
    text_a: usize,
    text_b: Option<usize>,
    /// `None` = last column.
    label: Option<usize>,
    min_columns: usize,
}

impl GlueTask {
    /// Every GLUE task.
    pub const ALL: [GlueTask; 9] = [
        GlueTask::Cola,
        GlueTask::Sst2,
        GlueTask::Mrpc,
        GlueTask::Qqp,
        GlueTask::Stsb,
        GlueTask::Mnli,
        GlueTask::Qnli,
        GlueTask::Rte,
        GlueTask::Wnli,
    ];

    /// The folder name GLUE uses (`CoLA`, `SST-2`, ...).
    pub fn folder(self) -> &'static str {
        match self {
            GlueTask::Cola => "CoLA",
            GlueTask::Sst2 => "SST-2",
            GlueTask::Mrpc => "MRPC",
            GlueTask::Qqp => "QQP",
            GlueTask::Stsb => "STS-B",
            GlueTask::Mnli => "MNLI",
            GlueTask::Qnli => "QNLI",
            GlueTask::Rte => "RTE",
            GlueTask::Wnli => "WNLI",
        }
    }

    /// The class names, in index order; empty for the regression task STS-B.
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            GlueTask::Cola | GlueTask::Sst2 | GlueTask::Mrpc | GlueTask::Qqp | GlueTask::Wnli => {
                &["0", "1"]
            }
            GlueTask::Stsb => &[],
            GlueTask::Mnli => &["contradiction", "entailment", "neutral"],
            GlueTask::Qnli | GlueTask::Rte => &["entailment", "not_entailment"],
        }
    }

    /// Whether examples are sentence pairs.
    pub fn is_pair(self) -> bool {
        !matches!(self, GlueTask::Cola | GlueTask::Sst2)
    }

    /// The evaluation files (`dev.tsv`; MNLI: matched and mismatched).
    pub fn dev_files(self) -> &'static [&'static str] {
        match self {
            GlueTask::Mnli => &["dev_matched.tsv", "dev_mismatched.tsv"],
            _ => &["dev.tsv"],
        }
    }

    fn layout(self) -> Layout {
        let l = |header, text_a, text_b, label, min_columns| Layout {
            header,
            text_a,
            text_b,
            label,
            min_columns,
        };
        match self {
            GlueTask::Cola => l(false, 3, None, Some(1), 4),
            GlueTask::Sst2 => l(true, 0, None, Some(1), 2),
            GlueTask::Mrpc => l(true, 3, Some(4), Some(0), 5),
            GlueTask::Qqp => l(true, 3, Some(4), Some(5), 6),
            GlueTask::Stsb => l(true, 7, Some(8), None, 10),
            GlueTask::Mnli => l(true, 8, Some(9), None, 11),
            GlueTask::Qnli | GlueTask::Rte | GlueTask::Wnli => l(true, 1, Some(2), Some(3), 4),
        }
    }

    /// Parses a task file's bytes (`path` is used in errors).
    pub fn parse(self, bytes: &[u8], path: &Path) -> Result<Vec<Example>, DataError> {
        let layout = self.layout();
        let all = lines(bytes, path)?;
        let skip = usize::from(layout.header);
        let mut out = Vec::with_capacity(all.len());
        for line in all.into_iter().skip(skip) {
            if line.text.is_empty() {
                continue;
            }
            let cols: Vec<&str> = line.text.split('\t').collect();
            if cols.len() < layout.min_columns {
                return Err(DataError::parse(
                    path,
                    line.number,
                    format!(
                        "{} columns, {} needs at least {}",
                        cols.len(),
                        self.folder(),
                        layout.min_columns
                    ),
                ));
            }
            let raw_label = match layout.label {
                Some(i) => cols[i],
                None => cols[cols.len() - 1],
            };
            let label = self.label(raw_label.trim()).ok_or_else(|| {
                DataError::parse(
                    path,
                    line.number,
                    format!("unknown {} label `{raw_label}`", self.folder()),
                )
            })?;
            let a = cols[layout.text_a].to_string();
            let ex = match layout.text_b {
                Some(b) => Example::pair(a, cols[b], Some(label), line.number),
                None => Example::single(a, Some(label), line.number),
            };
            out.push(ex);
        }
        if out.is_empty() {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(out)
    }

    fn label(self, raw: &str) -> Option<Label> {
        if self == GlueTask::Stsb {
            let v: f32 = raw.parse().ok()?;
            return (v.is_finite() && (0.0..=5.0).contains(&v)).then_some(Label::Score(v));
        }
        self.labels()
            .iter()
            .position(|l| *l == raw)
            .map(Label::Class)
    }

    /// Loads `dir/<file>` (e.g. `glue/RTE/train.tsv`).
    pub fn load(self, path: &Path) -> Result<Vec<Example>, DataError> {
        let bytes = read(path)?;
        self.parse(&bytes, path)
    }
}

impl std::str::FromStr for GlueTask {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        let key: String = s
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        GlueTask::ALL
            .into_iter()
            .find(|t| {
                t.folder()
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .collect::<String>()
                    .to_ascii_lowercase()
                    == key
            })
            .ok_or_else(|| DataError::UnknownTask {
                name: s.to_string(),
                known: GlueTask::ALL
                    .iter()
                    .map(|t| t.folder().to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_layout() {
        let p = Path::new("t.tsv");
        let cola = GlueTask::Cola
            .parse(b"gj04\t1\t\tGood.\ngj04\t0\t*\tBad bad.", p)
            .unwrap();
        assert_eq!(cola.len(), 2);
        assert_eq!(cola[1].text_a, "Bad bad.");
        assert_eq!(cola[1].label, Some(Label::Class(0)));
        let mrpc = GlueTask::Mrpc
            .parse(
                "\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA \"q\".\tB.\n"
                    .as_bytes(),
                p,
            )
            .unwrap();
        assert_eq!(mrpc[0].text_a, "A \"q\".");
        assert_eq!(mrpc[0].text_b.as_deref(), Some("B."));
        assert_eq!(mrpc[0].line, 2);
        let stsb = GlueTask::Stsb
            .parse(
                b"h\th\th\th\th\th\th\th\th\th\n0\tg\tf\ty\t1\tn\tn\tA.\tB.\t3.800\n",
                p,
            )
            .unwrap();
        assert_eq!(stsb[0].label, Some(Label::Score(3.8)));
        let mnli_dev = "i\tp\tq\tg\tb1\tb2\tp1\tp2\tS1\tS2\tl1\tl2\tl3\tl4\tl5\tgold\n1\t2\t3\tg\tx\tx\tx\tx\tA\tB\tneutral\tneutral\tneutral\tneutral\tneutral\tneutral\n";
        let m = GlueTask::Mnli.parse(mnli_dev.as_bytes(), p).unwrap();
        assert_eq!(
            (m[0].text_a.as_str(), m[0].label.clone()),
            ("A", Some(Label::Class(2)))
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let p = Path::new("RTE/dev.tsv");
        let e = GlueTask::Rte
            .parse(b"h\th\th\th\n0\tA\tB\tmaybe\n", p)
            .unwrap_err();
        assert_eq!(e.to_string(), "RTE/dev.tsv:2: unknown RTE label `maybe`");
        let e = GlueTask::Rte
            .parse(b"h\th\th\th\n0\tA\tB\tentailment\n1\tA\n", p)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "RTE/dev.tsv:3: 2 columns, RTE needs at least 4"
        );
        let e = GlueTask::Rte.parse(b"h\th\th\th\n", p).unwrap_err();
        assert!(matches!(e, DataError::Empty { .. }));
        let e = GlueTask::Stsb
            .parse(b"h\n0\tg\tf\ty\t1\tn\tn\tA.\tB.\t7\n", p)
            .unwrap_err();
        assert!(e.to_string().contains("unknown STS-B label `7`"));
    }

    #[test]
    fn names_parse_loosely() {
        assert_eq!("sst2".parse::<GlueTask>().unwrap(), GlueTask::Sst2);
        assert_eq!("STS-B".parse::<GlueTask>().unwrap(), GlueTask::Stsb);
        assert!("squad"
            .parse::<GlueTask>()
            .unwrap_err()
            .to_string()
            .contains("cola"));
    }
}

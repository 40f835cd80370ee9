//! Human sentiment ratings from the VADER study (Hutto & Gilbert, ICWSM 2014), shipped in the
//! `vaderSentiment` source archive (`additional_resources/hutto_ICWSM_2014.tar.gz`): files
//! `*_GroundTruth.txt` with `id <TAB> mean rating (−4..4) <TAB> text` per line (CRLF).
//!
//! Two task shapes come from each file: binary sentiment (ratings of exactly 0 dropped;
//! negative = 0, positive = 1) and rating regression.

use std::path::Path;

use crate::example::{Example, Label};
use crate::lines::{lines, read};
use crate::DataError;

/// The files of the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RatingSet {
    /// 10,605 movie-review sentences.
    MovieReviews,
    /// 4,200 tweets.
    Tweets,
    /// 3,708 product-review snippets.
    ProductReviews,
    /// 5,190 New York Times editorial snippets.
    Editorials,
}

impl RatingSet {
    /// The file name inside `hutto_ICWSM_2014/`.
    pub fn file(self) -> &'static str {
        match self {
            RatingSet::MovieReviews => "movieReviewSnippets_GroundTruth.txt",
            RatingSet::Tweets => "tweets_GroundTruth.txt",
            RatingSet::ProductReviews => "amazonReviewSnippets_GroundTruth.txt",
            RatingSet::Editorials => "nytEditorialSnippets_GroundTruth.txt",
        }
    }
}

/// One rated text.
#[derive(Clone, Debug, PartialEq)]
pub struct Rated {
    /// The file's id column.
    pub id: String,
    /// Mean human rating, −4 (most negative) to 4.
    pub rating: f32,
    /// The text.
    pub text: String,
    /// 1-based line.
    pub line: usize,
}

/// Parses a ground-truth file.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Vec<Rated>, DataError> {
    let mut out = Vec::new();
    for line in lines(bytes, path)? {
        if line.text.trim().is_empty() {
            continue;
        }
        let mut cols = line.text.splitn(3, '\t');
        let (Some(id), Some(rating), Some(text)) = (cols.next(), cols.next(), cols.next()) else {
            return Err(DataError::parse(
                path,
                line.number,
                "expected `id <TAB> rating <TAB> text`",
            ));
        };
        let rating: f32 = rating
            .trim()
            .parse()
            .ok()
            .filter(|r: &f32| r.is_finite() && (-4.0..=4.0).contains(r))
            .ok_or_else(|| {
                DataError::parse(
                    path,
                    line.number,
                    format!("rating `{rating}` is not a number in [-4, 4]"),
                )
            })?;
        out.push(Rated {
            id: id.trim().to_string(),
            rating,
            text: text.trim().to_string(),
            line: line.number,
        });
    }
    if out.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// Loads a ground-truth file.
pub fn load(path: &Path) -> Result<Vec<Rated>, DataError> {
    parse(&read(path)?, path)
}

/// Binary sentiment examples: ratings of exactly 0 are dropped; negative → 0, positive → 1.
pub fn binary(rated: &[Rated]) -> Vec<Example> {
    rated
        .iter()
        .filter(|r| r.rating != 0.0)
        .map(|r| {
            Example::single(
                r.text.clone(),
                Some(Label::Class(usize::from(r.rating > 0.0))),
                r.line,
            )
        })
        .collect()
}

/// Rating regression examples.
pub fn regression(rated: &[Rated]) -> Vec<Example> {
    rated
        .iter()
        .map(|r| Example::single(r.text.clone(), Some(Label::Score(r.rating)), r.line))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_derives_both_task_shapes() {
        let p = Path::new("tweets_GroundTruth.txt");
        let r = parse(
            b"1\t2.5\tYay.\r\n2\t0\tMeh\tstill text\r\n3\t-1.2\tBoo\r\n",
            p,
        )
        .unwrap();
        assert_eq!(r[1].text, "Meh\tstill text");
        let b = binary(&r);
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].class(), b[1].class()), (Some(1), Some(0)));
        assert_eq!(regression(&r)[2].label, Some(Label::Score(-1.2)));
        let e = parse(b"1\t9\tx\n", p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tweets_GroundTruth.txt:1: rating `9` is not a number in [-4, 4]"
        );
        assert!(parse(b"1 2.0 x\n", p).is_err());
    }
}

//! Property tests: every file parser returns `Ok` or an error on arbitrary bytes, never panics.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use bidora_data::glue::GlueTask;
use bidora_data::jsonl::{self, LabelSpace};
use bidora_data::{conll, generation, lines, ratings};
use proptest::prelude::*;

fn tsvish() -> impl Strategy<Value = Vec<u8>> {
    // Bytes biased towards tabs, newlines and label words, plus arbitrary bytes.
    let piece = prop_oneof![
        Just(b"\t".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"entailment".to_vec()),
        Just(b"1".to_vec()),
        Just(b"B-PER".to_vec()),
        Just(b"{\"text\": \"a\", \"label\": 1}".to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn glue_parsers(bytes in tsvish()) {
        for t in GlueTask::ALL {
            let _ = t.parse(&bytes, Path::new("f.tsv"));
        }
    }

    #[test]
    fn conll_parser(bytes in tsvish()) {
        let _ = conll::parse(&bytes, Path::new("f.txt"), None);
        let _ = conll::parse(&bytes, Path::new("f.txt"), Some(&["O".to_string()]));
    }

    #[test]
    fn jsonl_parser(bytes in tsvish()) {
        for space in [LabelSpace::Classes(vec!["a".into(), "b".into()]), LabelSpace::Regression, LabelSpace::Unlabelled] {
            let _ = jsonl::parse(&bytes, Path::new("f.jsonl"), &space);
        }
    }

    #[test]
    fn ratings_parser(bytes in tsvish()) {
        let _ = ratings::parse(&bytes, Path::new("r.txt"));
    }

    #[test]
    fn csv_and_generation_parsers(bytes in tsvish(), quotes in proptest::collection::vec(prop_oneof![Just(b"\"".to_vec()), Just(b",".to_vec()), Just(b"mr,ref\n".to_vec())], 0..10)) {
        let mixed = [quotes.concat(), bytes].concat();
        let _ = generation::parse_csv(&mixed, Path::new("f.csv"));
        let _ = generation::parse_e2e(&mixed, Path::new("f.csv"));
        let _ = generation::parse_jsonl(&mixed, Path::new("f.jsonl"));
    }

    #[test]
    fn line_reader(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = lines::lines(&bytes, Path::new("f"));
    }
}

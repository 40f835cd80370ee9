//! The GLUE loaders on the real files (row counts from their MANIFEST), and the seeded
//! train/validation split. The files are not in the repository: these tests run where
//! `BIDORA_GLUE_DIR` names them (CI: `../shared/data/glue`) and otherwise report on stderr that
//! they were skipped. The GLUE formats themselves are covered by `task_layouts.rs`, which writes
//! small files of its own.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::PathBuf;

use bidora_data::split::train_val_split;
use bidora_data::tasks::{self, Predictions};
use bidora_data::Label;

/// The GLUE folder named by `BIDORA_GLUE_DIR` (`.ci/run` sets it to `../shared/data/glue`), or
/// `None` when the variable is unset: the test then says on stderr that it did not run. A
/// variable that names a folder without the files is an error, not a skip.
fn glue_dir(test: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("BIDORA_GLUE_DIR").map(PathBuf::from) else {
        // Straight to the process's stderr: the test harness captures `eprintln!` of passing
        // tests, and this line must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: set BIDORA_GLUE_DIR to a folder of GLUE task files (CoLA/, MRPC/, \
             STS-B/, RTE/ with MANIFEST.md) to run it"
        );
        return None;
    };
    assert!(
        dir.join("MANIFEST.md").is_file(),
        "BIDORA_GLUE_DIR={} holds no MANIFEST.md: not a GLUE folder",
        dir.display()
    );
    Some(dir)
}

#[test]
fn every_task_present_loads_with_the_manifest_row_counts() {
    let Some(dir) = glue_dir("every_task_present_loads_with_the_manifest_row_counts") else {
        return;
    };
    for (task, train, dev) in [
        ("cola", 8551, 1043),
        ("mrpc", 3668, 408),
        ("stsb", 5749, 1500),
        ("rte", 2490, 277),
    ] {
        let data = tasks::task(task).unwrap().load(&dir).unwrap();
        assert_eq!(data.train.len(), train, "{task} train");
        assert_eq!(data.eval[0].1.len(), dev, "{task} dev");
    }
    let mrpc = tasks::task("mrpc").unwrap().load(&dir).unwrap();
    // The BOM and the header are skipped; the first example is line 2.
    assert_eq!(mrpc.train[0].line, 2);
    assert!(mrpc.train[0]
        .text_a
        .starts_with("Amrozi accused his brother"));
    let stsb = tasks::task("sts-b").unwrap().load(&dir).unwrap();
    assert_eq!(stsb.train[0].label, Some(Label::Score(5.0)));
}

#[test]
fn split_is_reproducible_disjoint_and_stratified() {
    let Some(dir) = glue_dir("split_is_reproducible_disjoint_and_stratified") else {
        return;
    };
    let data = tasks::task("rte").unwrap().load(&dir).unwrap();
    let key = |e: &bidora_data::Example| e.line;
    let (tr1, va1) = train_val_split(data.train.clone(), 0.2, 7).unwrap();
    let (tr2, va2) = train_val_split(data.train.clone(), 0.2, 7).unwrap();
    assert_eq!(tr1, tr2);
    assert_eq!(va1, va2);
    let (_, va3) = train_val_split(data.train.clone(), 0.2, 8).unwrap();
    assert_ne!(
        va1.iter().map(key).collect::<Vec<_>>(),
        va3.iter().map(key).collect::<Vec<_>>()
    );
    let mut lines: Vec<usize> = tr1.iter().chain(&va1).map(key).collect();
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), 2490, "disjoint and complete");
    assert_eq!(va1.len(), 498);
    // Stratified: the class ratio is the same within one example per class.
    let pos = |v: &[bidora_data::Example]| v.iter().filter(|e| e.class() == Some(0)).count();
    let all_pos = pos(&data.train) as f64 / 2490.0;
    assert!((pos(&va1) as f64 - all_pos * 498.0).abs() <= 1.0);
    assert!(train_val_split(data.train, 1.0, 0).is_err());
}

#[test]
fn evaluation_uses_the_task_metrics() {
    let Some(dir) = glue_dir("evaluation_uses_the_task_metrics") else {
        return;
    };
    let t = tasks::task("cola").unwrap();
    let data = t.load(&dir).unwrap();
    let dev = &data.eval[0].1;
    let gold: Vec<usize> = dev.iter().map(|e| e.class().unwrap()).collect();
    let m = tasks::evaluate(&t, &data.labels, &Predictions::Classes(gold.clone()), dev).unwrap();
    assert_eq!(m["matthews_correlation"], 1.0);
    assert_eq!(m["accuracy"], 1.0);
    let majority = vec![1; dev.len()];
    let m = tasks::evaluate(&t, &data.labels, &Predictions::Classes(majority), dev).unwrap();
    assert_eq!(m["matthews_correlation"], 0.0);
    assert!(
        (m["accuracy"] - 721.0 / 1043.0).abs() < 1e-12,
        "{}",
        m["accuracy"]
    );
    assert!(tasks::evaluate(&t, &data.labels, &Predictions::Classes(vec![1]), dev).is_err());
    assert!(tasks::task("squad")
        .unwrap_err()
        .to_string()
        .contains("rte"));
}

//! Task metrics, computed as the reference implementations compute them (scikit-learn, scipy,
//! seqeval, sacrebleu, rouge-score); `tests/metrics_golden.rs` checks each against committed
//! outputs of those libraries.
//!
//! METEOR is not provided: its reference implementation needs WordNet synonyms and paraphrase
//! tables that no registry package ships, so it cannot be reproduced faithfully here.
//!
//! Conventions at the edges follow the references: F1, precision, recall and MCC are 0 when
//! undefined (scikit-learn's `zero_division` result); Pearson and Spearman are NaN for a
//! constant input (scipy).

use std::collections::HashMap;

/// Fraction of equal pairs (0 for empty input).
pub fn accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    if gold.is_empty() {
        return 0.0;
    }
    let hit = pred.iter().zip(gold).filter(|(p, g)| p == g).count();
    hit as f64 / gold.len() as f64
}

/// Binary F1 of class `positive` (scikit-learn's `f1_score(pos_label=positive)`).
pub fn f1_binary(pred: &[usize], gold: &[usize], positive: usize) -> f64 {
    let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
    for (p, g) in pred.iter().zip(gold) {
        match (*p == positive, *g == positive) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            _ => {}
        }
    }
    let denom = 2 * tp + fp + fn_;
    if denom == 0 {
        0.0
    } else {
        2.0 * tp as f64 / denom as f64
    }
}

/// Matthews correlation coefficient, multiclass (scikit-learn's formula); 0 when undefined.
pub fn matthews(pred: &[usize], gold: &[usize]) -> f64 {
    let n = gold.len().min(pred.len());
    if n == 0 {
        return 0.0;
    }
    let classes = pred.iter().chain(gold).copied().max().unwrap_or(0) + 1;
    let mut t = vec![0f64; classes];
    let mut p = vec![0f64; classes];
    let mut correct = 0f64;
    for (pi, gi) in pred.iter().zip(gold) {
        t[*gi] += 1.0;
        p[*pi] += 1.0;
        if pi == gi {
            correct += 1.0;
        }
    }
    let s = n as f64;
    let cov_tp = correct * s - t.iter().zip(&p).map(|(a, b)| a * b).sum::<f64>();
    let cov_pp = s * s - p.iter().map(|a| a * a).sum::<f64>();
    let cov_tt = s * s - t.iter().map(|a| a * a).sum::<f64>();
    let denom = (cov_tt * cov_pp).sqrt();
    if denom == 0.0 {
        0.0
    } else {
        cov_tp / denom
    }
}

/// Pearson correlation (NaN when either input is constant or shorter than 2).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n < 2 {
        return f64::NAN;
    }
    let mx = x.iter().sum::<f64>() / n as f64;
    let my = y.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    (sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0)
}

/// Ranks 1..n, ties sharing their average rank.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for k in &idx[i..=j] {
            ranks[*k] = rank;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman rank correlation: Pearson of average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Entity-level scores of a tagging.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EntityScores {
    /// Correct entities / predicted entities.
    pub precision: f64,
    /// Correct entities / gold entities.
    pub recall: f64,
    /// Harmonic mean.
    pub f1: f64,
}

/// Entity spans `(type, start, end)` of a BIO/IOB2/IOBES tag sequence, as seqeval's default
/// (conlleval-compatible) reader finds them: an `I-` tag after `O` or after another type starts
/// an entity.
pub fn entities(tags: &[&str]) -> Vec<(String, usize, usize)> {
    let split = |t: &str| -> (char, String) {
        let mut chars = t.chars();
        let tag = chars.next().unwrap_or('O');
        let rest: String = chars.collect();
        let ty = rest
            .split_once('-')
            .map(|(_, ty)| ty.to_string())
            .unwrap_or(rest);
        (tag, if ty.is_empty() { "_".to_string() } else { ty })
    };
    let mut out = Vec::new();
    let (mut prev_tag, mut prev_type) = ('O', String::new());
    let mut begin = 0usize;
    for (i, t) in tags.iter().copied().chain(std::iter::once("O")).enumerate() {
        let (tag, ty) = split(t);
        if end_of_chunk(prev_tag, tag, &prev_type, &ty) {
            out.push((prev_type.clone(), begin, i - 1));
        }
        if start_of_chunk(prev_tag, tag, &prev_type, &ty) {
            begin = i;
        }
        prev_tag = tag;
        prev_type = ty;
    }
    out
}

fn end_of_chunk(prev: char, tag: char, prev_type: &str, ty: &str) -> bool {
    matches!(prev, 'E' | 'S')
        || (matches!(prev, 'B' | 'I') && matches!(tag, 'B' | 'S' | 'O'))
        || (prev != 'O' && prev != '.' && prev_type != ty)
}

fn start_of_chunk(prev: char, tag: char, prev_type: &str, ty: &str) -> bool {
    matches!(tag, 'B' | 'S')
        || matches!(
            (prev, tag),
            ('E', 'E') | ('E', 'I') | ('S', 'E') | ('S', 'I') | ('O', 'E') | ('O', 'I')
        )
        || (tag != 'O' && tag != '.' && prev_type != ty)
}

/// Micro-averaged entity precision/recall/F1 over sentences (seqeval's defaults).
pub fn entity_scores(pred: &[Vec<&str>], gold: &[Vec<&str>]) -> EntityScores {
    // seqeval joins sentences with an `O` between them.
    let flat = |seqs: &[Vec<&str>]| -> Vec<(String, usize, usize)> {
        let mut joined: Vec<&str> = Vec::new();
        for s in seqs {
            joined.extend(s.iter().copied());
            joined.push("O");
        }
        entities(&joined)
    };
    let p = flat(pred);
    let g = flat(gold);
    let mut gold_set: HashMap<&(String, usize, usize), usize> = HashMap::new();
    for e in &g {
        *gold_set.entry(e).or_default() += 1;
    }
    let mut correct = 0usize;
    for e in &p {
        if let Some(c) = gold_set.get_mut(e) {
            if *c > 0 {
                *c -= 1;
                correct += 1;
            }
        }
    }
    let precision = if p.is_empty() {
        0.0
    } else {
        correct as f64 / p.len() as f64
    };
    let recall = if g.is_empty() {
        0.0
    } else {
        correct as f64 / g.len() as f64
    };
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    EntityScores {
        precision,
        recall,
        f1,
    }
}

/// Corpus BLEU-4 (0–100) on whitespace-split tokens, as sacrebleu computes it with
/// `tokenize="none"`: clipped n-gram matches against all references, the closest reference
/// length for the brevity penalty (shorter wins ties), and the `exp` smoothing of zero counts.
pub fn corpus_bleu(hypotheses: &[&str], references: &[Vec<&str>]) -> f64 {
    const N: usize = 4;
    let mut correct = [0usize; N];
    let mut total = [0usize; N];
    let (mut sys_len, mut ref_len) = (0usize, 0usize);
    for (hyp, refs) in hypotheses.iter().zip(references) {
        let h: Vec<&str> = hyp.split_whitespace().collect();
        let rs: Vec<Vec<&str>> = refs
            .iter()
            .map(|r| r.split_whitespace().collect())
            .collect();
        sys_len += h.len();
        // Closest reference length; ties go to the shorter one.
        ref_len += rs
            .iter()
            .map(|r| r.len())
            .min_by_key(|&l| ((l as i64 - h.len() as i64).abs(), l))
            .unwrap_or(0);
        for n in 1..=N {
            let hyp_counts = ngrams(&h, n);
            let mut max_ref: HashMap<&[&str], usize> = HashMap::new();
            for r in &rs {
                for (g, c) in ngrams(r, n) {
                    let e = max_ref.entry(g).or_default();
                    *e = (*e).max(c);
                }
            }
            for (g, c) in &hyp_counts {
                correct[n - 1] += (*c).min(max_ref.get(g).copied().unwrap_or(0));
            }
            total[n - 1] += h.len().saturating_sub(n - 1);
        }
    }
    let mut precisions = [0.0f64; N];
    let mut smooth = 1.0;
    for n in 0..N {
        if total[n] == 0 {
            break;
        }
        if correct[n] == 0 {
            smooth *= 2.0;
            precisions[n] = 100.0 / (smooth * total[n] as f64);
        } else {
            precisions[n] = 100.0 * correct[n] as f64 / total[n] as f64;
        }
    }
    let bp = if sys_len >= ref_len {
        1.0
    } else if sys_len > 0 {
        (1.0 - ref_len as f64 / sys_len as f64).exp()
    } else {
        0.0
    };
    let log_sum: f64 = precisions
        .iter()
        .map(|p| if *p > 0.0 { p.ln() } else { -9_999_999_999.0 })
        .sum();
    bp * (log_sum / N as f64).exp()
}

fn ngrams<'a, 'b>(tokens: &'b [&'a str], n: usize) -> HashMap<&'b [&'a str], usize> {
    let mut m = HashMap::new();
    if tokens.len() >= n {
        for w in tokens.windows(n) {
            *m.entry(w).or_default() += 1;
        }
    }
    m
}

/// rouge-score's default tokenisation: lower case, every run of characters other than ASCII
/// letters and digits is a separator.
pub fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// ROUGE-L F-measure of one prediction against its best reference (rouge-score's
/// `score_multi`), averaged over the corpus (0–1).
pub fn rouge_l(predictions: &[&str], references: &[Vec<&str>]) -> f64 {
    if predictions.is_empty() {
        return 0.0;
    }
    let mut sum = 0.0;
    for (p, refs) in predictions.iter().zip(references) {
        let pt = rouge_tokens(p);
        let best = refs
            .iter()
            .map(|r| {
                let rt = rouge_tokens(r);
                if pt.is_empty() || rt.is_empty() {
                    return 0.0;
                }
                let l = lcs(&pt, &rt) as f64;
                let (prec, rec) = (l / pt.len() as f64, l / rt.len() as f64);
                if prec + rec == 0.0 {
                    0.0
                } else {
                    2.0 * prec * rec / (prec + rec)
                }
            })
            .fold(0.0f64, f64::max);
        sum += best;
    }
    sum / predictions.len() as f64
}

fn lcs(a: &[String], b: &[String]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut prev = 0;
        for (j, y) in b.iter().enumerate() {
            let tmp = row[j + 1];
            row[j + 1] = if x == y {
                prev + 1
            } else {
                row[j + 1].max(row[j])
            };
            prev = tmp;
        }
    }
    row[b.len()]
}

/// NIST (n = 5) as NLTK's `corpus_nist` computes it: information weights from the reference
/// n-gram counts, per-segment choice of the reference with the best precision, and NIST's
/// brevity penalty (0.5 at a length ratio of 2/3). Tokens are whitespace-split. An n-gram order
/// with no hypothesis n-gram contributes nothing (NLTK divides by zero there).
pub fn corpus_nist(hypotheses: &[&str], references: &[Vec<&str>], n: usize) -> f64 {
    let hyps: Vec<Vec<&str>> = hypotheses
        .iter()
        .map(|h| h.split_whitespace().collect())
        .collect();
    let refs: Vec<Vec<Vec<&str>>> = references
        .iter()
        .map(|rs| rs.iter().map(|r| r.split_whitespace().collect()).collect())
        .collect();
    let mut freq: HashMap<&[&str], usize> = HashMap::new();
    let mut total_ref_words = 0usize;
    for rs in &refs {
        for r in rs {
            total_ref_words += r.len();
            for k in 1..=n {
                for (g, c) in ngrams(r, k) {
                    *freq.entry(g).or_default() += c;
                }
            }
        }
    }
    let info = |g: &[&str]| -> f64 {
        let count = freq.get(g).copied().unwrap_or(0) as f64;
        let prefix = &g[..g.len() - 1];
        let numerator = match freq.get(prefix) {
            Some(c) if !prefix.is_empty() => *c as f64,
            _ => total_ref_words as f64,
        };
        (numerator / count).log2()
    };
    let (mut score, mut l_ref, mut l_sys) = (0.0, 0usize, 0usize);
    for k in 1..=n {
        let (mut num_k, mut den_k) = (0.0f64, 0usize);
        for (h, rs) in hyps.iter().zip(&refs) {
            let hyp_ngrams = ngrams(h, k);
            let den: usize = hyp_ngrams.values().sum();
            // (precision, numerator, denominator, ref_len), maximised lexicographically.
            let mut best: Option<(f64, f64, usize, usize)> = None;
            for r in rs {
                let ref_ngrams = ngrams(r, k);
                let num: f64 = hyp_ngrams
                    .iter()
                    .filter_map(|(g, c)| ref_ngrams.get(g).map(|rc| info(g) * (*c).min(*rc) as f64))
                    .sum();
                let precision = if den == 0 { 0.0 } else { num / den as f64 };
                let cand = (precision, num, den, r.len());
                let better = match best {
                    None => true,
                    Some(b) => cand.partial_cmp(&b) == Some(std::cmp::Ordering::Greater),
                };
                if better {
                    best = Some(cand);
                }
            }
            if let Some((_, num, den, ref_len)) = best {
                num_k += num;
                den_k += den;
                l_ref += ref_len;
            }
            l_sys += h.len();
        }
        if den_k > 0 {
            score += num_k / den_k as f64;
        }
    }
    let ratio = if l_ref == 0 {
        0.0
    } else {
        l_sys as f64 / l_ref as f64
    };
    let penalty = if ratio > 0.0 && ratio < 1.0 {
        let beta = 0.5f64.ln() / 1.5f64.ln().powi(2);
        (beta * ratio.ln().powi(2)).exp()
    } else {
        ratio.clamp(0.0, 1.0)
    };
    score * penalty
}

/// CIDEr-D (×10, n = 4, σ = 6) as `pycocoevalcap`'s `Cider` computes it: TF-IDF n-gram
/// vectors with document frequencies over the reference sets of the corpus, clipped cosine
/// similarity, and a Gaussian penalty on the length difference (counted, as there, in
/// bigrams). Tokens are whitespace-split.
pub fn cider_d(hypotheses: &[&str], references: &[Vec<&str>]) -> f64 {
    const N: usize = 4;
    const SIGMA: f64 = 6.0;
    let hyp_counts: Vec<_> = hypotheses.iter().map(|h| cider_counts(h, N)).collect();
    let ref_counts: Vec<Vec<_>> = references
        .iter()
        .map(|rs| rs.iter().map(|r| cider_counts(r, N)).collect())
        .collect();
    let mut df: HashMap<Vec<&str>, f64> = HashMap::new();
    for rs in &ref_counts {
        let mut seen: std::collections::HashSet<&Vec<&str>> = std::collections::HashSet::new();
        for r in rs {
            seen.extend(r.keys());
        }
        for g in seen {
            *df.entry(g.clone()).or_default() += 1.0;
        }
    }
    if ref_counts.is_empty() {
        return 0.0;
    }
    let log_docs = (ref_counts.len() as f64).ln();
    let mut total = 0.0;
    for (h, rs) in hyp_counts.iter().zip(&ref_counts) {
        let (hv, hn, hl) = cider_vector(h, &df, log_docs);
        let mut score = [0.0; N];
        for r in rs {
            let (rv, rn, rl) = cider_vector(r, &df, log_docs);
            let delta = hl - rl;
            for k in 0..N {
                let mut val: f64 = hv[k]
                    .iter()
                    .map(|(g, x)| {
                        let y = rv[k].get(g).copied().unwrap_or(0.0);
                        x.min(y) * y
                    })
                    .sum();
                if hn[k] != 0.0 && rn[k] != 0.0 {
                    val /= hn[k] * rn[k];
                }
                score[k] += val * (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
            }
        }
        let mean = score.iter().sum::<f64>() / N as f64;
        total += mean / rs.len().max(1) as f64 * 10.0;
    }
    total / hyp_counts.len().max(1) as f64
}

type CiderVector<'a> = (Vec<HashMap<Vec<&'a str>, f64>>, [f64; 4], f64);

fn cider_counts(s: &str, n: usize) -> HashMap<Vec<&str>, usize> {
    let toks: Vec<&str> = s.split_whitespace().collect();
    let mut m = HashMap::new();
    for k in 1..=n {
        for (g, c) in ngrams(&toks, k) {
            *m.entry(g.to_vec()).or_default() += c;
        }
    }
    m
}

fn cider_vector<'a>(
    counts: &HashMap<Vec<&'a str>, usize>,
    df: &HashMap<Vec<&'a str>, f64>,
    log_docs: f64,
) -> CiderVector<'a> {
    let mut vec: Vec<HashMap<Vec<&str>, f64>> = (0..4).map(|_| HashMap::new()).collect();
    let mut norm = [0.0; 4];
    let mut length = 0.0;
    for (g, tf) in counts {
        let k = g.len() - 1;
        let d = df.get(g).copied().unwrap_or(0.0).max(1.0).ln();
        let v = *tf as f64 * (log_docs - d);
        norm[k] += v * v;
        vec[k].insert(g.clone(), v);
        // pycocoevalcap counts the length in bigrams (its `n == 1`).
        if k == 1 {
            length += *tf as f64;
        }
    }
    for x in &mut norm {
        *x = x.sqrt();
    }
    (vec, norm, length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_worked_values() {
        // 3 of 4 right; class 1: tp 1, fp 1, fn 0 -> F1 = 2/3.
        assert_eq!(accuracy(&[1, 0, 1, 0], &[1, 0, 0, 0]), 0.75);
        assert!((f1_binary(&[1, 0, 1, 0], &[1, 0, 0, 0], 1) - 2.0 / 3.0).abs() < 1e-12);
        // tp=1 tn=2 fp=1 fn=0: (2-0)/sqrt(2*1*3*2) = 2/sqrt(12).
        assert!((matthews(&[1, 0, 1, 0], &[1, 0, 0, 0]) - 2.0 / 12f64.sqrt()).abs() < 1e-12);
        assert_eq!(matthews(&[1, 1, 1], &[0, 1, 0]), 0.0);
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert!(pearson(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
        assert_eq!(average_ranks(&[10.0, 20.0, 10.0]), vec![1.5, 3.0, 1.5]);
        assert_eq!(
            entities(&["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "B-LOC"]),
            vec![
                ("PER".to_string(), 0, 1),
                ("LOC".to_string(), 3, 3),
                ("LOC".to_string(), 4, 4),
                ("LOC".to_string(), 5, 5)
            ]
        );
        assert!((corpus_bleu(&["a b c d"], &[vec!["a b c d"]]) - 100.0).abs() < 1e-9);
        assert_eq!(corpus_bleu(&[""], &[vec!["a b"]]), 0.0);
        assert!(
            (rouge_l(&["the cat sat"], &[vec!["The cat, it sat."]]) - 2.0 * 0.75 / 1.75).abs()
                < 1e-12
        );
    }
}

//! The seeded train/validation split of docs/METHOD.md §3: the task's train set is shuffled with the
//! run's seed and split (80/20 by default) into D_tr and D_val, stratified by class where the
//! examples have class labels. The task's own dev set is never touched.

use crate::example::Example;
use crate::DataError;

/// Shuffles `items` in place (Fisher–Yates) with a seeded generator.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = bidora_util::SplitMix64(seed);
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// Splits `examples` into `(train, validation)` with `val_fraction` of them (rounded) in
/// validation, per class when every example has a class label (stratified), otherwise overall.
/// Each part keeps a deterministic, seed-dependent order.
pub fn train_val_split(
    examples: Vec<Example>,
    val_fraction: f64,
    seed: u64,
) -> Result<(Vec<Example>, Vec<Example>), DataError> {
    if !(val_fraction > 0.0 && val_fraction < 1.0) {
        return Err(DataError::Invalid(format!(
            "val_fraction must be in (0, 1), got {val_fraction}"
        )));
    }
    if examples.len() < 2 {
        return Err(DataError::Invalid(format!(
            "cannot split {} example(s) into train and validation",
            examples.len()
        )));
    }
    let classes: Option<Vec<usize>> = examples.iter().map(Example::class).collect();
    let mut groups: Vec<Vec<Example>> = match classes {
        Some(c) => {
            let k = c.iter().copied().max().unwrap_or(0) + 1;
            let mut g: Vec<Vec<Example>> = (0..k).map(|_| Vec::new()).collect();
            for (ex, class) in examples.into_iter().zip(c) {
                g[class].push(ex);
            }
            g
        }
        None => vec![examples],
    };
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, group) in groups.iter_mut().enumerate() {
        shuffle(group, seed ^ (i as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        let n_val = (group.len() as f64 * val_fraction).round() as usize;
        let rest = group.split_off(n_val);
        val.append(group);
        train.extend(rest);
    }
    if train.is_empty() || val.is_empty() {
        return Err(DataError::Invalid(
            "the split left the train or the validation part empty".into(),
        ));
    }
    shuffle(&mut train, seed.wrapping_add(1));
    shuffle(&mut val, seed.wrapping_add(2));
    Ok((train, val))
}

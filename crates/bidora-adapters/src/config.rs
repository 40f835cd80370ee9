//! Adapter configuration: which method, which rank, which modules, how to initialise.

use serde::{Deserialize, Serialize};

use crate::AdapterError;

/// The fine-tuning method an adapter is trained with.
///
/// DoRA and BiDoRA share one layer (docs/METHOD.md §1); they differ only in how the layer is trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AdapterMethod {
    /// Low-rank update `W0 + s·B·A`, no magnitude vector.
    Lora,
    /// Weight-decomposed LoRA: magnitude `m` times the normalised direction, one-level training.
    Dora,
    /// DoRA's layer, trained bi-level: direction on the training split, magnitude on the
    /// validation split.
    #[default]
    Bidora,
}

impl AdapterMethod {
    /// Whether layers of this method carry a trainable magnitude vector.
    pub fn has_magnitude(self) -> bool {
        !matches!(self, AdapterMethod::Lora)
    }
}

impl std::fmt::Display for AdapterMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AdapterMethod::Lora => "lora",
            AdapterMethod::Dora => "dora",
            AdapterMethod::Bidora => "bidora",
        })
    }
}

impl std::str::FromStr for AdapterMethod {
    type Err = AdapterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "lora" => Ok(AdapterMethod::Lora),
            "dora" => Ok(AdapterMethod::Dora),
            "bidora" => Ok(AdapterMethod::Bidora),
            _ => Err(AdapterError::InvalidConfig(format!(
                "unknown adapter method `{s}`: expected `lora`, `dora` or `bidora`"
            ))),
        }
    }
}

/// How the down-projection `A` is initialised (`B` always starts at zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum InitA {
    /// Kaiming-uniform with `a = √5`, i.e. `U(−1/√in, 1/√in)`: HF PEFT's default.
    #[default]
    Kaiming,
    /// Standard normal `N(0, 1)`, as in the public BiDoRA code.
    Gaussian,
}

/// How the per-row norm `n = ‖W0 + s·B·A‖` enters the gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum NormMode {
    /// The norm is differentiated through (the BiDoRA reference code).
    #[default]
    Exact,
    /// The norm is a constant for autodiff (DoRA paper §4.3; what HF PEFT always does).
    Detached,
}

/// Everything that defines an adapter, serialisable to JSON or TOML.
///
/// Defaults follow HF PEFT where the method is silent (`r = 8`, `alpha = 8`, no dropout,
/// Kaiming init of `A`) and docs/METHOD.md elsewhere (query/value targets, exact norm).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdapterConfig {
    /// Training method.
    pub method: AdapterMethod,
    /// Rank of the update.
    pub r: usize,
    /// LoRA alpha: the update is scaled by `alpha / r` when `use_scaling` is on.
    pub alpha: f64,
    /// Dropout probability on the adapter path's input.
    pub dropout: f64,
    /// Modules to adapt, matched against module names as PEFT's `target_modules` does:
    /// a plain name matches the last component of a dotted path (`"query"`), a dotted name
    /// matches a suffix (`"attention.self.query"`), and a name starting with `re:` is a regular
    /// expression matched against the whole path.
    pub target_modules: Vec<String>,
    /// Initialisation of `A`.
    pub init_a: InitA,
    /// Scale the update by `alpha / r` (PEFT). When off, the scale is 1 (BiDoRA reference code).
    pub use_scaling: bool,
    /// Whether the norm is differentiated (`exact`) or treated as a constant (`detached`).
    pub norm_mode: NormMode,
    /// Compute the norm through the low-rank identity instead of forming `W0 + s·B·A`.
    pub low_rank_norm: bool,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        AdapterConfig {
            method: AdapterMethod::default(),
            r: 8,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: vec!["query".to_string(), "value".to_string()],
            init_a: InitA::default(),
            use_scaling: true,
            norm_mode: NormMode::default(),
            low_rank_norm: false,
        }
    }
}

impl AdapterConfig {
    /// A default configuration for `method`.
    pub fn new(method: AdapterMethod) -> Self {
        AdapterConfig {
            method,
            ..Default::default()
        }
    }

    /// Sets the rank and alpha.
    pub fn with_rank(mut self, r: usize, alpha: f64) -> Self {
        self.r = r;
        self.alpha = alpha;
        self
    }

    /// Sets the adapter-path dropout.
    pub fn with_dropout(mut self, dropout: f64) -> Self {
        self.dropout = dropout;
        self
    }

    /// Sets the norm mode.
    pub fn with_norm_mode(mut self, mode: NormMode) -> Self {
        self.norm_mode = mode;
        self
    }

    /// Turns the low-rank norm computation on or off.
    pub fn with_low_rank_norm(mut self, on: bool) -> Self {
        self.low_rank_norm = on;
        self
    }

    /// Sets the initialisation of `A`.
    pub fn with_init_a(mut self, init: InitA) -> Self {
        self.init_a = init;
        self
    }

    /// Sets the target module patterns.
    pub fn with_targets<S: Into<String>>(mut self, targets: impl IntoIterator<Item = S>) -> Self {
        self.target_modules = targets.into_iter().map(Into::into).collect();
        self
    }

    /// The factor `s` multiplying `B·A`: `alpha / r`, or 1 when scaling is off.
    pub fn scaling(&self) -> f64 {
        if self.use_scaling {
            self.alpha / self.r as f64
        } else {
            1.0
        }
    }

    /// Checks the values; every bad field is reported by name.
    pub fn validate(&self) -> Result<(), AdapterError> {
        let bad = |msg: String| Err(AdapterError::InvalidConfig(msg));
        if self.r == 0 {
            return bad("`r` must be at least 1".into());
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return bad(format!(
                "`alpha` must be a positive number, got {}",
                self.alpha
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("`dropout` must be in [0, 1), got {}", self.dropout));
        }
        if self.target_modules.is_empty() {
            return bad("`target_modules` is empty: name at least one module to adapt".into());
        }
        for t in &self.target_modules {
            if t.trim().is_empty() {
                return bad("`target_modules` contains an empty name".into());
            }
        }
        Ok(())
    }

    /// Whether the module at dotted `path` is a target (see [`AdapterConfig::target_modules`]).
    pub fn is_target(&self, path: &str) -> Result<bool, AdapterError> {
        for pattern in &self.target_modules {
            if matches_target(pattern, path)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// PEFT's `target_modules` rule for one pattern: `re:REGEX` must match the whole path; any other
/// pattern matches the path itself or a suffix that starts at a `.` boundary.
pub fn matches_target(pattern: &str, path: &str) -> Result<bool, AdapterError> {
    if let Some(re) = pattern.strip_prefix("re:") {
        let re = regex_lite::Regex::new(&format!("^(?:{re})$")).map_err(|e| {
            AdapterError::InvalidConfig(format!(
                "bad regular expression in target `{pattern}`: {e}"
            ))
        })?;
        return Ok(re.is_match(path));
    }
    Ok(path == pattern || path.ends_with(&format!(".{pattern}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scaling_is_alpha_over_r_or_one() {
        let c = AdapterConfig::default().with_rank(4, 16.0);
        assert_eq!(c.scaling(), 4.0);
        let c = AdapterConfig {
            use_scaling: false,
            ..c
        };
        assert_eq!(c.scaling(), 1.0);
    }

    #[test]
    fn validation_names_the_field() {
        let c = AdapterConfig::default().with_rank(0, 8.0);
        assert!(c.validate().unwrap_err().to_string().contains("`r`"));
        let c = AdapterConfig::default().with_dropout(1.0);
        assert!(c.validate().unwrap_err().to_string().contains("`dropout`"));
        let c = AdapterConfig::default().with_targets(Vec::<String>::new());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("target_modules"));
        assert!(AdapterConfig::default().validate().is_ok());
    }

    #[test]
    fn target_matching_follows_peft() {
        let c = AdapterConfig::default();
        assert!(c.is_target("encoder.layer.0.attention.self.query").unwrap());
        assert!(c.is_target("value").unwrap());
        assert!(!c.is_target("encoder.layer.0.attention.self.key").unwrap());
        assert!(!c
            .is_target("encoder.layer.0.attention.self.my_query")
            .unwrap());
        let c = c.with_targets(["attention.self.value", "re:.*\\.1\\..*key"]);
        assert!(c.is_target("encoder.layer.0.attention.self.value").unwrap());
        assert!(c.is_target("encoder.layer.1.attention.self.key").unwrap());
        assert!(!c.is_target("encoder.layer.0.attention.self.key").unwrap());
        let bad = AdapterConfig::default().with_targets(["re:("]);
        assert!(bad.is_target("x").is_err());
    }

    #[test]
    fn toml_like_json_roundtrip_and_unknown_keys_rejected() {
        let c = AdapterConfig::new(AdapterMethod::Dora).with_rank(4, 8.0);
        let s = serde_json::to_string(&c).unwrap();
        assert!(s.contains("\"method\":\"dora\""));
        let back: AdapterConfig = serde_json::from_str(&s).unwrap();
        assert_eq!(back, c);
        let partial: AdapterConfig = serde_json::from_str(r#"{"r": 2}"#).unwrap();
        assert_eq!(partial.r, 2);
        assert_eq!(partial.alpha, 8.0);
        assert!(serde_json::from_str::<AdapterConfig>(r#"{"rank": 2}"#).is_err());
    }
}

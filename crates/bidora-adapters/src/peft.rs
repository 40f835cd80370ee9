//! HF PEFT adapter files: `adapter_config.json` and `adapter_model.safetensors`.
//!
//! PEFT names a layer's tensors after the module path inside the wrapped model:
//!
//! ```text
//! base_model.model.<module path>.lora_A.weight          [r, in]
//! base_model.model.<module path>.lora_B.weight          [out, r]
//! base_model.model.<module path>.lora_magnitude_vector  [out]      (DoRA only)
//! base_model.model.<module path>.<param>                            (modules_to_save, e.g. the classifier)
//! ```
//!
//! A BiDoRA adapter is, at inference, a DoRA adapter, so it is written as one
//! (`"use_dora": true`) and PEFT loads it. Configs are read forward-compatibly: keys this
//! crate does not know are kept and reported as warnings, missing keys take PEFT's defaults.
//!
//! Module paths here are the model's own paths ([`AdapterHost`]); a `name_map` translates them
//! to PEFT's paths where the two differ (e.g. a Rust field cannot be called `self`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{matches_target, AdapterConfig, AdapterMethod};
use crate::partition::AdapterHost;
use crate::tensor_io::{atomic_write, read_safetensors, write_safetensors, HostTensor};
use crate::AdapterError;

/// The config file's name.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file's name.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The prefix PEFT puts before every module path.
pub const KEY_PREFIX: &str = "base_model.model.";

/// `target_modules` as PEFT stores it: a list of names, or one regular expression.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Module names matched as suffixes of the path.
    List(Vec<String>),
    /// A regular expression matched against the whole path.
    Regex(String),
}

impl Default for TargetModules {
    fn default() -> Self {
        TargetModules::List(Vec::new())
    }
}

/// The LoRA-family fields of PEFT's `adapter_config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeftConfig {
    /// `"LORA"` for LoRA and DoRA.
    #[serde(default = "default_peft_type")]
    pub peft_type: String,
    /// E.g. `"SEQ_CLS"`, `"CAUSAL_LM"`, `"TOKEN_CLS"`.
    #[serde(default)]
    pub task_type: Option<String>,
    /// The base model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Rank.
    #[serde(default = "default_r")]
    pub r: usize,
    /// Alpha: scaling is `lora_alpha / r` (or `lora_alpha / √r` with rsLoRA).
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    /// Dropout on the adapter input.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Adapted modules.
    #[serde(default)]
    pub target_modules: TargetModules,
    /// DoRA (`true`) or LoRA.
    #[serde(default)]
    pub use_dora: bool,
    /// rsLoRA scaling `alpha / √r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Whether the base weight is stored `[in, out]` (GPT-2's `Conv1D`); adapter tensors are
    /// laid out the same either way.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Which biases were trained: only `"none"` is supported.
    #[serde(default = "default_bias")]
    pub bias: String,
    /// Modules trained in full and saved with the adapter (e.g. `["classifier"]`).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Per-module rank overrides (pattern → rank).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha overrides (pattern → alpha).
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Whether the adapter was saved for inference.
    #[serde(default)]
    pub inference_mode: bool,
    /// PEFT's init option (a bool or a string); informational here.
    #[serde(default = "default_init")]
    pub init_lora_weights: Value,
    /// PEFT version or other revision string.
    #[serde(default)]
    pub revision: Option<String>,
    /// Every other key, kept so that a read–write round trip loses nothing.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn default_peft_type() -> String {
    "LORA".into()
}
fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}
fn default_bias() -> String {
    "none".into()
}
fn default_init() -> Value {
    Value::Bool(true)
}

/// Keys that only describe where the adapter came from; never reported.
const INFORMATIONAL_KEYS: &[&str] = &["auto_mapping", "megatron_core"];

/// Keys PEFT writes that change nothing this crate does while they hold their neutral value
/// (null, false, empty).
const NEUTRAL_KEYS: &[&str] = &[
    "megatron_config",
    "loftq_config",
    "layer_replication",
    "layers_pattern",
    "layers_to_transform",
    "exclude_modules",
    "eva_config",
    "corda_config",
    "lora_bias",
    "runtime_config",
    "use_qalora",
    "qalora_group_size",
    "trainable_token_indices",
    "target_parameters",
];

impl PeftConfig {
    /// The PEFT config describing an adapter made with `config`.
    pub fn from_adapter_config(config: &AdapterConfig) -> Self {
        PeftConfig {
            peft_type: default_peft_type(),
            task_type: None,
            base_model_name_or_path: None,
            r: config.r,
            lora_alpha: if config.use_scaling {
                config.alpha
            } else {
                // s = 1 is expressed as alpha = r.
                config.r as f64
            },
            lora_dropout: config.dropout,
            target_modules: TargetModules::List(config.target_modules.clone()),
            use_dora: config.method.has_magnitude(),
            use_rslora: false,
            fan_in_fan_out: false,
            bias: default_bias(),
            modules_to_save: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            inference_mode: true,
            init_lora_weights: default_init(),
            revision: None,
            extra: BTreeMap::new(),
        }
    }

    /// Checks what this crate can load, and lists the keys it ignores.
    pub fn check(&self) -> Result<Vec<String>, AdapterError> {
        if !self.peft_type.eq_ignore_ascii_case("LORA") {
            return Err(AdapterError::Unsupported(format!(
                "peft_type `{}`: only LORA (LoRA and DoRA) adapters are supported",
                self.peft_type
            )));
        }
        if self.bias != "none" {
            return Err(AdapterError::Unsupported(format!(
                "bias = `{}`: only adapters trained with bias = \"none\" are supported",
                self.bias
            )));
        }
        if self.r == 0 {
            return Err(AdapterError::InvalidConfig("`r` is 0".into()));
        }
        let mut warnings = Vec::new();
        for (key, value) in &self.extra {
            let neutral = matches!(value, Value::Null | Value::Bool(false))
                || value.as_object().is_some_and(|o| o.is_empty())
                || value.as_array().is_some_and(|a| a.is_empty());
            if INFORMATIONAL_KEYS.contains(&key.as_str())
                || (NEUTRAL_KEYS.contains(&key.as_str()) && neutral)
            {
                continue;
            }
            warnings.push(format!(
                "adapter_config.json: key `{key}` = {value} is not used by bidora"
            ));
        }
        Ok(warnings)
    }

    /// The scaling PEFT applies to the layer at `path` (honouring rank/alpha patterns and
    /// rsLoRA). `rank` is the layer's actual rank, read from its tensors.
    pub fn scaling_for(&self, path: &str, rank: usize) -> f64 {
        let alpha = pattern_lookup(&self.alpha_pattern, path).unwrap_or(self.lora_alpha);
        if self.use_rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        }
    }

    /// An [`AdapterConfig`] that injects layers like this adapter's (method `dora` when
    /// `use_dora`, else `lora`; norm detached as in PEFT).
    pub fn to_adapter_config(&self) -> AdapterConfig {
        let targets = match &self.target_modules {
            TargetModules::List(list) => list.clone(),
            TargetModules::Regex(re) => vec![format!("re:{re}")],
        };
        let (alpha, use_scaling) = if self.use_rslora {
            // alpha/√r expressed as an alpha for alpha/r.
            (self.lora_alpha * (self.r as f64).sqrt(), true)
        } else {
            (self.lora_alpha, true)
        };
        AdapterConfig {
            method: if self.use_dora {
                AdapterMethod::Dora
            } else {
                AdapterMethod::Lora
            },
            r: self.r,
            alpha,
            dropout: self.lora_dropout,
            target_modules: targets,
            use_scaling,
            norm_mode: crate::NormMode::Detached,
            ..AdapterConfig::default()
        }
    }
}

/// PEFT's rule for `rank_pattern` / `alpha_pattern` keys: the key matches the path or a suffix
/// of it at a `.` boundary (PEFT uses the regex `(.*\.)?KEY$`).
fn pattern_lookup<T: Copy>(patterns: &BTreeMap<String, T>, path: &str) -> Option<T> {
    patterns.iter().find_map(|(key, v)| {
        let re = regex_lite::Regex::new(&format!("^(?:.*\\.)?(?:{key})$")).ok()?;
        re.is_match(path).then_some(*v)
    })
}

/// One layer's tensors from an adapter file, in PEFT's (PyTorch) layout.
#[derive(Clone, Debug, PartialEq)]
pub struct PeftLayer {
    /// `lora_A.weight`, `[r, in]`.
    pub lora_a: HostTensor,
    /// `lora_B.weight`, `[out, r]`.
    pub lora_b: HostTensor,
    /// `lora_magnitude_vector`, `[out]`.
    pub magnitude: Option<HostTensor>,
}

/// A PEFT adapter read from a folder.
#[derive(Clone, Debug)]
pub struct PeftAdapter {
    /// The folder it was read from.
    pub dir: PathBuf,
    /// The parsed config.
    pub config: PeftConfig,
    /// Adapter tensors by PEFT module path (without `base_model.model.`).
    pub layers: BTreeMap<String, PeftLayer>,
    /// Every other tensor (`modules_to_save`, e.g. `classifier.weight`), by path without the
    /// prefix.
    pub extra_tensors: BTreeMap<String, HostTensor>,
    /// Things the reader ignored (unknown config keys), one line each.
    pub warnings: Vec<String>,
}

/// `adapter_config.json`.
fn read_config(path: &Path) -> Result<PeftConfig, AdapterError> {
    let text = std::fs::read_to_string(path).map_err(|source| AdapterError::Io {
        action: "cannot read the adapter config",
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| AdapterError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// A layer's `[lora_A, lora_B, magnitude]` tensors as the file holds them.
type LayerParts = [Option<HostTensor>; 3];

/// Tensors by name.
type Tensors = BTreeMap<String, HostTensor>;

/// The file's tensors grouped by layer; the others (a saved head, `modules_to_save`) apart.
fn group_tensors(
    file: crate::tensor_io::SafetensorsFile,
    path: &Path,
) -> Result<(BTreeMap<String, LayerParts>, Tensors), AdapterError> {
    let mut parts: BTreeMap<String, LayerParts> = BTreeMap::new();
    let mut extra = BTreeMap::new();
    for (key, tensor) in file.tensors {
        let Some(rest) = key.strip_prefix(KEY_PREFIX) else {
            return Err(AdapterError::Mismatch {
                path: path.to_path_buf(),
                message: format!("tensor `{key}` does not start with `{KEY_PREFIX}`"),
            });
        };
        let (module, slot) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
            (m, 0)
        } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
            (m, 1)
        } else if let Some(m) = rest.strip_suffix(".lora_magnitude_vector") {
            (m, 2)
        } else {
            extra.insert(rest.to_string(), tensor);
            continue;
        };
        parts.entry(module.to_string()).or_default()[slot] = Some(tensor);
    }
    Ok((parts, extra))
}

/// One layer's tensors, checked against each other and the config's `use_dora`.
fn check_layer(
    module: &str,
    a: Option<HostTensor>,
    b: Option<HostTensor>,
    m: Option<HostTensor>,
    use_dora: bool,
) -> Result<PeftLayer, String> {
    let missing = |what: &str| format!("layer `{module}` has no `{what}` tensor");
    let a = a.ok_or_else(|| missing("lora_A.weight"))?;
    let b = b.ok_or_else(|| missing("lora_B.weight"))?;
    let (ra, rb) = match (a.shape.as_slice(), b.shape.as_slice()) {
        ([ra, _], [_, rb]) => (*ra, *rb),
        _ => {
            return Err(format!(
                "layer `{module}`: lora_A {:?} and lora_B {:?} must be matrices",
                a.shape, b.shape
            ))
        }
    };
    if ra != rb {
        return Err(format!(
            "layer `{module}`: lora_A {:?} and lora_B {:?} disagree on the rank",
            a.shape, b.shape
        ));
    }
    if let Some(m) = &m {
        if m.shape != [b.shape[0]] {
            return Err(format!(
                "layer `{module}`: magnitude {:?} does not match lora_B {:?}",
                m.shape, b.shape
            ));
        }
    }
    if m.is_some() != use_dora {
        return Err(format!(
            "layer `{module}`: use_dora = {use_dora} in the config, but the magnitude vector is {}",
            if m.is_some() { "present" } else { "missing" }
        ));
    }
    Ok(PeftLayer {
        lora_a: a,
        lora_b: b,
        magnitude: m,
    })
}

impl PeftAdapter {
    /// Reads `dir/adapter_config.json` and `dir/adapter_model.safetensors`.
    pub fn load(dir: &Path) -> Result<Self, AdapterError> {
        let config = read_config(&dir.join(CONFIG_FILE))?;
        let warnings = config.check()?;
        for w in &warnings {
            log::warn!("{w}");
        }
        let weights_path = dir.join(WEIGHTS_FILE);
        let (parts, extra_tensors) =
            group_tensors(read_safetensors(&weights_path)?, &weights_path)?;
        let mut layers = BTreeMap::new();
        for (module, [a, b, m]) in parts {
            let layer = check_layer(&module, a, b, m, config.use_dora).map_err(|message| {
                AdapterError::Mismatch {
                    path: weights_path.clone(),
                    message,
                }
            })?;
            layers.insert(module, layer);
        }
        Ok(PeftAdapter {
            dir: dir.to_path_buf(),
            config,
            layers,
            extra_tensors,
            warnings,
        })
    }

    /// Copies this adapter's tensors into the adapted layers of `module`.
    ///
    /// `name_map` turns the module's layer paths into PEFT paths. Every adapted layer must have
    /// tensors of the right shapes in the file, every layer in the file must exist in the model,
    /// and scalings must agree; otherwise nothing is changed and the error lists the differences.
    pub fn apply<B: Backend, M: Module<B> + AdapterHost<B>>(
        &self,
        module: M,
        name_map: &dyn Fn(&str) -> String,
    ) -> Result<M, AdapterError> {
        let mut replacements: HashMap<ParamId, HostTensor> = HashMap::new();
        let mut problems = Vec::new();
        let mut used = std::collections::BTreeSet::new();
        module.for_each_adapter("", &mut |path, layer| {
            let peft_path = name_map(path);
            let Some(file_layer) = self.layers.get(&peft_path) else {
                problems.push(format!("no tensors for layer `{peft_path}`"));
                return;
            };
            used.insert(peft_path.clone());
            let (d_in, d_out, r) = (layer.d_input(), layer.d_output(), layer.rank());
            let mut check = |name: &str, found: &[usize], want: &[usize]| {
                if found != want {
                    problems.push(format!(
                        "`{peft_path}.{name}` has shape {found:?}, the model needs {want:?}"
                    ));
                    false
                } else {
                    true
                }
            };
            let ok_a = check("lora_A.weight", &file_layer.lora_a.shape, &[r, d_in]);
            let ok_b = check("lora_B.weight", &file_layer.lora_b.shape, &[d_out, r]);
            let ok_m = match (&file_layer.magnitude, &layer.magnitude) {
                (Some(m), Some(_)) => check("lora_magnitude_vector", &m.shape, &[d_out]),
                (None, None) => true,
                (Some(_), None) => {
                    problems.push(format!(
                        "`{peft_path}` is a DoRA layer in the file but a LoRA layer in the model"
                    ));
                    false
                }
                (None, Some(_)) => {
                    problems.push(format!(
                        "`{peft_path}` is a LoRA layer in the file but a DoRA layer in the model"
                    ));
                    false
                }
            };
            let want_scale = self.config.scaling_for(&peft_path, r);
            let have_scale = layer.settings.scaling;
            if (want_scale - have_scale).abs() > 1e-9 * want_scale.abs().max(1.0) {
                problems.push(format!(
                    "`{peft_path}`: the model layer scales the update by {have_scale}, the adapter by {want_scale}"
                ));
            }
            if ok_a && ok_b && ok_m {
                let transposed = |t: &HostTensor| t.transposed();
                match (transposed(&file_layer.lora_a), transposed(&file_layer.lora_b)) {
                    (Ok(a), Ok(b)) => {
                        replacements.insert(layer.lora_a.id, a);
                        replacements.insert(layer.lora_b.id, b);
                    }
                    (Err(e), _) | (_, Err(e)) => problems.push(e.to_string()),
                }
                if let (Some(m), Some(param)) = (&file_layer.magnitude, &layer.magnitude) {
                    replacements.insert(param.id, m.clone());
                }
            }
        });
        for name in self.layers.keys() {
            if !used.contains(name) {
                problems.push(format!(
                    "the file has tensors for layer `{name}`, which the model does not adapt"
                ));
            }
        }
        if !problems.is_empty() {
            return Err(AdapterError::Mismatch {
                path: self.dir.clone(),
                message: problems.join("; "),
            });
        }
        Ok(replace_params(module, replacements))
    }
}

/// Replaces the values of the parameters with the given ids, keeping their ids and their
/// `require_grad` flags. Shapes must already have been checked.
pub fn replace_params<B: Backend, M: Module<B>>(
    module: M,
    replacements: HashMap<ParamId, HostTensor>,
) -> M {
    struct Replacer {
        replacements: HashMap<ParamId, HostTensor>,
    }
    impl<B: Backend> ModuleMapper<B> for Replacer {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            let tensor = match self.replacements.remove(&id) {
                Some(host) if host.shape.len() == D => {
                    let require_grad = tensor.is_require_grad();
                    let new = Tensor::<B, D>::from_data(
                        TensorData::new(host.data, host.shape),
                        &tensor.device(),
                    );
                    if require_grad {
                        new.require_grad()
                    } else {
                        new
                    }
                }
                _ => tensor,
            };
            Param::from_mapped_value(id, tensor, mapper)
        }
    }
    module.map(&mut Replacer { replacements })
}

/// What to write besides the adapter tensors.
#[derive(Clone, Debug, Default)]
pub struct SaveOptions {
    /// `base_model_name_or_path` in the config.
    pub base_model_name_or_path: Option<String>,
    /// `task_type` in the config (e.g. `SEQ_CLS`).
    pub task_type: Option<String>,
    /// `modules_to_save` in the config (e.g. `["classifier"]`).
    pub modules_to_save: Vec<String>,
    /// Extra tensors in PyTorch layout, keyed by PEFT path without the prefix
    /// (e.g. `classifier.weight`): the saved modules' parameters.
    pub extra_tensors: BTreeMap<String, HostTensor>,
    /// `fan_in_fan_out` in the config: the base model stores these weights `[in, out]`
    /// (GPT-2's `Conv1D`).
    pub fan_in_fan_out: bool,
}

/// Writes the adapted layers of `host` as a PEFT adapter in `dir` (created if needed):
/// `adapter_config.json` and `adapter_model.safetensors`, each atomically. A BiDoRA adapter is
/// written as a DoRA adapter.
pub fn save<B: Backend, H: AdapterHost<B>>(
    dir: &Path,
    host: &H,
    config: &AdapterConfig,
    options: &SaveOptions,
    name_map: &dyn Fn(&str) -> String,
) -> Result<(), AdapterError> {
    std::fs::create_dir_all(dir).map_err(|source| AdapterError::Io {
        action: "cannot create the adapter folder",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut peft = PeftConfig::from_adapter_config(config);
    peft.base_model_name_or_path = options.base_model_name_or_path.clone();
    peft.task_type = options.task_type.clone();
    peft.fan_in_fan_out = options.fan_in_fan_out;
    peft.modules_to_save =
        (!options.modules_to_save.is_empty()).then(|| options.modules_to_save.clone());
    let mut tensors = BTreeMap::new();
    let mut first_error = None;
    let mut alpha_pattern = BTreeMap::new();
    let mut rank_pattern = BTreeMap::new();
    host.for_each_adapter("", &mut |path, layer| {
        if first_error.is_some() {
            return;
        }
        let peft_path = name_map(path);
        let result = (|| -> Result<(), AdapterError> {
            let a = HostTensor::from_tensor(layer.lora_a.val(), &peft_path)?.transposed()?;
            let b = HostTensor::from_tensor(layer.lora_b.val(), &peft_path)?.transposed()?;
            tensors.insert(format!("{KEY_PREFIX}{peft_path}.lora_A.weight"), a);
            tensors.insert(format!("{KEY_PREFIX}{peft_path}.lora_B.weight"), b);
            if let Some(m) = &layer.magnitude {
                let m = HostTensor::from_tensor(m.val(), &peft_path)?;
                tensors.insert(format!("{KEY_PREFIX}{peft_path}.lora_magnitude_vector"), m);
            }
            Ok(())
        })();
        if let Err(e) = result {
            first_error = Some(e);
            return;
        }
        // A layer whose rank or scaling differs from the config's is recorded as a PEFT pattern.
        let r = layer.rank();
        if r != peft.r {
            rank_pattern.insert(path_key(&peft_path), r);
        }
        let scaling = layer.settings.scaling;
        if (scaling - peft.scaling_for(&peft_path, r)).abs() > 1e-9 * scaling.abs().max(1.0) {
            alpha_pattern.insert(path_key(&peft_path), scaling * r as f64);
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    for (name, t) in &options.extra_tensors {
        tensors.insert(format!("{KEY_PREFIX}{name}"), t.clone());
    }
    peft.rank_pattern = rank_pattern;
    peft.alpha_pattern = alpha_pattern;
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    write_safetensors(&dir.join(WEIGHTS_FILE), &tensors, &metadata)?;
    let json = serde_json::to_vec_pretty(&peft).map_err(|source| AdapterError::Json {
        path: dir.join(CONFIG_FILE),
        source,
    })?;
    atomic_write(&dir.join(CONFIG_FILE), &json)
}

/// A pattern key that matches exactly this module path (escaped for PEFT's regex rule).
fn path_key(path: &str) -> String {
    path.replace('.', "\\.")
}

/// Whether the module at PEFT path `path` is targeted by `targets` (PEFT's rule).
pub fn peft_targets(targets: &TargetModules, path: &str) -> Result<bool, AdapterError> {
    match targets {
        TargetModules::List(list) => {
            for t in list {
                if matches_target(t, path)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        TargetModules::Regex(re) => matches_target(&format!("re:{re}"), path),
    }
}

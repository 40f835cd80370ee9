//! Finding adapted layers inside a model, and splitting its parameters into the groups the
//! bi-level optimiser trains at each level (docs/METHOD.md §2).

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::layer::AdaptedLinear;

/// A module that contains [`AdaptedLinear`] layers and can list them with their dotted paths.
///
/// Implement it for a model by forwarding to its fields with [`join_path`]; it is implemented
/// here for the layer itself, `Vec`, arrays and `Option`. The paths should be the module's
/// field paths (the names Burn's [`ModuleVisitor`] sees), so that adapter files and error
/// messages name layers the way the model does.
///
/// ```
/// use bidora_adapters::{join_path, AdaptedLinear, AdapterHost};
/// use burn::module::Module;
/// use burn::tensor::backend::Backend;
///
/// #[derive(Module, Debug)]
/// struct Attention<B: Backend> {
///     query: AdaptedLinear<B>,
///     value: AdaptedLinear<B>,
/// }
///
/// impl<B: Backend> AdapterHost<B> for Attention<B> {
///     fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
///         self.query.for_each_adapter(&join_path(prefix, "query"), f);
///         self.value.for_each_adapter(&join_path(prefix, "value"), f);
///     }
/// }
/// ```
pub trait AdapterHost<B: Backend> {
    /// Calls `f(path, layer)` for every adapted layer below `self`; `prefix` is `self`'s own
    /// path (empty at the root).
    fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>));

    /// Every adapted layer with its dotted path, in visiting order.
    fn adapters(&self) -> Vec<(String, &AdaptedLinear<B>)> {
        let mut out = Vec::new();
        self.for_each_adapter("", &mut |path, layer| out.push((path.to_string(), layer)));
        out
    }
}

/// `prefix.name`, or `name` when `prefix` is empty.
pub fn join_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl<B: Backend> AdapterHost<B> for AdaptedLinear<B> {
    fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        f(prefix, self)
    }
}

impl<B: Backend, T: AdapterHost<B>> AdapterHost<B> for Vec<T> {
    fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        for (i, item) in self.iter().enumerate() {
            item.for_each_adapter(&join_path(prefix, &i.to_string()), f);
        }
    }
}

impl<B: Backend, T: AdapterHost<B>, const N: usize> AdapterHost<B> for [T; N] {
    fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        for (i, item) in self.iter().enumerate() {
            item.for_each_adapter(&join_path(prefix, &i.to_string()), f);
        }
    }
}

impl<B: Backend, T: AdapterHost<B>> AdapterHost<B> for Option<T> {
    fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        if let Some(inner) = self {
            inner.for_each_adapter(prefix, f);
        }
    }
}

/// The role a parameter plays in adapter training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamGroup {
    /// `A` and `B` of an adapted layer: the direction θ, trained at the lower level.
    Direction,
    /// `m` of an adapted layer: the magnitude M, trained at the upper level.
    Magnitude,
    /// Any other trainable parameter, e.g. the task head (or every weight in full
    /// fine-tuning): trained with the direction at the lower level.
    Head,
    /// Parameters that do not require gradients (the pretrained weights).
    Frozen,
}

/// One parameter of a module: its id, dotted path, group and number of scalars.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    /// Burn's id of the parameter.
    pub id: ParamId,
    /// Dotted field path, e.g. `encoder.layers.0.query.lora_a`.
    pub path: String,
    /// Training group.
    pub group: ParamGroup,
    /// Number of scalars.
    pub numel: usize,
    /// Shape.
    pub shape: Vec<usize>,
}

/// Every parameter of a module, split by [`ParamGroup`].
///
/// Use the id lists with Burn's `GradientsParams::from_params` to split gradients per level.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamPartition {
    /// All parameters in visiting order.
    pub params: Vec<ParamInfo>,
}

impl ParamPartition {
    /// Partitions the parameters of `module`.
    pub fn of<B: Backend, M: Module<B> + AdapterHost<B>>(module: &M) -> Self {
        let mut roles: HashMap<ParamId, ParamGroup> = HashMap::new();
        module.for_each_adapter("", &mut |_, layer| {
            roles.insert(layer.lora_a.id, ParamGroup::Direction);
            roles.insert(layer.lora_b.id, ParamGroup::Direction);
            if let Some(m) = &layer.magnitude {
                roles.insert(m.id, ParamGroup::Magnitude);
            }
        });
        let mut collector = Collector {
            path: Vec::new(),
            roles,
            params: Vec::new(),
        };
        module.visit(&mut collector);
        ParamPartition {
            params: collector.params,
        }
    }

    /// Ids of one group.
    pub fn ids(&self, group: ParamGroup) -> Vec<ParamId> {
        self.params
            .iter()
            .filter(|p| p.group == group)
            .map(|p| p.id)
            .collect()
    }

    /// The lower level's parameters: direction ∪ head.
    pub fn lower(&self) -> Vec<ParamId> {
        self.params
            .iter()
            .filter(|p| matches!(p.group, ParamGroup::Direction | ParamGroup::Head))
            .map(|p| p.id)
            .collect()
    }

    /// The upper level's parameters: the magnitudes.
    pub fn upper(&self) -> Vec<ParamId> {
        self.ids(ParamGroup::Magnitude)
    }

    /// Every trainable parameter (all groups but frozen), for one-level training.
    pub fn trainable(&self) -> Vec<ParamId> {
        self.params
            .iter()
            .filter(|p| p.group != ParamGroup::Frozen)
            .map(|p| p.id)
            .collect()
    }

    /// Number of scalars in a group.
    pub fn count(&self, group: ParamGroup) -> usize {
        self.params
            .iter()
            .filter(|p| p.group == group)
            .map(|p| p.numel)
            .sum()
    }

    /// The dotted path of a parameter.
    pub fn path(&self, id: ParamId) -> Option<&str> {
        self.params
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.path.as_str())
    }
}

struct Collector {
    path: Vec<String>,
    roles: HashMap<ParamId, ParamGroup>,
    params: Vec<ParamInfo>,
}

impl Collector {
    fn record(&mut self, id: ParamId, require_grad: bool, shape: Vec<usize>) {
        let group = match self.roles.get(&id) {
            Some(g) => *g,
            None if require_grad => ParamGroup::Head,
            None => ParamGroup::Frozen,
        };
        self.params.push(ParamInfo {
            id,
            path: self.path.join("."),
            group,
            numel: shape.iter().product(),
            shape,
        });
    }
}

impl<B: Backend> ModuleVisitor<B> for Collector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        self.record(param.id, tensor.is_require_grad(), tensor.dims().to_vec());
    }
}

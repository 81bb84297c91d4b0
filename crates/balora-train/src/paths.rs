//! The one walk over a module tree by parameter path (`model.layers.0.self_attn.q_proj.
//! adapter.lora_a`): AdamW's moments and checkpoints are keyed by it, not by Burn's random
//! `ParamId`s, so a model rebuilt for `--resume` finds its state again.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// Reads each float parameter with its path.
pub(crate) trait PathVisitor {
    /// One parameter.
    fn visit<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>);
}

/// Replaces each float parameter, given its path.
pub(crate) trait PathMapper {
    /// One parameter.
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>>;
}

/// The stack of module names above the current parameter.
struct Walk<'a, V> {
    stack: Vec<String>,
    inner: &'a mut V,
}

impl<V> Walk<'_, V> {
    fn path(&self) -> String {
        self.stack.join(".")
    }
}

impl<V: PathVisitor> ModuleVisitor for Walk<'_, V> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.path();
        self.inner.visit(&path, param);
    }
}

impl<V: PathMapper> ModuleMapper for Walk<'_, V> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path();
        self.inner.map(&path, param)
    }
}

/// Visit every float parameter of `module` with its path, in module order.
pub(crate) fn visit_paths<M: Module, V: PathVisitor>(module: &M, visitor: &mut V) {
    module.visit(&mut Walk {
        stack: Vec::new(),
        inner: visitor,
    });
}

/// Map every float parameter of `module`, given its path, in module order.
pub(crate) fn map_paths<M: Module, V: PathMapper>(module: M, mapper: &mut V) -> M {
    module.map(&mut Walk {
        stack: Vec::new(),
        inner: mapper,
    })
}

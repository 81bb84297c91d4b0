//! The few things the kernels need from flex's tensors: where a tensor lives, its values as a
//! slice, and a tensor from a vector.

use burn::backend::DispatchDevice;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor, TensorData};

use crate::simd::Real;

/// Whether `t` lives on flex (with or without autodiff): the fused kernels run there.
pub fn on_flex<const D: usize>(t: &Tensor<D>) -> bool {
    matches!(
        t.device().without_autodiff().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}

/// The values of a contiguous f32 or f64 flex tensor.
pub enum Floats<'a> {
    /// An f32 tensor's values.
    F32(&'a [f32]),
    /// An f64 tensor's values.
    F64(&'a [f64]),
}

impl<'a> Floats<'a> {
    /// # Panics
    ///
    /// If `t` is not contiguous or not f32/f64 (the callers route other dtypes elsewhere).
    pub fn of(t: &'a FlexTensor) -> Self {
        let len = t.layout().num_elements();
        let start = t.layout().start_offset();
        assert!(t.is_contiguous(), "a fused kernel got a strided tensor");
        match t.dtype() {
            DType::F32 => Self::F32(&t.storage::<f32>()[start..start + len]),
            DType::F64 => Self::F64(&t.storage::<f64>()[start..start + len]),
            other => panic!("a fused kernel got a {other:?} tensor (f32 or f64 expected)"),
        }
    }

    /// Element `i` as `E` (the caller knows the dtype: `E` must be this tensor's).
    pub fn get<E: Real>(&self, i: usize) -> E {
        match self {
            Self::F32(v) => E::from_f64(f64::from(v[i])),
            Self::F64(v) => E::from_f64(v[i]),
        }
    }

    /// The values widened to f64 (small tensors: per-row gradients).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            Self::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Self::F64(v) => v.to_vec(),
        }
    }
}

/// `t` as a tensor that owns exactly its elements, contiguous from offset 0 (a copy when `t`
/// is a strided view or a window into a larger buffer), so its storage can be reused in place.
pub fn exact(t: &FlexTensor) -> FlexTensor {
    let layout = t.layout();
    let exact = t.is_contiguous()
        && layout.start_offset() == 0
        && t.bytes().len() == layout.num_elements() * t.dtype().size();
    if exact {
        t.clone()
    } else {
        FlexTensor::from_data(t.clone().into_data())
    }
}

/// `(rows, columns)` of a 2-D tensor.
pub fn rows_of(t: &FlexTensor) -> (usize, usize) {
    let dims: &[usize] = t.layout().shape();
    assert_eq!(dims.len(), 2, "a fused kernel expects a 2-D tensor");
    (dims[0], dims[1])
}

/// A contiguous flex tensor of `shape` holding `values`.
pub fn tensor_from<E: Real, const D: usize>(values: Vec<E>, shape: [usize; D]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

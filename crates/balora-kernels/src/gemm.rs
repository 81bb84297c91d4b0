//! Strided matrix views of flex buffers and the one GEMM call the kernels make.
//!
//! The GEMM is faer's (its x86 kernels pick AVX-512 or AVX2 at run time). Measured here on the
//! shapes of a LoRA step (2 cores, Zen 4, f32): faer's 512×768·768×3072 forward + backward runs
//! at 182 GFLOP/s where the `gemm` crate behind flex's matmul reaches 77 (and 52 with its
//! AVX-512 kernels), so the kernels call faer directly. With the `mkl` feature, Intel CPUs
//! take MKL's instead (`crate::mkl`: faster than faer there, slower on AMD).

use burn::backend::flex::FlexTensor;

use crate::simd::Real;

/// The element types the GEMM multiplies: f32 and f64.
pub trait Scalar:
    Real + faer::traits::ComplexField + faer::traits::Conjugate<Canonical = Self>
{
    /// MKL's GEMM of this type.
    #[cfg(feature = "mkl")]
    const CBLAS: crate::mkl::CblasGemm<Self>;
}

impl Scalar for f32 {
    #[cfg(feature = "mkl")]
    const CBLAS: crate::mkl::CblasGemm<Self> = crate::mkl::cblas_sgemm;
}
impl Scalar for f64 {
    #[cfg(feature = "mkl")]
    const CBLAS: crate::mkl::CblasGemm<Self> = crate::mkl::cblas_dgemm;
}

/// The library behind the GEMM in this process: `"mkl"` (the `mkl` feature, on an Intel CPU or
/// with `BALORA_GEMM=mkl`) or `"faer"`.
pub fn gemm_library() -> &'static str {
    #[cfg(feature = "mkl")]
    if crate::mkl::preferred() {
        return "mkl";
    }
    "faer"
}

/// A read-only strided view `rows × cols` (element strides) into a flex buffer.
#[derive(Debug, Clone, Copy)]
pub struct View<E> {
    pub(crate) ptr: *const E,
    pub rows: usize,
    pub cols: usize,
    pub(crate) row_stride: isize,
    pub(crate) col_stride: isize,
}

impl<E: Scalar> View<E> {
    /// The 2-D view of `t` (any strides, as a transpose leaves them).
    ///
    /// # Panics
    ///
    /// If `t` is not 2-D, has a negative stride, or is not of dtype `E`.
    pub fn of(t: &FlexTensor) -> Self {
        let layout = t.layout();
        let (rows, cols, row_stride, col_stride) = layout.as_2d_strides().expect("a 2-D tensor");
        assert!(layout.has_positive_strides(), "a flipped tensor view");
        let storage = t.storage::<E>();
        let start = layout.start_offset();
        // the last element the view can reach must lie inside the buffer
        let reach = start
            + rows.saturating_sub(1) * row_stride as usize
            + cols.saturating_sub(1) * col_stride as usize;
        assert!(rows == 0 || cols == 0 || reach < storage.len());
        Self {
            // SAFETY: `start` is inside the storage (checked above through `reach`).
            ptr: storage[start..].as_ptr(),
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// A contiguous row-major `rows × cols` matrix.
    pub fn of_slice(values: &[E], rows: usize, cols: usize) -> Self {
        assert_eq!(values.len(), rows * cols);
        Self {
            ptr: values.as_ptr(),
            rows,
            cols,
            row_stride: cols as isize,
            col_stride: 1,
        }
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
}

/// `dst = (accumulate ? dst : 0) + scale·lhs·rhs` with `dst` contiguous row-major
/// `lhs.rows × rhs.cols`, on all the threads of the rayon pool.
///
/// # Panics
///
/// If the shapes do not chain or `dst` has the wrong length.
pub fn matmul_into<E: Scalar>(
    dst: &mut [E],
    accumulate: bool,
    lhs: View<E>,
    rhs: View<E>,
    scale: f64,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "matmul_into: inner dimensions differ");
    assert_eq!(dst.len(), m * n, "matmul_into: destination size");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(E::ZERO);
        }
        return;
    }
    if m <= DOT_ROWS && lhs.col_stride == 1 && rhs.row_stride == 1 {
        return dot_rows(dst, accumulate, lhs, rhs, scale);
    }
    #[cfg(feature = "mkl")]
    if crate::mkl::preferred() && crate::mkl::matmul_into(dst, accumulate, lhs, rhs, scale) {
        return;
    }
    let accum = if accumulate {
        faer::Accum::Add
    } else {
        faer::Accum::Replace
    };
    // SAFETY: the views were built from live buffers whose extents were checked, `dst` holds
    // m·n contiguous elements, and faer reads exactly the strided extents given.
    unsafe {
        let dst = faer::MatMut::<E>::from_raw_parts_mut(dst.as_mut_ptr(), m, n, n as isize, 1);
        let lhs = faer::MatRef::<E>::from_raw_parts(lhs.ptr, m, k, lhs.row_stride, lhs.col_stride);
        let rhs = faer::MatRef::<E>::from_raw_parts(rhs.ptr, k, n, rhs.row_stride, rhs.col_stride);
        faer::linalg::matmul::matmul(
            dst,
            accum,
            lhs,
            rhs,
            E::from_f64(scale),
            faer::Par::rayon(0),
        );
    }
}

/// Products with at most this many left rows (decoding: one token per sequence of a batch) are
/// dot products.
const DOT_ROWS: usize = 16;

/// `dst = (accumulate ? dst : 0) + scale·lhs·rhs` for a few contiguous left rows and a right
/// operand whose columns are contiguous — `x·Wᵀ` with `W [out, in]` row-major, the decoding
/// step of every linear layer. A memory-bound sweep over `W`, split across threads by output
/// column: each column of `W` is read from memory once and used for every left row while it
/// sits in L1, four rows sharing each of its loads (`rows::dots`, which sums a row in the same
/// order whatever its group, so a batch decodes each row as it decodes alone). faer's matrix-vector path spends most of that time in iterator overhead (60 %
/// of a generation profile), and its GEMM packs `W` for a handful of rows.
fn dot_rows<E: Scalar>(dst: &mut [E], accumulate: bool, lhs: View<E>, rhs: View<E>, scale: f64) {
    use rayon::prelude::*;
    const CHUNK: usize = 256;
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    // SAFETY: both views were checked against their buffers; rows of `lhs` and columns of
    // `rhs` are contiguous runs of k elements (unit strides checked by the caller).
    let xs: Vec<&[E]> = (0..m)
        .map(|i| unsafe {
            std::slice::from_raw_parts(lhs.ptr.offset(i as isize * lhs.row_stride), k)
        })
        .collect();
    let cols = Cols(rhs.ptr as usize, rhs.col_stride, k);
    let out = Out(dst.as_mut_ptr() as usize, n, accumulate, E::from_f64(scale));
    (0..n.div_ceil(CHUNK)).into_par_iter().for_each(|c| {
        let range = c * CHUNK..((c + 1) * CHUNK).min(n);
        crate::dispatch!(sweep(&xs, cols, range.clone(), out));
    });
}

/// Columns `range` of [`dot_rows`]: every column of `W` loaded once per group of four rows.
#[inline(always)]
fn sweep<E: Scalar>(xs: &[&[E]], cols: Cols, range: std::ops::Range<usize>, out: Out<E>) {
    for j in range {
        let w = cols.get::<E>(j);
        let mut i = 0;
        for group in xs.chunks(4) {
            if let &[a, b, c, d] = group {
                for (r, v) in crate::rows::dots([a, b, c, d], w).into_iter().enumerate() {
                    out.put(i + r, j, v);
                }
            } else {
                for (r, &x) in group.iter().enumerate() {
                    out.put(i + r, j, crate::rows::dots([x], w)[0]);
                }
            }
            i += group.len();
        }
    }
}

/// The destination of [`dot_rows`] as plain data: address, row length, accumulate, scale.
#[derive(Clone, Copy)]
struct Out<E>(usize, usize, bool, E);

impl<E: Scalar> Out<E> {
    /// `dst[i, j] = (accumulate ? dst[i, j] : 0) + scale·v`.
    #[inline(always)]
    fn put(&self, i: usize, j: usize, v: E) {
        // SAFETY: `dst` holds m·n elements and column j belongs to one chunk, one thread.
        unsafe {
            let d = (self.0 as *mut E).add(i * self.1 + j);
            *d = if self.2 { *d + v * self.3 } else { v * self.3 };
        }
    }
}

/// The columns of a right operand as plain data (`Send`, unlike a raw pointer).
#[derive(Clone, Copy)]
struct Cols(usize, isize, usize);

impl Cols {
    fn get<E>(&self, j: usize) -> &[E] {
        // SAFETY: see `dot_rows`: column j starts j·stride elements in and holds k elements.
        unsafe {
            std::slice::from_raw_parts((self.0 as *const E).offset(j as isize * self.1), self.2)
        }
    }
}

/// `scale·lhs·rhs` as a new contiguous row-major vector.
pub fn matmul<E: Scalar>(lhs: View<E>, rhs: View<E>, scale: f64) -> Vec<E> {
    let mut out = vec![E::ZERO; lhs.rows * rhs.cols];
    matmul_into(&mut out, false, lhs, rhs, scale);
    out
}

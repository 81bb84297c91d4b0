//! Intel MKL's GEMM behind the kernels' one GEMM call (the `mkl` feature).
//!
//! Why: on Intel Xeons, faer's AVX-512 GEMM reaches about 0.7× the rate of the MKL that
//! PyTorch links, on the shapes of a LoRA step, and a step is mostly GEMM
//! (docs/performance.md, "Intel and AMD"). On AMD's Zen 4 it is the other way round: faer
//! beats MKL there. So the choice is made when the program runs, per CPU vendor: MKL on
//! `GenuineIntel`, faer elsewhere. `BALORA_GEMM=mkl|faer` overrides it.
//!
//! MKL runs sequentially (`MKL_THREADING_SEQUENTIAL`, so no OpenMP threads spin beside rayon's
//! pool). The product is split into one block of rows or columns per rayon thread, and each
//! block is one `cblas_?gemm` call.
//!
//! Linking: `libmkl_rt.so` from the directory in `$MKL_LIB_DIR` (e.g. the `mkl` and
//! `mkl-devel` wheels from PyPI) at build time, and on the loader's path when the program runs.

use std::ffi::c_int;
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::gemm::{Scalar, View};

/// `cblas_sgemm` / `cblas_dgemm`.
pub type CblasGemm<E> = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    E,
    *const E,
    c_int,
    *const E,
    c_int,
    E,
    *mut E,
    c_int,
);

// BLAS's own signatures
#[allow(clippy::too_many_arguments)]
unsafe extern "C" {
    /// BLAS `C = α·op(A)·op(B) + β·C`.
    pub fn cblas_sgemm(
        layout: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        b: *const f32,
        ldb: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    );
    /// The f64 GEMM.
    pub fn cblas_dgemm(
        layout: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f64,
        a: *const f64,
        lda: c_int,
        b: *const f64,
        ldb: c_int,
        beta: f64,
        c: *mut f64,
        ldc: c_int,
    );
    fn MKL_Set_Threading_Layer(code: c_int) -> c_int;
}

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;
const THREADING_SEQUENTIAL: c_int = 1;

/// Whether the GEMM goes to MKL: `BALORA_GEMM` if set, else on Intel CPUs. Read once.
pub fn preferred() -> bool {
    static CHOICE: OnceLock<bool> = OnceLock::new();
    *CHOICE.get_or_init(|| {
        let mkl = match std::env::var("BALORA_GEMM").as_deref() {
            Ok("mkl") => true,
            Ok("faer") => false,
            _ => is_intel(),
        };
        if mkl {
            // SAFETY: a plain setter, called before any other MKL function.
            unsafe { MKL_Set_Threading_Layer(THREADING_SEQUENTIAL) };
        }
        mkl
    })
}

#[cfg(target_arch = "x86_64")]
fn is_intel() -> bool {
    // SAFETY: CPUID leaf 0 exists on every x86-64 processor.
    #[allow(unused_unsafe)]
    let id = unsafe { std::arch::x86_64::__cpuid(0) };
    let vendor: Vec<u8> = [id.ebx, id.edx, id.ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    vendor == b"GenuineIntel"
}

#[cfg(not(target_arch = "x86_64"))]
fn is_intel() -> bool {
    false
}

/// A view as a BLAS operand: (transposed, leading dimension), or `None` when neither of its
/// strides is 1 (faer takes those).
fn operand<E>(v: &View<E>) -> Option<(bool, usize)> {
    let (r, c, rs, cs) = (v.rows, v.cols, v.row_stride, v.col_stride);
    if cs == 1 && (r <= 1 || rs >= c as isize) {
        Some((false, if r <= 1 { c.max(1) } else { rs as usize }))
    } else if rs == 1 && (c <= 1 || cs >= r as isize) {
        Some((true, if c <= 1 { r.max(1) } else { cs as usize }))
    } else {
        None
    }
}

/// `dst = (accumulate ? dst : 0) + scale·lhs·rhs` through MKL, one block per rayon thread;
/// `false` (nothing written) when a view has no unit stride or a size exceeds BLAS's `int`.
pub fn matmul_into<E: Scalar>(
    dst: &mut [E],
    accumulate: bool,
    lhs: View<E>,
    rhs: View<E>,
    scale: f64,
) -> bool {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let (Some((ta, lda)), Some((tb, ldb))) = (operand(&lhs), operand(&rhs)) else {
        return false;
    };
    let fits = |x: usize| c_int::try_from(x).is_ok();
    if ![m, n, k, lda, ldb].into_iter().all(fits) {
        return false;
    }
    let (alpha, beta) = (
        E::from_f64(scale),
        if accumulate { E::ONE } else { E::ZERO },
    );
    let trans = |t: bool| if t { TRANS } else { NO_TRANS };
    let (a, b, c) = (
        lhs.ptr as usize,
        rhs.ptr as usize,
        dst.as_mut_ptr() as usize,
    );
    let size = std::mem::size_of::<E>();
    // SAFETY (both closures): the views were checked against live buffers (`View::of`), so
    // every element of a block lies inside them; blocks of `dst` do not overlap.
    let call = |rows: (usize, usize), cols: (usize, usize)| unsafe {
        // the first element of op(A)'s row block and op(B)'s column block
        let a0 = a + rows.0 * if ta { 1 } else { lda } * size;
        let b0 = b + cols.0 * if tb { ldb } else { 1 } * size;
        let c0 = c + (rows.0 * n + cols.0) * size;
        (E::CBLAS)(
            ROW_MAJOR,
            trans(ta),
            trans(tb),
            (rows.1 - rows.0) as c_int,
            (cols.1 - cols.0) as c_int,
            k as c_int,
            alpha,
            a0 as *const E,
            lda as c_int,
            b0 as *const E,
            ldb as c_int,
            beta,
            c0 as *mut E,
            n as c_int,
        );
    };
    let threads = rayon::current_num_threads().max(1);
    // blocks along the longer side of the output, none thinner than 16
    let (long, by_rows) = if m >= n { (m, true) } else { (n, false) };
    let blocks = threads.min(long.div_ceil(16)).max(1);
    let bounds = |i: usize| (i * long / blocks, (i + 1) * long / blocks);
    (0..blocks).into_par_iter().for_each(|i| {
        if by_rows {
            call(bounds(i), (0, n));
        } else {
            call((0, m), bounds(i));
        }
    });
    true
}

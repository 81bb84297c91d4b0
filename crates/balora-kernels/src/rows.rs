//! One row of logits at a time: the forward statistics and the gradient of the fused
//! vocabulary terms (see [`crate::vocab`] for the definitions).
//!
//! Every pass runs over one row of `V` logits (≤ 200 KB for V = 50k in f32, so the second and
//! third passes read from L2) with 16 independent accumulator lanes, which the compiler turns
//! into vector registers; the element functions are [`Real::exp`] and [`Real::ln`].

use crate::simd::Real;

/// Output columns per row: cross-entropy, KL, entropy, `Σ z²`.
pub const COLUMNS: usize = 4;

/// Accumulator lanes: one AVX-512 register of f32, two of f64.
const LANES: usize = 16;

/// `max_j z_j`.
#[inline(always)]
pub fn row_max<E: Real>(z: &[E]) -> E {
    let mut acc = [E::NEG_INFINITY; LANES];
    let chunks = z.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        let c: &[E; LANES] = c.try_into().expect("a chunk of LANES");
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = a.max(x);
        }
    }
    let mut m = E::NEG_INFINITY;
    for &v in acc.iter().chain(tail) {
        m = m.max(v);
    }
    m
}

/// An element function of a row pass. Closures would do, but a closure called per element is
/// not always inlined, and an outlined call per element cannot be vectorised; a trait method
/// marked `#[inline(always)]` always is.
trait Elem<E> {
    fn f(&self, x: E) -> E;
}

/// `exp(x·s − m)`.
struct ExpShift<E> {
    s: E,
    m: E,
}

impl<E: Real> Elem<E> for ExpShift<E> {
    #[inline(always)]
    fn f(&self, x: E) -> E {
        (x * self.s - self.m).exp()
    }
}

/// `p·ln(p + ε)` with `p = exp(x − lse)`.
struct PLogPEps<E> {
    lse: E,
    eps: E,
}

impl<E: Real> Elem<E> for PLogPEps<E> {
    #[inline(always)]
    fn f(&self, x: E) -> E {
        let p = (x - self.lse).exp();
        p * (p + self.eps).ln()
    }
}

/// `p²/(p + ε)` with `p = exp(x − lse)`.
struct PSqOverPEps<E> {
    lse: E,
    eps: E,
}

impl<E: Real> Elem<E> for PSqOverPEps<E> {
    #[inline(always)]
    fn f(&self, x: E) -> E {
        let p = (x - self.lse).exp();
        p * p / (p + self.eps)
    }
}

/// `x²`.
struct Square;

impl<E: Real> Elem<E> for Square {
    #[inline(always)]
    fn f(&self, x: E) -> E {
        x * x
    }
}

/// `p·log p` with `log p = x − lse`.
struct PLogP<E> {
    lse: E,
}

impl<E: Real> Elem<E> for PLogP<E> {
    #[inline(always)]
    fn f(&self, x: E) -> E {
        let lp = x - self.lse;
        lp.exp() * lp
    }
}

/// `Σ_j f(z_j)` with lane accumulators.
#[inline(always)]
fn row_sum<E: Real, F: Elem<E>>(z: &[E], f: &F) -> E {
    let mut acc = [E::ZERO; LANES];
    let chunks = z.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        let c: &[E; LANES] = c.try_into().expect("a chunk of LANES");
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f.f(x);
        }
    }
    let mut s = E::ZERO;
    for &v in tail {
        s += f.f(v);
    }
    for v in acc {
        s += v;
    }
    s
}

/// `Σ_j q_j·(t_j − z_j)` with `q_j = exp(t_j·s − lse_t)`: the cross term of the KL.
#[inline(always)]
fn kl_cross<E: Real>(t: &[E], z: &[E], s: E, lse_t: E) -> E {
    let mut acc = [E::ZERO; LANES];
    let ct = t.chunks_exact(LANES);
    let cz = z.chunks_exact(LANES);
    let (tt, tz) = (ct.remainder(), cz.remainder());
    for (x, y) in ct.zip(cz) {
        let x: &[E; LANES] = x.try_into().expect("a chunk of LANES");
        let y: &[E; LANES] = y.try_into().expect("a chunk of LANES");
        for ((a, &tv), &zv) in acc.iter_mut().zip(x).zip(y) {
            *a += (tv * s - lse_t).exp() * (tv - zv);
        }
    }
    let mut sum = E::ZERO;
    for (&x, &y) in tt.iter().zip(tz) {
        sum += (x * s - lse_t).exp() * (x - y);
    }
    for v in acc {
        sum += v;
    }
    sum
}

/// `R` dot products `Σ_j x_r,j·w_j` sharing every load of `w`, each summed in one fixed order
/// (lane accumulators, then the tail, then the lanes), so a row gives the same bits whichever
/// group it is computed in.
#[inline(always)]
pub fn dots<E: Real, const R: usize>(xs: [&[E]; R], w: &[E]) -> [E; R] {
    let mut acc = [[E::ZERO; LANES]; R];
    let full = w.len() / LANES * LANES;
    for c in (0..full).step_by(LANES) {
        let wv: &[E; LANES] = w[c..c + LANES].try_into().expect("a chunk of LANES");
        for (a, x) in acc.iter_mut().zip(xs) {
            let xv: &[E; LANES] = x[c..c + LANES].try_into().expect("a chunk of LANES");
            for ((a, &u), &v) in a.iter_mut().zip(xv).zip(wv) {
                *a += u * v;
            }
        }
    }
    let mut out = [E::ZERO; R];
    for ((o, a), x) in out.iter_mut().zip(acc).zip(xs) {
        let mut s = E::ZERO;
        for (&u, &v) in x[full..].iter().zip(&w[full..]) {
            s += u * v;
        }
        for v in a {
            s += v;
        }
        *o = s;
    }
    out
}

/// `log Σ_j exp(z_j / τ)`, computed as `m/τ + ln Σ exp((z_j − m)/τ)`.
#[inline(always)]
pub fn row_lse<E: Real>(z: &[E], inv_tau: E) -> E {
    let m = row_max(z) * inv_tau;
    let s = row_sum(z, &ExpShift { s: inv_tau, m });
    m + s.ln()
}

/// What the forward pass keeps per row for the backward.
#[derive(Debug, Clone, Copy, Default)]
pub struct RowStats {
    /// `log Σ exp(z)`.
    pub lse: f64,
    /// `log Σ exp(z/τ)` (= `lse` at τ = 1).
    pub lse_tau: f64,
    /// `log Σ exp(t/τ)` of the teacher row.
    pub lse_teacher: f64,
    /// The entropy `H` of the row (full vocabulary or top-k).
    pub entropy: f64,
    /// `Σ p·p/(p+ε)` over the entropy's support (1 when ε = 0).
    pub entropy_a: f64,
    /// `log Σ exp` over the top-k support (top-k entropy only).
    pub lse_top: f64,
}

/// Which terms a row computes, and their constants.
#[derive(Debug, Clone, Copy)]
pub struct RowSpec {
    pub inv_tau: f64,
    pub teacher: bool,
    pub entropy: bool,
    pub entropy_eps: f64,
    /// 0: entropy over the full row.
    pub top_k: usize,
    pub square_sum: bool,
}

/// The indices of the `k` largest entries of `z`, largest first (ties: lower index first).
pub fn top_k_indices<E: Real>(z: &[E], k: usize, out: &mut [u32]) {
    debug_assert_eq!(out.len(), k);
    let mut vals: Vec<E> = Vec::with_capacity(k);
    let mut idx: Vec<u32> = Vec::with_capacity(k);
    for (j, &v) in z.iter().enumerate() {
        if vals.len() == k {
            // below or equal to the current k-th largest: a later equal value loses the tie
            if v.partial_cmp(&vals[k - 1]) != Some(std::cmp::Ordering::Greater) {
                continue;
            }
            vals.pop();
            idx.pop();
        }
        let pos = vals.partition_point(|&w| w >= v);
        vals.insert(pos, v);
        idx.insert(pos, j as u32);
    }
    out.copy_from_slice(&idx);
}

/// Entropy `H = −Σ p·log(p+ε)` and `A = Σ p·p/(p+ε)` of `p = exp(z_j − lse)` over `z`
/// (ε = 0: `log p = z − lse` exactly, and `A = 1`).
#[inline(always)]
fn entropy_of<E: Real>(z: &[E], lse: E, eps: E) -> (E, E) {
    if eps > E::ZERO {
        let h = row_sum(z, &PLogPEps { lse, eps });
        let a = row_sum(z, &PSqOverPEps { lse, eps });
        (-h, a)
    } else {
        (-row_sum(z, &PLogP { lse }), E::ONE)
    }
}

/// Forward of one row: `[ce, kl, entropy]` and the statistics the backward needs. `top` holds
/// the row's top-k indices (empty unless `spec.top_k > 0`).
#[inline(always)]
pub fn forward_row<E: Real>(
    z: &[E],
    teacher: Option<&[E]>,
    target: Option<usize>,
    spec: RowSpec,
    top: &[u32],
) -> ([f64; COLUMNS], RowStats) {
    let one = E::ONE;
    let inv_tau = E::from_f64(spec.inv_tau);
    let lse = row_lse(z, one);
    let mut stats = RowStats {
        lse: lse.to_f64(),
        lse_tau: lse.to_f64(),
        entropy_a: 1.0,
        ..RowStats::default()
    };
    let mut out = [0.0; COLUMNS];
    if spec.square_sum {
        out[3] = row_sum(z, &Square).to_f64();
    }
    if let Some(y) = target {
        out[0] = (lse - z[y]).to_f64();
    }
    if let Some(t) = teacher.filter(|_| spec.teacher) {
        let lse_tau = if spec.inv_tau == 1.0 {
            lse
        } else {
            row_lse(z, inv_tau)
        };
        let lse_t = row_lse(t, inv_tau);
        // KL(q‖p̃) = Σ q·(t − z)/τ − lse_t + lse_τ, with q = exp(t/τ − lse_t)
        let cross = kl_cross(t, z, inv_tau, lse_t);
        out[1] = (cross * inv_tau - lse_t + lse_tau).to_f64();
        stats.lse_tau = lse_tau.to_f64();
        stats.lse_teacher = lse_t.to_f64();
    }
    if spec.entropy {
        let eps = E::from_f64(spec.entropy_eps);
        let (h, a) = if spec.top_k > 0 {
            let sel: Vec<E> = top.iter().map(|&j| z[j as usize]).collect();
            let lse_top = row_lse(&sel, one);
            stats.lse_top = lse_top.to_f64();
            entropy_of(&sel, lse_top, eps)
        } else {
            entropy_of(z, lse, eps)
        };
        out[2] = h.to_f64();
        stats.entropy = h.to_f64();
        stats.entropy_a = a.to_f64();
    }
    (out, stats)
}

/// Backward of one row, in place: `row` holds the logits `z` on entry and
/// `dz = g₀·(p − e_y) + g₁·(p̃ − q)/τ + g₂·∂H/∂z + 2·g₃·z` on return (the logits are not needed after
/// their gradient, so the gradient can take over their buffer).
///
/// With `p = softmax(z)`, `p̃ = softmax(z/τ)`, `q = softmax(t/τ)` and, for the entropy,
/// `g_i = −log(p_i+ε) − p_i/(p_i+ε)`: `∂H/∂z_j = p_j·(g_j − Σ_i p_i·g_i)`, where
/// `Σ p·g = H − A`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn backward_row<E: Real>(
    row: &mut [E],
    teacher: Option<&[E]>,
    target: Option<usize>,
    spec: RowSpec,
    stats: &RowStats,
    top: &[u32],
    g: [f64; COLUMNS],
) {
    let lse = E::from_f64(stats.lse);
    let g_ce = E::from_f64(if target.is_some() { g[0] } else { 0.0 });
    let inv_tau = E::from_f64(spec.inv_tau);
    let g_kl = E::from_f64(g[1] * spec.inv_tau);
    let full_entropy = spec.entropy && spec.top_k == 0 && g[2] != 0.0;
    let g_h = E::from_f64(if full_entropy { g[2] } else { 0.0 });
    let eps = E::from_f64(spec.entropy_eps);
    let pg = E::from_f64(stats.entropy - stats.entropy_a);
    let g_sq = E::from_f64(if spec.square_sum { 2.0 * g[3] } else { 0.0 });
    let use_kl = spec.teacher && g[1] != 0.0 && teacher.is_some();
    let terms = Terms {
        lse,
        lse_tau: E::from_f64(stats.lse_tau),
        lse_t: E::from_f64(stats.lse_teacher),
        inv_tau,
        same_tau: spec.inv_tau == 1.0,
        g_ce,
        g_kl,
        g_h,
        eps,
        pg,
        g_sq,
    };
    // the top-k logits, read before the pass overwrites them
    let top_k = spec.entropy && spec.top_k > 0 && g[2] != 0.0;
    let top_values: Vec<E> = if top_k {
        top.iter().map(|&j| row[j as usize]).collect()
    } else {
        Vec::new()
    };
    // The branches are chosen once per row, so each inner loop is straight-line vector code.
    match (use_kl, teacher, full_entropy) {
        (true, Some(t), true) => kl_grad_loop::<E, true>(row, t, &terms),
        (true, Some(t), false) => kl_grad_loop::<E, false>(row, t, &terms),
        (_, _, true) => grad_loop::<E, true>(row, &terms),
        (_, _, false) => grad_loop::<E, false>(row, &terms),
    }
    if let Some(y) = target {
        row[y] = row[y] - g_ce;
    }
    if top_k {
        let lse_top = E::from_f64(stats.lse_top);
        let g_h = E::from_f64(g[2]);
        for (&j, &zj) in top.iter().zip(&top_values) {
            let lp = zj - lse_top;
            let p = lp.exp();
            row[j as usize] += entropy_grad(p, lp, eps, pg, g_h);
        }
    }
}

/// The per-row constants of the gradient loop.
struct Terms<E> {
    lse: E,
    lse_tau: E,
    lse_t: E,
    inv_tau: E,
    same_tau: bool,
    g_ce: E,
    g_kl: E,
    g_h: E,
    eps: E,
    pg: E,
    /// `2·g₃` of the `Σ z²` column.
    g_sq: E,
}

/// The gradient of cross-entropy and entropy (no teacher), in place.
#[inline(always)]
fn grad_loop<E: Real, const ENTROPY: bool>(row: &mut [E], c: &Terms<E>) {
    for d in row.iter_mut() {
        let log_p = *d - c.lse;
        let p = log_p.exp();
        let mut v = c.g_ce * p + c.g_sq * *d;
        if ENTROPY {
            v += entropy_grad(p, log_p, c.eps, c.pg, c.g_h);
        }
        *d = v;
    }
}

/// [`grad_loop`] plus the consistency KL against the teacher row `t`, in place.
#[inline(always)]
fn kl_grad_loop<E: Real, const ENTROPY: bool>(row: &mut [E], t: &[E], c: &Terms<E>) {
    for (d, &tv) in row.iter_mut().zip(t) {
        let zv = *d;
        let log_p = zv - c.lse;
        let p = log_p.exp();
        let pt = if c.same_tau {
            p
        } else {
            (zv * c.inv_tau - c.lse_tau).exp()
        };
        let q = (tv * c.inv_tau - c.lse_t).exp();
        let mut v = c.g_ce * p + c.g_kl * (pt - q) + c.g_sq * zv;
        if ENTROPY {
            v += entropy_grad(p, log_p, c.eps, c.pg, c.g_h);
        }
        *d = v;
    }
}

/// `g_H·p·(g − Σp·g)` for one entry (`log_p` = `z − lse`); 0 when `g_H = 0`.
#[inline(always)]
fn entropy_grad<E: Real>(p: E, log_p: E, eps: E, pg: E, g_h: E) -> E {
    let gi = if eps > E::ZERO {
        -(p + eps).ln() - p / (p + eps)
    } else {
        -log_p - E::ONE
    };
    g_h * p * (gi - pg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_largest_in_order_with_lower_index_winning_ties() {
        let z = [0.5f64, 3.0, -1.0, 3.0, 2.0, 0.0];
        let mut out = [0u32; 3];
        top_k_indices(&z, 3, &mut out);
        assert_eq!(out, [1, 3, 4]);
    }

    #[test]
    fn lanes_and_tail_give_the_exact_max_and_logsumexp() {
        let z: Vec<f64> = (0..37).map(|i| ((i * 7) % 11) as f64 * 0.3 - 1.0).collect();
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(row_max(&z), m);
        let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
        assert!((row_lse(&z, 1.0) - lse).abs() < 1e-12);
    }
}

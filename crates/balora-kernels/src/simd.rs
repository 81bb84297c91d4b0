//! Element math that vectorises, and the run-time choice of the widest instruction set.
//!
//! `f32::exp` and `f32::ln` are calls into libm, which the compiler cannot vectorise; the
//! vocabulary passes spend their time in exactly those two functions (three exponentials per
//! logit in a BA-LoRA backward). [`Real::exp`] and [`Real::ln`] for `f32` are branch-free
//! Cephes-style polynomials (relative error ≈ 2 ulp on the range that matters) written with
//! plain arithmetic and bit casts, so a loop over a slice compiles to AVX-512 or AVX2 code;
//! `f64` keeps the libm functions, because f64 serves the finite-difference gradient checks,
//! where accuracy is the point and speed is not.
//!
//! `dispatch!` compiles a kernel body once per instruction set (AVX-512, AVX2+FMA, baseline)
//! and picks the widest one the CPU has at run time, so a binary built for baseline x86-64 still
//! uses AVX-512 where it exists.

/// The float types the fused kernels run in.
pub trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + bytemuck::Pod
    + burn::tensor::Element
    + 'static
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// −∞ (the identity of a running max).
    const NEG_INFINITY: Self;
    /// `eˣ`.
    fn exp(self) -> Self;
    /// `ln x` for `x > 0`.
    fn ln(self) -> Self;
    /// The nearest value to `v` (kernel constants are written in f64).
    fn from_f64(v: f64) -> Self;
    /// The value as f64 (reductions are accumulated in f64).
    fn to_f64(self) -> f64;
    /// The larger of the two.
    fn max(self, other: Self) -> Self;
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        f64::ln(self)
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn max(self, other: Self) -> Self {
        if self > other { self } else { other }
    }
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    #[inline(always)]
    fn exp(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        ln_f32(self)
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline(always)]
    fn max(self, other: Self) -> Self {
        if self > other { self } else { other }
    }
}

/// `eˣ` in f32: `x = n·ln2 + r` with `|r| ≤ ln2/2`, a degree-6 polynomial for `eʳ`, and `2ⁿ`
/// built in the exponent bits. Inputs below −87.3 return ≈ 1e-38 instead of a denormal or 0,
/// which the softmax passes (arguments `z − max ≤ 0`) cannot tell apart from 0; inputs above
/// 88 return e⁸⁸ (finite) instead of overflowing.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it rounds to the nearest integer and leaves it in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let er = (p * r) * r + r + 1.0;
    // wrapping: overflow checks (on in test builds) would keep this loop from vectorising
    let bits = (t.to_bits() as i32).wrapping_sub(0x4B40_0000 - 127) << 23;
    er * f32::from_bits(bits as u32)
}

/// `ln x` in f32 for normal `x > 0`: `x = m·2ᵉ` with `m ∈ [√½, √2)`, and a degree-8 polynomial
/// for `ln(1 + f)`, `f = m − 1` (Cephes `logf`).
#[inline(always)]
pub fn ln_f32(x: f32) -> f32 {
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let bits = x.to_bits() as i32;
    let mut e = ((bits >> 23) & 0xff).wrapping_sub(126);
    // mantissa in [0.5, 1)
    let mut m = f32::from_bits(((bits & 0x007f_ffff) | 0x3f00_0000) as u32);
    let small = m < SQRT_HALF;
    e = e.wrapping_sub(i32::from(small));
    m = if small { m + m } else { m };
    let f = m - 1.0;
    let z = f * f;
    let p = 7.037_683_6e-2_f32;
    let p = p * f - 1.151_461e-1;
    let p = p * f + 1.167_699_9e-1;
    let p = p * f - 1.242_014_1e-1;
    let p = p * f + 1.424_932_3e-1;
    let p = p * f - 1.666_805_7e-1;
    let p = p * f + 2.000_071_4e-1;
    let p = p * f - 2.499_999_4e-1;
    let p = p * f + 3.333_333e-1;
    let y = p * f * z;
    let ef = e as f32;
    let y = y + ef * -2.121_944_4e-4;
    let y = y - 0.5 * z;
    f + y + ef * 0.693_359_4
}

/// Run `$body` (an expression) compiled for the widest x86 instruction set the CPU has:
/// AVX-512 (F, BW, DQ, VL), AVX2 + FMA, or the baseline. The body should be one call of an
/// `#[inline(always)]` function: that function, and everything it inlines, is then compiled
/// with the chosen features.
#[macro_export]
#[doc(hidden)]
macro_rules! dispatch {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
            unsafe fn v4<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn v3<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: the CPU has every feature `v4` is compiled for.
                unsafe { v4(|| $body) }
            } else if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has every feature `v3` is compiled for.
                unsafe { v3(|| $body) }
            } else {
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f32, b: f64) -> f64 {
        ((f64::from(a) - b) / b).abs()
    }

    #[test]
    fn exp_f32_is_accurate_to_a_few_ulp_on_the_softmax_range() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * f64::from(i) / 200_000.0;
            worst = worst.max(rel(exp_f32(x as f32), (x as f32 as f64).exp()));
        }
        assert!(
            worst < 4.0 * f64::from(f32::EPSILON),
            "worst relative error {worst:e}"
        );
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn exp_f32_saturates_instead_of_producing_nan() {
        assert!(exp_f32(-1e30) >= 0.0 && exp_f32(-1e30) < 1e-37);
        assert!(exp_f32(f32::NEG_INFINITY) < 1e-37);
        assert!(exp_f32(1e30).is_finite());
    }

    #[test]
    fn ln_f32_is_accurate_to_a_few_ulp() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = (-80.0 + 160.0 * f64::from(i) / 200_000.0).exp() as f32;
            let exact = f64::from(x).ln();
            let err = (f64::from(ln_f32(x)) - exact).abs() / exact.abs().max(1.0);
            worst = worst.max(err);
        }
        assert!(
            worst < 4.0 * f64::from(f32::EPSILON),
            "worst error {worst:e}"
        );
        assert_eq!(ln_f32(1.0), 0.0);
    }

    #[test]
    fn dispatch_runs_the_body_and_returns_its_value() {
        let xs: Vec<f32> = (0..1000).map(|i| i as f32 / 100.0 - 5.0).collect();
        let s: f32 = crate::dispatch!(xs.iter().map(|&x| exp_f32(x)).sum::<f32>());
        let exact: f64 = xs.iter().map(|&x| f64::from(x).exp()).sum();
        assert!(rel(s, exact) < 1e-5);
    }
}

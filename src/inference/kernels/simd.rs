//! Runtime selection of the widest vector instructions this processor has.
//!
//! The crate is compiled for baseline x86-64 (SSE2), so plain loops vectorise only four
//! lanes wide and without FMA. `vectorised!` defines a function whose body is compiled
//! three times (AVX-512, AVX2 + FMA, baseline) and picks one at run time; loops in the
//! body, and the `#[inline(always)]` helpers it calls (`exp::exp`, ...), are then
//! vectorised for that width. (A closure handed to a `#[target_feature]` function is not
//! enough: the compiler rarely inlines a closure with loops, and compiles it for the
//! baseline.)

/// Defines `fn name(args) -> ret { body }` with the body compiled per instruction set.
macro_rules! vectorised {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if $crate::inference::kernels::simd::has_avx512() {
                    // SAFETY: the processor has the features avx512 is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::inference::kernels::simd::has_avx2() {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use vectorised;

/// Whether AVX-512 (F, BW, DQ, VL) is available.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vl")
}

/// Whether AVX2 and FMA are available.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

#[cfg(test)]
mod tests {
    vectorised! {
        fn dot(a: &[f32], b: &[f32]) -> f32 {
            a.iter().zip(b).map(|(x, y)| x * y).sum()
        }
    }

    #[test]
    fn a_vectorised_function_computes_the_same_on_every_path() {
        let a: Vec<f32> = (0..37).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (0..37).map(|i| (i * i) as f32).sum::<f32>());
    }
}

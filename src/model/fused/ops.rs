//! The layers of the fused engine: one forward and one backward function per layer family,
//! on row-major `f32` slices. Shapes are written beside the code (`N = B * T` rows).
//!
//! Every parallel loop splits its work into pieces fixed by the shapes alone (rows of the
//! batch, fixed matmul tiles, fixed column chunks) and every reduction runs in a fixed order
//! inside one piece, so results do not depend on the number of threads or on scheduling.

use rayon::prelude::*;

pub(super) const LN_EPS: f32 = 1e-5;

/// A raw pointer that may cross into rayon tasks writing disjoint tiles.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Defines a kernel (the work of one parallel task) compiled twice: for AVX2, chosen at run
/// time where the CPU has it, and for the baseline target. The kernels are written with
/// explicit lane orders and Rust never contracts a multiply and an add into an FMA, so both
/// versions compute the same bits; the wider vectors change the speed only (a test compares
/// the two). A kernel is a named function, not a closure, because a closure's body is
/// compiled on its own, for the baseline, even when called from an AVX2 function.
macro_rules! kernel {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::model::fused::ops::wide_simd() {
                // SAFETY: the CPU has AVX2 (checked by `wide_simd`).
                return unsafe { wide($($arg),*) };
            }
            body($($arg),*)
        }
    };
}
pub(super) use kernel;

/// Whether kernels run their AVX2 version: the CPU has AVX2 and [`WIDE_SIMD`] is on.
#[inline]
pub(crate) fn wide_simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        WIDE_SIMD.load(std::sync::atomic::Ordering::Relaxed)
            && std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// On by default; the tests turn it off to compare the two versions of every kernel.
pub(crate) static WIDE_SIMD: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(true);

/// Matmul tile: rows and columns of the output computed by one task.
const TILE_M: usize = 64;
const TILE_N: usize = 96;

/// Whether a product of `m` rows (below the row-panel size) leaves a tile of one row, which
/// `gemm` computes by its matrix-vector path instead of its tile kernels. On this project's
/// AMD EPYC (AVX2 kernels) both gave the same bits, but nothing in `gemm` promises it.
pub(super) fn single_row_tile(m: usize) -> bool {
    m < 1024 && m % TILE_M == 1
}

/// `c (m, n) = a (m, k) @ b (k, n)` (plus `c` when `accumulate`), with any strides for `a` and
/// `b` (`_rs` between rows, `_cs` between columns) and `c` row-major with row stride `ldc`.
/// Tiles of the output run in parallel, each a single-threaded `gemm` call; the tiling depends
/// on the shape alone, so results do not depend on the thread count.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty product (a batch with nothing to train on): zero, or nothing added.
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(0.0);
            }
        }
        return;
    }
    assert!((m - 1) * a_rs + (k - 1) * a_cs < a.len(), "matmul: lhs");
    assert!((k - 1) * b_rs + (n - 1) * b_cs < b.len(), "matmul: rhs");
    assert!((m - 1) * ldc + n <= c.len(), "matmul: dst");
    // Measured on teacher-s shapes: tall products (the forward and input-gradient ones) run
    // best in row panels, the weight gradient (long reduction, small output) in small tiles.
    // Row panels: eight of them (a multiple of 16 rows), so that two or four threads share
    // them evenly; the count depends on the shape alone.
    let (tile_m, tile_n) = if m >= 1024 {
        (m.div_ceil(8).div_ceil(16) * 16, 512)
    } else {
        (TILE_M, TILE_N)
    };
    let (tm, tn) = (m.div_ceil(tile_m), n.div_ceil(tile_n));
    let cp = SendPtr(c.as_mut_ptr());
    let (ap, bp) = (a.as_ptr() as usize, b.as_ptr() as usize);
    (0..tm * tn).into_par_iter().for_each(|tile| {
        let (i0, j0) = ((tile / tn) * tile_m, (tile % tn) * tile_n);
        let (rows, cols) = (tile_m.min(m - i0), tile_n.min(n - j0));
        // SAFETY: bounds checked above; tiles of `c` are disjoint.
        unsafe {
            gemm::gemm(
                rows,
                cols,
                k,
                cp.get().add(i0 * ldc + j0),
                1,
                ldc as isize,
                accumulate,
                (ap as *const f32).add(i0 * a_rs),
                a_cs as isize,
                a_rs as isize,
                (bp as *const f32).add(j0 * b_cs),
                b_cs as isize,
                b_rs as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    });
}

/// `out (n, m) = [out +] x (n, k) @ w (k, m) + bias (m)`.
#[allow(clippy::too_many_arguments)]
pub(super) fn linear_fwd(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
    n: usize,
    k: usize,
    m: usize,
    residual: bool,
) {
    let out = &mut out[..n * m];
    // Bias first (onto the residual when there is one), then the product accumulated onto it.
    out.par_chunks_mut(m).for_each(|row| {
        if residual {
            row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
        } else {
            row.copy_from_slice(bias);
        }
    });
    matmul(n, m, k, x, k, 1, w, m, 1, out, m, true);
}

/// Backward of [`linear_fwd`] given `dy (n, m)`: `dw (k, m) = x^T dy`, `db (m) = sum_rows dy`,
/// and, when asked, `dx (n, k) = dy w^T` (overwritten).
#[allow(clippy::too_many_arguments)]
pub(super) fn linear_bwd(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
    dx: Option<&mut [f32]>,
    n: usize,
    k: usize,
    m: usize,
) {
    matmul(k, m, n, x, 1, k, dy, m, 1, dw, m, false); // (k, m)
    colsum(&dy[..n * m], db, n, m); // (m)
    if let Some(dx) = dx {
        matmul(n, k, m, dy, m, 1, w, 1, m, dx, k, false); // (n, k)
    }
}

/// Columns per task of the column reductions.
const COLS: usize = 32;

/// `out (m) = sum over rows of y (n, m)`, rows summed in order.
fn colsum(y: &[f32], out: &mut [f32], n: usize, m: usize) {
    out.par_chunks_mut(COLS)
        .enumerate()
        .for_each(|(c, o)| colsum_cols(y, o, n, m, c * COLS));
}

kernel! {
    /// Columns `c0..c0 + out.len()` of [`colsum`].
    fn colsum_cols(y: &[f32], out: &mut [f32], n: usize, m: usize, c0: usize) {
        out.fill(0.0);
        for r in 0..n {
            let row = &y[r * m + c0..r * m + c0 + out.len()];
            out.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        }
    }
}

/// Layer norm of the rows of `x (n, d)`: `out = (x - mean) / sqrt(var + eps) * w + b`, with
/// the biased variance (as burn's `layer_norm` in the other engine); keeps `mean` and
/// `rstd = 1 / sqrt(var + eps)` (n) for the backward pass.
pub(super) fn layernorm_fwd(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    d: usize,
) {
    let n = mean.len();
    out[..n * d]
        .par_chunks_mut(d)
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .enumerate()
        .for_each(|(i, (o, (mu, rs)))| layernorm_row(&x[i * d..(i + 1) * d], w, b, o, mu, rs));
}

kernel! {
    /// One row of [`layernorm_fwd`].
    fn layernorm_row(xi: &[f32], w: &[f32], b: &[f32], o: &mut [f32], mu: &mut f32, rs: &mut f32) {
        let d = xi.len();
        let m = sum_by(xi, |v| v) / d as f32;
        let var = sum_by(xi, |v| (v - m) * (v - m)) / d as f32;
        let s = (var + LN_EPS).sqrt();
        for ((o, v), (wj, bj)) in o.iter_mut().zip(xi).zip(w.iter().zip(b)) {
            *o = (v - m) / s * wj + bj;
        }
        *mu = m;
        *rs = 1.0 / s;
    }
}

/// Rows per task of the layer-norm backward (its weight and bias gradients are summed per
/// task, then over tasks in order).
pub(super) const LN_ROWS: usize = 64;

/// Backward of [`layernorm_fwd`] given `dy (n, d)` and its input `x (n, d)`:
/// `dx (n, d) += rstd * (dxh - mean(dxh) - xh * mean(dxh * xh))` with `dxh = dy * w`,
/// `dw (d) = sum dy * xh`, `db (d) = sum dy` (overwritten). `part` is scratch,
/// `(ceil(n / LN_ROWS), 2d)`.
#[allow(clippy::too_many_arguments)]
pub(super) fn layernorm_bwd(
    dy: &[f32],
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    w: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    part: &mut [f32],
    d: usize,
) {
    let n = mean.len();
    let chunks = n.div_ceil(LN_ROWS);
    dx[..n * d]
        .par_chunks_mut(LN_ROWS * d)
        .zip(part[..chunks * 2 * d].par_chunks_mut(2 * d))
        .enumerate()
        .for_each(|(c, (dxc, pc))| {
            layernorm_bwd_rows(dy, x, mean, rstd, w, dxc, pc, c * LN_ROWS, d)
        });
    dw.fill(0.0);
    db.fill(0.0);
    for pc in part[..chunks * 2 * d].chunks(2 * d) {
        dw.iter_mut().zip(&pc[..d]).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(&pc[d..]).for_each(|(a, b)| *a += b);
    }
}

kernel! {
    /// Rows `i0..` of [`layernorm_bwd`] (as many as `dxc` holds), their weight and bias
    /// gradients summed into `pc (2d)`.
    fn layernorm_bwd_rows(
        dy: &[f32],
        x: &[f32],
        mean: &[f32],
        rstd: &[f32],
        w: &[f32],
        dxc: &mut [f32],
        pc: &mut [f32],
        i0: usize,
        d: usize,
    ) {
        pc.fill(0.0);
        let (pw, pb) = pc.split_at_mut(d);
        for (ri, dxi) in dxc.chunks_mut(d).enumerate() {
            let i = i0 + ri;
            let (xi, dyi) = (&x[i * d..(i + 1) * d], &dy[i * d..(i + 1) * d]);
            let (mu, rs) = (mean[i], rstd[i]);
            let (mut a8, mut b8) = ([0.0f32; 8], [0.0f32; 8]);
            let full = d / 8 * 8;
            for j0 in (0..full).step_by(8) {
                for l in 0..8 {
                    let j = j0 + l;
                    let g = dyi[j] * w[j];
                    a8[l] += g;
                    b8[l] += g * (xi[j] - mu) * rs;
                }
            }
            let (mut a, mut bsum) = (lanes(a8), lanes(b8));
            for j in full..d {
                let g = dyi[j] * w[j];
                a += g;
                bsum += g * (xi[j] - mu) * rs;
            }
            let (a, bsum) = (a / d as f32, bsum / d as f32);
            for j in 0..d {
                let xh = (xi[j] - mu) * rs;
                dxi[j] += rs * (dyi[j] * w[j] - a - xh * bsum);
                pw[j] += dyi[j] * xh;
                pb[j] += dyi[j];
            }
        }
    }
}

/// `erf(x)`: the rational approximation of Eigen and XLA (`generic_fast_erf_float`), a few
/// ulp from the exact value, branch-free and so vectorised.
#[inline]
fn erf_fast(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let p = x * p;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329_3e-3;
    q = x2 * q + -1.426_474e-2;
    p / q
}

/// `exp(x)` for `x <= 0` (GELU's Gaussian density): Cephes' range reduction and polynomial,
/// about 1 ulp, branch-free and so vectorised; 0 below -87.
#[inline]
fn exp_neg(x: f32) -> f32 {
    let x = x.max(-87.0);
    // Round to nearest by the 1.5 * 2^23 trick (no SSE4.1 round instruction needed).
    let k = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = x - k * 0.693_359_4 - k * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

/// GELU, exact (erf) form: `0.5 x (1 + erf(x / sqrt 2))`, `x (n)` to `out (n)`; `x` is then
/// overwritten by the derivative `Phi(x) + x phi(x)`, all the backward pass needs of it.
/// erf and exp are the vectorised approximations above (within 1e-6 of libm's, see the
/// tests), not burn's libm calls: the parity tests bound the difference.
pub(super) fn gelu_fwd(x: &mut [f32], out: &mut [f32]) {
    let inv_sqrt_2pi: f32 = 1.0 / (2.0 * std::f32::consts::PI).sqrt();
    out[..x.len()]
        .par_chunks_mut(4096)
        .zip(x.par_chunks_mut(4096))
        .for_each(|(o, x)| gelu_chunk(x, o, inv_sqrt_2pi));
}

kernel! {
    /// A chunk of [`gelu_fwd`].
    fn gelu_chunk(x: &mut [f32], out: &mut [f32], inv_sqrt_2pi: f32) {
        for (o, x) in out.iter_mut().zip(x) {
            let v = *x;
            let cdf = 0.5 * (1.0 + erf_fast(v * std::f32::consts::FRAC_1_SQRT_2));
            *o = v * cdf;
            *x = cdf + v * inv_sqrt_2pi * exp_neg(-0.5 * v * v);
        }
    }
}

/// GELU in place (generation).
pub(super) fn gelu_inplace(x: &mut [f32]) {
    x.par_chunks_mut(4096).for_each(gelu_inplace_chunk);
}

kernel! {
    /// A chunk of [`gelu_inplace`].
    fn gelu_inplace_chunk(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v *= 0.5 * (1.0 + erf_fast(*v * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

/// Backward of GELU in place: `dy (n) *= gelu'(x)`, the derivative [`gelu_fwd`] left.
pub(super) fn gelu_bwd(deriv: &[f32], dy: &mut [f32]) {
    dy[..deriv.len()]
        .par_chunks_mut(4096)
        .zip(deriv.par_chunks(4096))
        .for_each(|(g, dv)| gelu_bwd_chunk(dv, g));
}

kernel! {
    /// A chunk of [`gelu_bwd`].
    fn gelu_bwd_chunk(deriv: &[f32], dy: &mut [f32]) {
        dy.iter_mut().zip(deriv).for_each(|(g, dv)| *g *= dv);
    }
}

/// Shapes of one attention call.
#[derive(Clone, Copy)]
pub(super) struct AttShape {
    pub b: usize,
    pub h: usize,
    /// New positions (query columns).
    pub t: usize,
    /// Key columns held (the cache's capacity; `t` in training).
    pub s: usize,
    pub hs: usize,
    /// Column of the first new position.
    pub col0: usize,
}

/// Splits `qkv (B, t, 3d)` into heads and rotates queries and keys: `q (B, H, t, hs)`, keys
/// and values written into `kc, vc (B, H, S, hs)` at columns `col0..col0 + t`. The halves of
/// every head rotate by the angles of its position: `[x1 cos - x2 sin, x2 cos + x1 sin]`;
/// `cos, sin (B, t, hs / 2)`.
pub(super) fn rope_split_fwd(
    qkv: &[f32],
    cos: &[f32],
    sin: &[f32],
    q: &mut [f32],
    kc: &mut [f32],
    vc: &mut [f32],
    sh: AttShape,
) {
    let AttShape { h, t, s, hs, .. } = sh;
    let (d, half) = (h * hs, hs / 2);
    q[..sh.b * h * t * hs]
        .par_chunks_mut(h * t * hs)
        .zip(
            kc.par_chunks_mut(h * s * hs)
                .zip(vc.par_chunks_mut(h * s * hs)),
        )
        .enumerate()
        .for_each(|(r, (qr, (kr, vr)))| {
            let rows = r * t * 3 * d..(r + 1) * t * 3 * d;
            let angles = r * t * half..(r + 1) * t * half;
            rope_split_row(
                &qkv[rows],
                &cos[angles.clone()],
                &sin[angles],
                qr,
                kr,
                vr,
                sh,
            )
        });
}

kernel! {
    /// One row of [`rope_split_fwd`]: `qkv (t, 3d)`, `cos, sin (t, hs / 2)`, `qr (H, t, hs)`,
    /// `kr, vr (H, S, hs)`.
    fn rope_split_row(
        qkv: &[f32],
        cos: &[f32],
        sin: &[f32],
        qr: &mut [f32],
        kr: &mut [f32],
        vr: &mut [f32],
        sh: AttShape,
    ) {
        let AttShape {
            h, t, s, hs, col0, ..
        } = sh;
        let (d, half) = (h * hs, hs / 2);
        for i in 0..t {
            let row = &qkv[i * 3 * d..(i + 1) * 3 * d];
            let (c, sn) = (&cos[i * half..(i + 1) * half], &sin[i * half..(i + 1) * half]);
            for hh in 0..h {
                let qo = &mut qr[(hh * t + i) * hs..(hh * t + i + 1) * hs];
                rotate(&row[hh * hs..(hh + 1) * hs], c, sn, qo);
                let at = (hh * s + col0 + i) * hs;
                rotate(
                    &row[d + hh * hs..d + (hh + 1) * hs],
                    c,
                    sn,
                    &mut kr[at..at + hs],
                );
                vr[at..at + hs].copy_from_slice(&row[2 * d + hh * hs..2 * d + (hh + 1) * hs]);
            }
        }
    }
}

fn rotate(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = cos.len();
    for j in 0..half {
        let (x1, x2) = (x[j], x[j + half]);
        out[j] = x1 * cos[j] - x2 * sin[j];
        out[j + half] = x2 * cos[j] + x1 * sin[j];
    }
}

/// The transpose of [`rotate`]: `[g1 cos + g2 sin, g2 cos - g1 sin]`.
fn unrotate(g: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = cos.len();
    for j in 0..half {
        let (g1, g2) = (g[j], g[j + half]);
        out[j] = g1 * cos[j] + g2 * sin[j];
        out[j + half] = g2 * cos[j] - g1 * sin[j];
    }
}

/// `sum_i a_i b_i` in eight fixed lanes (vectorisable, and the same order on every machine).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = lanes(acc);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `sum_i f(x_i)` in eight fixed lanes.
#[inline]
fn sum_by(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let cx = x.chunks_exact(8);
    let rx = cx.remainder();
    for c in cx {
        for l in 0..8 {
            acc[l] += f(c[l]);
        }
    }
    let mut s = lanes(acc);
    for &v in rx {
        s += f(v);
    }
    s
}

#[inline]
fn lanes(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

/// Causal attention of the new positions over the keys held: query `i` of row `r` (column
/// `col0 + i`) attends the keys of columns `lo[r]..=col0 + i` (left pads never), with scores
/// `q k / sqrt(hs)` softmaxed. `q (B, H, t, hs)`, `kc, vc (B, H, S, hs)`; writes the
/// probabilities `att (B, H, t, S)` (0 outside the span) and `y (B, t, d)` (0 for queries
/// that are pads themselves).
#[allow(clippy::too_many_arguments)]
pub(super) fn attention_fwd(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    att: &mut [f32],
    y: &mut [f32],
    lo: &[usize],
    sh: AttShape,
) {
    let AttShape { b, h, t, s, hs, .. } = sh;
    let d = h * hs;
    att[..b * h * t * s]
        .par_chunks_mut(h * t * s)
        .zip(y[..b * t * d].par_chunks_mut(t * d))
        .enumerate()
        .for_each(|(r, (att_r, y_r))| {
            attention_row(
                &q[r * h * t * hs..(r + 1) * h * t * hs],
                &kc[r * h * s * hs..(r + 1) * h * s * hs],
                &vc[r * h * s * hs..(r + 1) * h * s * hs],
                att_r,
                y_r,
                lo[r],
                sh,
            )
        });
}

kernel! {
    /// One row of [`attention_fwd`]: `q (H, t, hs)`, `kc, vc (H, S, hs)`, `att_r (H, t, S)`,
    /// `y_r (t, d)`; keys from column `lo`.
    fn attention_row(
        q: &[f32],
        kc: &[f32],
        vc: &[f32],
        att_r: &mut [f32],
        y_r: &mut [f32],
        lo: usize,
        sh: AttShape,
    ) {
        let AttShape {
            h, t, s, hs, col0, ..
        } = sh;
        let (d, scale) = (h * hs, (hs as f32).sqrt());
        for hh in 0..h {
            let qb = &q[hh * t * hs..(hh + 1) * t * hs]; // (t, hs)
            let kb = &kc[hh * s * hs..(hh + 1) * s * hs]; // (S, hs)
            let vb = &vc[hh * s * hs..(hh + 1) * s * hs]; // (S, hs)
            for i in 0..t {
                let p = &mut att_r[(hh * t + i) * s..(hh * t + i + 1) * s]; // (S)
                let yi = &mut y_r[i * d + hh * hs..i * d + (hh + 1) * hs]; // (hs)
                attend(&qb[i * hs..(i + 1) * hs], kb, vb, p, yi, (lo, col0 + i), scale);
            }
        }
    }
}

/// One query's attention over the keys of columns `first..=last` (none when `last < first`):
/// scores `q k / sqrt(hs)` softmaxed into `p[first..=last]` (the rest of `p` zero) and
/// `y (hs) = sum_j p_j v_j`.
#[inline(always)]
fn attend(
    qi: &[f32],
    kb: &[f32],
    vb: &[f32],
    p: &mut [f32],
    yi: &mut [f32],
    (first, last): (usize, usize),
    scale: f32,
) {
    let hs = qi.len();
    p.fill(0.0);
    yi.fill(0.0);
    if last < first {
        return;
    }
    let mut mx = f32::NEG_INFINITY;
    for j in first..=last {
        let sc = dot(qi, &kb[j * hs..(j + 1) * hs]) / scale;
        p[j] = sc;
        mx = mx.max(sc);
    }
    let mut sum = 0.0f32;
    for pj in &mut p[first..=last] {
        *pj = (*pj - mx).exp();
        sum += *pj;
    }
    for j in first..=last {
        p[j] /= sum;
        axpy(yi, p[j], &vb[j * hs..(j + 1) * hs]);
    }
}

/// Where the rows of a packed training batch lie: row `r` keeps its first `len_r` positions
/// (up to its last weighted one; later positions influence nothing that is trained on), in
/// packed rows `start[r]..start[r + 1]` of the `(Ne, .)` buffers. Per-head buffers hold row
/// `r` at `start[r] * d` as `(H, len_r, hs)`; attention probabilities at `att_off[r]` as
/// `(H, len_r, len_r)`.
#[derive(Clone, Copy)]
pub(super) struct Packed<'a> {
    pub start: &'a [usize],
    pub att_off: &'a [usize],
    pub h: usize,
    pub hs: usize,
}

impl Packed<'_> {
    fn rows(&self) -> usize {
        self.start.len() - 1
    }
    fn span(&self, r: usize) -> (usize, usize) {
        (self.start[r], self.start[r + 1] - self.start[r])
    }
}

/// `&mut buf[off..off + len]` from a pointer shared by tasks writing disjoint ranges.
///
/// SAFETY: the caller's ranges are disjoint across tasks and inside the buffer.
unsafe fn part<'a>(p: SendPtr, off: usize, len: usize) -> &'a mut [f32] {
    std::slice::from_raw_parts_mut(p.get().add(off), len)
}

/// [`rope_split_fwd`] on a packed batch: `qkv (Ne, 3d)`, `cos, sin (Ne, hs / 2)` to `q, k, v`
/// (per row `(H, len, hs)`).
pub(super) fn rope_split_packed(
    qkv: &[f32],
    cos: &[f32],
    sin: &[f32],
    q: &mut [f32],
    k: &mut [f32],
    v: &mut [f32],
    g: Packed,
) {
    let (h, hs) = (g.h, g.hs);
    let (d, half) = (h * hs, hs / 2);
    let ne = g.start[g.rows()];
    assert!(q.len() >= ne * d && k.len() >= ne * d && v.len() >= ne * d);
    let (qp, kp, vp) = (
        SendPtr(q.as_mut_ptr()),
        SendPtr(k.as_mut_ptr()),
        SendPtr(v.as_mut_ptr()),
    );
    (0..g.rows()).into_par_iter().for_each(|r| {
        let (s0, len) = g.span(r);
        // SAFETY: row r's blocks are disjoint from every other row's.
        let (qr, kr, vr) = unsafe {
            (
                part(qp, s0 * d, len * d),
                part(kp, s0 * d, len * d),
                part(vp, s0 * d, len * d),
            )
        };
        rope_split_packed_row(
            &qkv[s0 * 3 * d..(s0 + len) * 3 * d],
            &cos[s0 * half..(s0 + len) * half],
            &sin[s0 * half..(s0 + len) * half],
            qr,
            kr,
            vr,
            len,
            h,
            hs,
        )
    });
}

kernel! {
    /// One row of [`rope_split_packed`]: `qkv (len, 3d)`, `cos, sin (len, hs / 2)` to
    /// `qr, kr, vr (H, len, hs)`.
    fn rope_split_packed_row(
        qkv: &[f32],
        cos: &[f32],
        sin: &[f32],
        qr: &mut [f32],
        kr: &mut [f32],
        vr: &mut [f32],
        len: usize,
        h: usize,
        hs: usize,
    ) {
        let (d, half) = (h * hs, hs / 2);
        for i in 0..len {
            let row = &qkv[i * 3 * d..(i + 1) * 3 * d]; // (3d)
            let (c, sn) = (&cos[i * half..(i + 1) * half], &sin[i * half..(i + 1) * half]);
            for hh in 0..h {
                let at = (hh * len + i) * hs;
                rotate(&row[hh * hs..(hh + 1) * hs], c, sn, &mut qr[at..at + hs]);
                rotate(
                    &row[d + hh * hs..d + (hh + 1) * hs],
                    c,
                    sn,
                    &mut kr[at..at + hs],
                );
                vr[at..at + hs].copy_from_slice(&row[2 * d + hh * hs..2 * d + (hh + 1) * hs]);
            }
        }
    }
}

/// Causal attention on a packed batch: query `i` of row `r` attends keys `0..=i`, scores
/// `q k / sqrt(hs)` softmaxed; writes the probabilities `att` (per row `(H, len, len)`) and
/// `y (Ne, d)`.
pub(super) fn attention_fwd_packed(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    att: &mut [f32],
    y: &mut [f32],
    g: Packed,
) {
    let (h, hs) = (g.h, g.hs);
    let d = h * hs;
    let ne = g.start[g.rows()];
    assert!(att.len() >= g.att_off[g.rows()] && y.len() >= ne * d);
    let (ap, yp) = (SendPtr(att.as_mut_ptr()), SendPtr(y.as_mut_ptr()));
    (0..g.rows()).into_par_iter().for_each(|r| {
        let (s0, len) = g.span(r);
        // SAFETY: row r's blocks are disjoint from every other row's.
        let (att_r, y_r) = unsafe {
            (
                part(ap, g.att_off[r], h * len * len),
                part(yp, s0 * d, len * d),
            )
        };
        let rows = s0 * d..(s0 + len) * d;
        attention_packed_row(
            &q[rows.clone()],
            &k[rows.clone()],
            &v[rows],
            att_r,
            y_r,
            len,
            h,
            hs,
        )
    });
}

kernel! {
    /// One row of [`attention_fwd_packed`]: `q, k, v (H, len, hs)`, `att_r (H, len, len)`,
    /// `y_r (len, d)`.
    fn attention_packed_row(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        att_r: &mut [f32],
        y_r: &mut [f32],
        len: usize,
        h: usize,
        hs: usize,
    ) {
        let (d, scale) = (h * hs, (hs as f32).sqrt());
        for hh in 0..h {
            let o = hh * len * hs;
            let (qb, kb, vb) = (
                &q[o..o + len * hs],
                &k[o..o + len * hs],
                &v[o..o + len * hs],
            ); // (len, hs)
            for i in 0..len {
                let p = &mut att_r[(hh * len + i) * len..(hh * len + i + 1) * len]; // (len)
                let yi = &mut y_r[i * d + hh * hs..i * d + (hh + 1) * hs]; // (hs)
                attend(&qb[i * hs..(i + 1) * hs], kb, vb, p, yi, (0, i), scale);
            }
        }
    }
}

/// Backward of [`attention_fwd_packed`] and of the rotation: from `dy (Ne, d)` and the
/// forward's `q, k, v, att`, writes `dqkv (Ne, 3d)`. `dq, dk, dv` (like `q`) and `ds (Ne)` are
/// scratch.
#[allow(clippy::too_many_arguments)]
pub(super) fn attention_bwd(
    dy: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    att: &[f32],
    cos: &[f32],
    sin: &[f32],
    scratch: (&mut [f32], &mut [f32], &mut [f32], &mut [f32]),
    dqkv: &mut [f32],
    g: Packed,
) {
    let (h, hs) = (g.h, g.hs);
    let (d, half) = (h * hs, hs / 2);
    let (dq, dk, dv, ds) = scratch;
    let ne = g.start[g.rows()];
    assert!(dq.len() >= ne * d && dk.len() >= ne * d && dv.len() >= ne * d);
    assert!(ds.len() >= ne && dqkv.len() >= ne * 3 * d);
    let (dqp, dkp, dvp, dsp, dqkvp) = (
        SendPtr(dq.as_mut_ptr()),
        SendPtr(dk.as_mut_ptr()),
        SendPtr(dv.as_mut_ptr()),
        SendPtr(ds.as_mut_ptr()),
        SendPtr(dqkv.as_mut_ptr()),
    );
    (0..g.rows()).into_par_iter().for_each(|r| {
        let (s0, len) = g.span(r);
        // SAFETY: row r's blocks are disjoint from every other row's.
        let (dqr, dkr, dvr, dsr, dqkv_r) = unsafe {
            (
                part(dqp, s0 * d, len * d),
                part(dkp, s0 * d, len * d),
                part(dvp, s0 * d, len * d),
                part(dsp, s0, len),
                part(dqkvp, s0 * 3 * d, len * 3 * d),
            )
        };
        let rows = s0 * d..(s0 + len) * d;
        let pa = g.att_off[r];
        attention_bwd_row(
            &dy[rows.clone()],
            (&q[rows.clone()], &k[rows.clone()], &v[rows]),
            &att[pa..pa + h * len * len],
            &cos[s0 * half..(s0 + len) * half],
            &sin[s0 * half..(s0 + len) * half],
            (dqr, dkr, dvr, dsr),
            dqkv_r,
            (len, h, hs),
        )
    });
}

kernel! {
    /// One row of [`attention_bwd`]: `dy (len, d)`, `q, k, v (H, len, hs)`, `att
    /// (H, len, len)`, `cos, sin (len, hs / 2)`; scratch `dq, dk, dv (H, len, hs)`, `ds (len)`;
    /// writes `dqkv (len, 3d)`.
    fn attention_bwd_row(
        dy: &[f32],
        qkv: (&[f32], &[f32], &[f32]),
        att: &[f32],
        cos: &[f32],
        sin: &[f32],
        scratch: (&mut [f32], &mut [f32], &mut [f32], &mut [f32]),
        dqkv_r: &mut [f32],
        shape: (usize, usize, usize),
    ) {
        let ((q, k, v), (dqr, dkr, dvr, dsr), (len, h, hs)) = (qkv, scratch, shape);
        let (d, half, scale) = (h * hs, hs / 2, (hs as f32).sqrt());
        dqr.fill(0.0);
        dkr.fill(0.0);
        dvr.fill(0.0);
        for hh in 0..h {
            let o = hh * len * hs;
            let (qb, kb, vb) = (
                &q[o..o + len * hs],
                &k[o..o + len * hs],
                &v[o..o + len * hs],
            );
            let hb = hh * len * hs;
            for i in 0..len {
                let dyi = &dy[i * d + hh * hs..i * d + (hh + 1) * hs];
                let pa = (hh * len + i) * len;
                let p = &att[pa..pa + len];
                // dP_j = dy_i . v_j; c = sum_j P_ij dP_j.
                let mut c = 0.0f32;
                for j in 0..=i {
                    dsr[j] = dot(dyi, &vb[j * hs..(j + 1) * hs]);
                    c += p[j] * dsr[j];
                }
                let qi = &qb[i * hs..(i + 1) * hs];
                for j in 0..=i {
                    // dS_ij = P_ij (dP_ij - c) / sqrt(hs)
                    let gs = p[j] * (dsr[j] - c) / scale;
                    let kj = &kb[j * hs..(j + 1) * hs];
                    axpy(&mut dqr[hb + i * hs..hb + (i + 1) * hs], gs, kj);
                    axpy(&mut dkr[hb + j * hs..hb + (j + 1) * hs], gs, qi);
                    axpy(&mut dvr[hb + j * hs..hb + (j + 1) * hs], p[j], dyi);
                }
            }
        }
        // Un-rotate queries and keys, merge heads: (H, len, hs) x 3 -> (len, 3d).
        for i in 0..len {
            let (c, sn) = (&cos[i * half..(i + 1) * half], &sin[i * half..(i + 1) * half]);
            let row = &mut dqkv_r[i * 3 * d..(i + 1) * 3 * d];
            for hh in 0..h {
                let at = (hh * len + i) * hs;
                unrotate(&dqr[at..at + hs], c, sn, &mut row[hh * hs..(hh + 1) * hs]);
                unrotate(
                    &dkr[at..at + hs],
                    c,
                    sn,
                    &mut row[d + hh * hs..d + (hh + 1) * hs],
                );
                row[2 * d + hh * hs..2 * d + (hh + 1) * hs].copy_from_slice(&dvr[at..at + hs]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// A row of a product does not depend on how many rows are computed beside it (a tile
    /// left with a single row, which `gemm` sends to its matrix-vector path, is not asked of
    /// it, and generation avoids it): what lets generation drop finished rows from its batch
    /// without changing a bit.
    #[test]
    fn matmul_rows_do_not_depend_on_the_row_count() {
        let mut rng = crate::rng::derive_rng(1, "test/matmul-rows");
        use rand::Rng;
        for &(k, n) in &[(64, 192), (96, 384), (128, 512), (512, 128), (128, 80)] {
            let full = 130;
            let a: Vec<f32> = (0..full * k).map(|_| rng.random::<f32>() - 0.5).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.random::<f32>() - 0.5).collect();
            let mut want = vec![0.0f32; full * n];
            super::matmul(full, n, k, &a, k, 1, &b, n, 1, &mut want, n, false);
            for m in 1..full {
                if super::single_row_tile(m) {
                    continue;
                }
                let mut got = vec![0.0f32; m * n];
                super::matmul(m, n, k, &a, k, 1, &b, n, 1, &mut got, n, false);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "k {k} n {n}: {m} rows differ from the same rows of {full}"
                );
            }
        }
    }

    /// The vectorised erf and exp against libm's over the range GELU sees.
    #[test]
    fn fast_erf_and_exp_match_libm() {
        let (mut e_erf, mut e_exp) = (0.0f32, 0.0f32);
        for i in -200_000..=200_000 {
            let x = i as f32 * 5e-5; // [-10, 10]
            e_erf = e_erf.max((super::erf_fast(x) - libm::erff(x)).abs());
            let y = -0.5 * x * x;
            let rel = (super::exp_neg(y) - libm::expf(y)).abs() / libm::expf(y).max(1e-30);
            if libm::expf(y) > 1e-30 {
                e_exp = e_exp.max(rel);
            }
        }
        println!("erf within {e_erf:.2e} absolute, exp within {e_exp:.2e} relative");
        assert!(e_erf < 1e-6 && e_exp < 1e-6, "{e_erf} {e_exp}");
    }
}

/* fastnn's C micro-kernels and build facts, included by _kernels.pyx (generated from
   _kernels.pyx.tp) with `cdef extern from "_kernels.h"`. Plain C: the float32 exp, the
   small register-blocked GEMM, the x86-64 target clones and their fallbacks for other
   compilers. setup.py puts this directory on the include path and hashes this file with
   the template (FASTNN_SOURCE_SHA256), so editing it makes an old build stale. */
#ifndef FASTNN_KERNELS_H
#define FASTNN_KERNELS_H

#include <Python.h>  /* Py_ssize_t */
#include <stdint.h>  /* int32_t */

#ifdef _OPENMP
#define FASTNN_HAVE_OPENMP 1
#else
#define FASTNN_HAVE_OPENMP 0
#endif
#ifndef FASTNN_SOURCE_SHA256
#define FASTNN_SOURCE_SHA256 ""
#endif
#ifndef FASTNN_DEBUG_BUILD
#define FASTNN_DEBUG_BUILD 0
#endif
#ifndef FASTNN_NATIVE
#define FASTNN_NATIVE 0
#endif
/* C99's restrict under the name every compiler here knows (also C++ and MSVC) */
#if defined(__GNUC__) || defined(__clang__)
#define FASTNN_RESTRICT __restrict__
#elif defined(_MSC_VER)
#define FASTNN_RESTRICT __restrict
#else
#define FASTNN_RESTRICT
#endif
#ifdef _OPENMP
#include <omp.h>
static int fastnn_max_threads(void) { return omp_get_max_threads(); }
#else
static int fastnn_max_threads(void) { return 1; }
#endif

/* exp(x) in float32 for x <= 0, branch-free so that loops calling it
   vectorise without -ffast-math. Cody-Waite reduction x = n*ln2 + r,
   |r| <= ln2/2, then a degree-6 minimax polynomial for exp(r) and an
   exponent-field scale by 2**n. Relative error below 3e-7 (about 2 ulp)
   over [-87, 0]; inputs below -87.3 (where exp underflows to a subnormal)
   give 0. NaN propagates. */
static inline float fastnn_expf(float x) {
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693145751953125f;
    const float ln2_lo = 1.42860682030941723212e-6f;
    const float shifter = 12582912.0f;  /* 1.5 * 2**23: rounds to an integer */
    float underflow = x < -87.33654f ? 0.0f : 1.0f;
    float xc = x < -87.33654f ? -87.33654f : x;
    float t = xc * log2e + shifter;
    float n = t - shifter;
    float r = xc - n * ln2_hi;
    r = r - n * ln2_lo;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { float f; int32_t i; } bits, scale;
    bits.f = t;
    scale.i = (bits.i - 0x4B400000 + 127) << 23;
    return p * scale.f * underflow;
}

/* e[c] = exp(z[c] - shift) over a row of float32: the one transcendental hot
   loop. On x86-64 Linux with GCC it is compiled twice (baseline SSE2 and
   x86-64-v3: AVX2 + FMA) and the loader picks the clone this CPU runs
   (an ifunc), so the wheel stays portable. e may be z itself. */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) \
    && !FASTNN_NATIVE && !FASTNN_DEBUG_BUILD
#define FASTNN_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define FASTNN_HAVE_CLONES 1
#else
#define FASTNN_CLONES
#define FASTNN_HAVE_CLONES 0
#endif
FASTNN_CLONES
static void fastnn_exp_shifted_f32(const float *z, float *e, Py_ssize_t n, float shift) {
    for (Py_ssize_t c = 0; c < n; c++) {
        e[c] = fastnn_expf(z[c] - shift);
    }
}

/* Small matrix products for planned training steps: c = a @ b (+ bias),
   a (m, k) with element (i, p) at a[i * rsa + p * csa] (so a may be a transposed
   row-major array), b (k, n) row stride ldb, c (m, n) row stride ldc. Blocks of 4
   rows x 2 vectors of c (16 float32 or 8
   float64 columns) stay in registers over k: each step loads two vectors of a
   row of b and broadcasts four entries of a. Partial column blocks go through
   a zero-padded copy of b's columns (a plain loop where k is too long to pack);
   the last m % 4 rows through the row kernel above.
   Sums are in the data's dtype, as in BLAS. For products where a BLAS call
   costs more than the arithmetic (tiny networks); compiled baseline +
   x86-64-v3 like the exp loop (GCC vector extensions: SSE2 pairs or AVX2). */
#define FASTNN_GEMM_ROWS 4
#define FASTNN_GEMM_PACK_K 256
typedef float fastnn_vf __attribute__((vector_size(32), aligned(4)));
typedef double fastnn_vd __attribute__((vector_size(32), aligned(8)));
/* One row of c = a @ b (+ bias): the last m % 4 rows of a product, all of a
   batch of 1 (a matrix-vector product). Eight vectors of c's columns at a time
   stay in registers over k (eight independent sums hide the FMA latency); the
   last columns as independent scalar sums. Each c[j] is summed over k in
   order, as in the 4-row blocks, so a row's result does not depend on which
   path computed it. */
#define FASTNN_DEFINE_GEMM_ROW(T, V, NAME)                                       \
FASTNN_CLONES                                                                    \
static void NAME##_row(Py_ssize_t k, Py_ssize_t n, const T *a, Py_ssize_t csa,   \
                       const T *b, Py_ssize_t ldb, T *c, const T *bias) {        \
    enum { L = sizeof(V) / sizeof(T), W = 8 * L };                               \
    Py_ssize_t j0 = 0;                                                           \
    for (; j0 + W <= n; j0 += W) {                                               \
        V acc[8];                                                                \
        for (int v = 0; v < 8; v++) {                                            \
            if (bias != NULL) __builtin_memcpy(&acc[v], bias + j0 + v * L,       \
                                               sizeof(V));                       \
            else for (int q = 0; q < L; q++) acc[v][q] = (T)0;                   \
        }                                                                        \
        for (Py_ssize_t p = 0; p < k; p++) {                                     \
            T x = a[p * csa];                                                    \
            const T *row = b + p * ldb + j0;                                     \
            for (int v = 0; v < 8; v++) {                                        \
                V y;                                                             \
                __builtin_memcpy(&y, row + v * L, sizeof(V));                    \
                acc[v] += x * y;                                                 \
            }                                                                    \
        }                                                                        \
        for (int v = 0; v < 8; v++)                                              \
            __builtin_memcpy(c + j0 + v * L, &acc[v], sizeof(V));                \
    }                                                                            \
    if (j0 < n) { /* the last n % W columns: independent sums, column by column */ \
        Py_ssize_t r = n - j0;                                                   \
        T acc[W];                                                                \
        for (Py_ssize_t q = 0; q < r; q++)                                       \
            acc[q] = bias != NULL ? bias[j0 + q] : (T)0;                         \
        for (Py_ssize_t p = 0; p < k; p++) {                                     \
            T x = a[p * csa];                                                    \
            const T *row = b + p * ldb + j0;                                     \
            for (Py_ssize_t q = 0; q < r; q++)                                   \
                acc[q] += x * row[q];                                            \
        }                                                                        \
        for (Py_ssize_t q = 0; q < r; q++)                                       \
            c[j0 + q] = acc[q];                                                  \
    }                                                                            \
}
FASTNN_DEFINE_GEMM_ROW(float, fastnn_vf, fastnn_gemm_f32)
FASTNN_DEFINE_GEMM_ROW(double, fastnn_vd, fastnn_gemm_f64)

#define FASTNN_DEFINE_GEMM(T, V, NAME)                                           \
FASTNN_CLONES                                                                    \
static void NAME(Py_ssize_t m, Py_ssize_t k, Py_ssize_t n,                       \
                 const T *a, Py_ssize_t rsa, Py_ssize_t csa,                     \
                 const T *b, Py_ssize_t ldb,                                     \
                 T *c, Py_ssize_t ldc, const T *bias) {                          \
    enum { L = sizeof(V) / sizeof(T), COLS = 2 * L };                            \
    T pack[FASTNN_GEMM_PACK_K * COLS];                                           \
    for (Py_ssize_t j0 = 0; j0 < n; j0 += COLS) {                                \
        Py_ssize_t cols = n - j0 < COLS ? n - j0 : COLS;                         \
        const T *bb = b + j0;                                                    \
        Py_ssize_t ldbb = ldb;                                                   \
        T binit[COLS];                                                           \
        for (int q = 0; q < COLS; q++)                                           \
            binit[q] = (bias != NULL && q < cols) ? bias[j0 + q] : (T)0;         \
        int vector_ok = cols == COLS;                                            \
        if (!vector_ok && k <= FASTNN_GEMM_PACK_K) {                             \
            for (Py_ssize_t p = 0; p < k; p++)                                   \
                for (int q = 0; q < COLS; q++)                                   \
                    pack[p * COLS + q] = q < cols ? b[p * ldb + j0 + q] : (T)0;  \
            bb = pack;                                                           \
            ldbb = COLS;                                                         \
            vector_ok = 1;                                                       \
        }                                                                        \
        Py_ssize_t i0 = 0;                                                       \
        if (vector_ok) {                                                         \
            V init0, init1;                                                      \
            __builtin_memcpy(&init0, binit, sizeof(V));                          \
            __builtin_memcpy(&init1, binit + L, sizeof(V));                      \
            for (; i0 + FASTNN_GEMM_ROWS <= m; i0 += FASTNN_GEMM_ROWS) {         \
                const T *a0 = a + i0 * rsa, *a1 = a0 + rsa;                      \
                const T *a2 = a1 + rsa, *a3 = a2 + rsa;                          \
                V c00 = init0, c01 = init1, c10 = init0, c11 = init1;            \
                V c20 = init0, c21 = init1, c30 = init0, c31 = init1;            \
                for (Py_ssize_t p = 0; p < k; p++) {                             \
                    V y0 = *(const V *)(bb + p * ldbb);                          \
                    V y1 = *(const V *)(bb + p * ldbb + L);                      \
                    Py_ssize_t pa = p * csa;                                     \
                    T x0 = a0[pa], x1 = a1[pa], x2 = a2[pa], x3 = a3[pa];        \
                    c00 += x0 * y0; c01 += x0 * y1;                              \
                    c10 += x1 * y0; c11 += x1 * y1;                              \
                    c20 += x2 * y0; c21 += x2 * y1;                              \
                    c30 += x3 * y0; c31 += x3 * y1;                              \
                }                                                                \
                if (cols == COLS) {                                              \
                    T *r0 = c + i0 * ldc + j0, *r1 = r0 + ldc;                   \
                    T *r2 = r1 + ldc, *r3 = r2 + ldc;                            \
                    *(V *)r0 = c00; *(V *)(r0 + L) = c01;                        \
                    *(V *)r1 = c10; *(V *)(r1 + L) = c11;                        \
                    *(V *)r2 = c20; *(V *)(r2 + L) = c21;                        \
                    *(V *)r3 = c30; *(V *)(r3 + L) = c31;                        \
                    continue;                                                    \
                }                                                                \
                T out[FASTNN_GEMM_ROWS][COLS];                                   \
                __builtin_memcpy(out[0], &c00, sizeof(V));                       \
                __builtin_memcpy(out[0] + L, &c01, sizeof(V));                   \
                __builtin_memcpy(out[1], &c10, sizeof(V));                       \
                __builtin_memcpy(out[1] + L, &c11, sizeof(V));                   \
                __builtin_memcpy(out[2], &c20, sizeof(V));                       \
                __builtin_memcpy(out[2] + L, &c21, sizeof(V));                   \
                __builtin_memcpy(out[3], &c30, sizeof(V));                       \
                __builtin_memcpy(out[3] + L, &c31, sizeof(V));                   \
                for (int r = 0; r < FASTNN_GEMM_ROWS; r++)                       \
                    for (Py_ssize_t q = 0; q < cols; q++)                        \
                        c[(i0 + r) * ldc + j0 + q] = out[r][q];                  \
            }                                                                    \
        }                                                                        \
        for (; i0 < m - m % FASTNN_GEMM_ROWS && !vector_ok; i0++) {              \
            T acc[COLS];                                                         \
            for (int q = 0; q < COLS; q++) acc[q] = binit[q];                    \
            for (Py_ssize_t p = 0; p < k; p++) {                                 \
                T x = a[i0 * rsa + p * csa];                                     \
                for (Py_ssize_t q = 0; q < cols; q++)                            \
                    acc[q] += x * b[p * ldb + j0 + q];                           \
            }                                                                    \
            for (Py_ssize_t q = 0; q < cols; q++)                                \
                c[i0 * ldc + j0 + q] = acc[q];                                   \
        }                                                                        \
    }                                                                            \
    for (Py_ssize_t i = m - m % FASTNN_GEMM_ROWS; i < m; i++)                    \
        NAME##_row(k, n, a + i * rsa, csa, b, ldb, c + i * ldc, bias);           \
}
FASTNN_DEFINE_GEMM(float, fastnn_vf, fastnn_gemm_f32)
FASTNN_DEFINE_GEMM(double, fastnn_vd, fastnn_gemm_f64)

/* One Adam step over p[lo:hi] (no AMSGrad): g = grad + l2 * p,
   m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
   p = p * shrink - step * m / (sqrt(v) * inv_bc2_sqrt + eps);
   without weight decay (l2 == 0, shrink == 1) g and p are used as they are.
   In C rather than Cython so that it is compiled baseline + x86-64-v3 like the
   loops above: the square root and the division vectorise 8 floats wide (the
   baseline SSE2 build does 4), which is most of the update's time while its
   buffers are in cache. */
#define FASTNN_DEFINE_ADAM(T, SQRT, NAME)                                        \
FASTNN_CLONES                                                                    \
static void NAME(T *FASTNN_RESTRICT p, const T *FASTNN_RESTRICT grad, T *FASTNN_RESTRICT m,           \
                 T *FASTNN_RESTRICT v, Py_ssize_t lo, Py_ssize_t hi, T b1, T b2,        \
                 T one_b1, T one_b2, T step, T inv_bc2_sqrt, T eps, T l2,        \
                 T shrink, int decay) {                                          \
    if (!decay) {                                                                \
        for (Py_ssize_t i = lo; i < hi; i++) {                                   \
            T g = grad[i];                                                       \
            T mi = b1 * m[i] + one_b1 * g;                                       \
            T vi = b2 * v[i] + one_b2 * g * g;                                   \
            m[i] = mi;                                                           \
            v[i] = vi;                                                           \
            p[i] = p[i] - step * (mi / (SQRT(vi) * inv_bc2_sqrt + eps));         \
        }                                                                        \
    } else {                                                                     \
        for (Py_ssize_t i = lo; i < hi; i++) {                                   \
            T pi = p[i];                                                         \
            T g = grad[i] + l2 * pi;                                             \
            T mi = b1 * m[i] + one_b1 * g;                                       \
            T vi = b2 * v[i] + one_b2 * g * g;                                   \
            m[i] = mi;                                                           \
            v[i] = vi;                                                           \
            p[i] = pi * shrink - step * (mi / (SQRT(vi) * inv_bc2_sqrt + eps));  \
        }                                                                        \
    }                                                                            \
}
/* Non-temporal (streaming) stores, for outputs far larger than the caches: they
   go to memory without first reading each line in (a plain store's
   read-for-ownership) and without evicting what the next pass reads. SSE/SSE2
   only (every x86-64 CPU, either clone); elsewhere plain stores. A streamed
   kernel ends with fastnn_stream_fence, so that its results are ordered before
   whatever the caller does next. FASTNN_NO_STREAM (a -D flag) compiles the
   plain-store path only, as on other CPUs. */
#if defined(__x86_64__) && defined(__SSE2__) && !defined(FASTNN_NO_STREAM)
#include <emmintrin.h>
#define FASTNN_HAVE_STREAM 1
#else
#define FASTNN_HAVE_STREAM 0
#endif
#define FASTNN_INLINE static inline __attribute__((always_inline))
/* Training-mode batch norm streams x_hat, out and dx when one such array is
   at least this large (_kernels.pyx.tp's _stream): the five arrays of a
   forward and backward (x, out, x_hat, dout, dx) then fill most of a 32 MiB
   L3, so what is written is not read back from cache anyway, and plain stores
   would first read each line in. Below it, plain stores, so that the next pass
   or the next layer finds them in cache. On the 2-core EPYC (1 MiB L2, 32 MiB
   L3) streaming made forward + backward 1.8x slower at 1024x512 (2 MiB arrays)
   and 0.91x, 0.87x, 0.82x and 0.72x the time at 1024, 2048, 4096 and 8192 rows
   of 1024 features (4 to 32 MiB). */
#ifndef FASTNN_BN_STREAM_BYTES
#define FASTNN_BN_STREAM_BYTES ((Py_ssize_t)4 << 20)
#endif
/* FMA contraction where it cannot change a result: a float32 x float32
   product is exact in double, so fma(a, b, c) rounds as a * b + c does. GCC
   only (clang ignores the optimize attribute, and contracts on its own). */
#if defined(__GNUC__) && !defined(__clang__)
#define FASTNN_EXACT_FMA __attribute__((optimize("fp-contract=fast")))
#else
#define FASTNN_EXACT_FMA
#endif

/* The first index from which the rows of a and b (row strides lda and ldb
   elements of `size` bytes) can all be streamed: each row's element at that
   index is 16-byte aligned. -1 when they cannot (different offsets within 16
   bytes, a stride that is not a multiple of 16 bytes, an element not aligned
   to its size, or no streaming stores on this CPU). b may be a. */
FASTNN_INLINE Py_ssize_t fastnn_stream_start(const void *a, Py_ssize_t lda, const void *b,
                                             Py_ssize_t ldb, Py_ssize_t size) {
#if FASTNN_HAVE_STREAM
    Py_ssize_t ma = (Py_ssize_t)((uintptr_t)a % 16), mb = (Py_ssize_t)((uintptr_t)b % 16);
    if (ma != mb || ma % size != 0 || (lda * size) % 16 != 0 || (ldb * size) % 16 != 0)
        return -1;
    return (16 - ma) % 16 / size;
#else
    (void)a; (void)lda; (void)b; (void)ldb; (void)size;
    return -1;
#endif
}
/* Store a vector at p (16-byte aligned) around the caches. */
FASTNN_INLINE void fastnn_stream_f32(float *p, fastnn_vf v) {
#if FASTNN_HAVE_STREAM
    __m128 lo, hi;
    __builtin_memcpy(&lo, &v, 16);
    __builtin_memcpy(&hi, (const char *)&v + 16, 16);
    _mm_stream_ps(p, lo);
    _mm_stream_ps(p + 4, hi);
#else
    __builtin_memcpy(p, &v, sizeof(v));
#endif
}
FASTNN_INLINE void fastnn_stream_f64(double *p, fastnn_vd v) {
#if FASTNN_HAVE_STREAM
    __m128d lo, hi;
    __builtin_memcpy(&lo, &v, 16);
    __builtin_memcpy(&hi, (const char *)&v + 16, 16);
    _mm_stream_pd(p, lo);
    _mm_stream_pd(p + 2, hi);
#else
    __builtin_memcpy(p, &v, sizeof(v));
#endif
}
FASTNN_INLINE void fastnn_stream_fence(void) {
#if FASTNN_HAVE_STREAM
    _mm_sfence();
#endif
}
/* The four row loops of training-mode batch norm over a block of w features
   (rows of x at stride ld): shifted sums for the statistics, the normalisation,
   and the backward's two sums and dx. Sums in double, in row order; in C for
   the x86-64-v3 clone (as Adam above): the double sums vectorise 4 wide (2 in
   the SSE2 baseline). out may be x, and dx may be dout (no FASTNN_RESTRICT there).
   No FMA contraction: each result rounds exactly as the scalar loop's, on
   every CPU and in either clone (the planned and per-layer paths, which fuse
   the activation differently, agree as closely as before). The one exception,
   SUMS_FMA (FASTNN_EXACT_FMA for float32), is the backward's sum of dy * x_hat,
   whose product of two floats is exact in double: FMA gives the same sums and
   takes an add off the loop's busiest ports (1024x512 backward 6% faster).
   With stream != 0 (the caller's choice, for outputs much larger than the
   caches) normalize and dx write x_hat, out and dx with streaming stores where
   the rows' alignment allows it (each row from its first 16-byte aligned
   element; the elements before and the last few after with plain stores), with
   the same arithmetic, so the same results.
   Measured on the 2-core EPYC and not kept: feature blocks narrower than the
   row (so a block of all rows stays in L2 between the two passes) read memory
   at less than half the speed of whole rows (the hardware prefetchers stop at
   each row segment's end), and with power-of-two row strides and huge pages a
   block's rows fall in a few L2 sets; four rows per loop iteration (each
   vector of sums loaded and stored once for four rows) thrashed L1 sets for
   the same reason; software prefetch of the rows ahead and walking the second
   pass backwards (to find the last rows still in L3) were slower. The sums
   are bound by their double arithmetic (a convert, a subtract, two adds and a
   multiply per float: ~0.6 cycles a float at 1024x512, and the same at
   256x256 in L2): 16- and 32-feature strips summed in registers over all rows
   (the same sums, bit for bit) were no faster, nor was an AVX-512 build
   (-march=native) on Zen 4, whose 512-bit units are 256 bits wide. */
#define FASTNN_DEFINE_BN(T, SUFFIX, V, SUMS_FMA)                                 \
FASTNN_CLONES                                                                    \
static void fastnn_bn_sums_##SUFFIX(const T *x, Py_ssize_t ld, Py_ssize_t n,     \
                                    Py_ssize_t w, const double *FASTNN_RESTRICT shift, \
                                    double *FASTNN_RESTRICT s1, double *FASTNN_RESTRICT s2) { \
    for (Py_ssize_t i = 0; i < n; i++) {                                         \
        const T *xr = x + i * ld;                                                \
        for (Py_ssize_t j = 0; j < w; j++) {                                     \
            double d = (double)xr[j] - shift[j];                                 \
            s1[j] += d;                                                          \
            s2[j] += d * d;                                                      \
        }                                                                        \
    }                                                                            \
}                                                                                \
FASTNN_CLONES                                                                    \
static void fastnn_bn_normalize_##SUFFIX(                                        \
        const T *x, Py_ssize_t ld, Py_ssize_t n, Py_ssize_t w,                   \
        const T *FASTNN_RESTRICT mu_hi, const T *FASTNN_RESTRICT mu_lo, const T *FASTNN_RESTRICT istd, \
        const T *FASTNN_RESTRICT gamma, const T *FASTNN_RESTRICT beta, T *x_hat, \
        Py_ssize_t ldh, T *out, Py_ssize_t ldo, int stream) {                    \
    enum { L = sizeof(V) / sizeof(T) };                                          \
    Py_ssize_t s = stream ? fastnn_stream_start(x_hat, ldh, out, ldo, sizeof(T)) : -1; \
    if (s < 0) {                                                                 \
        for (Py_ssize_t i = 0; i < n; i++) {                                     \
            const T *xr = x + i * ld;                                            \
            T *hr = x_hat + i * ldh, *orow = out + i * ldo;                      \
            for (Py_ssize_t j = 0; j < w; j++) {                                 \
                T h = ((xr[j] - mu_hi[j]) - mu_lo[j]) * istd[j];                 \
                hr[j] = h;                                                       \
                orow[j] = gamma[j] * h + beta[j];                                \
            }                                                                    \
        }                                                                        \
        return;                                                                  \
    }                                                                            \
    if (s > w) s = w;                                                            \
    for (Py_ssize_t i = 0; i < n; i++) {  /* streamed from element s of each row */ \
        const T *xr = x + i * ld;                                                \
        T *hr = x_hat + i * ldh, *orow = out + i * ldo;                          \
        Py_ssize_t j = 0;                                                        \
        for (; j < s; j++) {                                                     \
            T h = ((xr[j] - mu_hi[j]) - mu_lo[j]) * istd[j];                     \
            hr[j] = h;                                                           \
            orow[j] = gamma[j] * h + beta[j];                                    \
        }                                                                        \
        for (; j + L <= w; j += L) {                                             \
            V v, mh, ml, is, g, b;                                               \
            __builtin_memcpy(&v, xr + j, sizeof(V));                             \
            __builtin_memcpy(&mh, mu_hi + j, sizeof(V));                         \
            __builtin_memcpy(&ml, mu_lo + j, sizeof(V));                         \
            __builtin_memcpy(&is, istd + j, sizeof(V));                          \
            __builtin_memcpy(&g, gamma + j, sizeof(V));                          \
            __builtin_memcpy(&b, beta + j, sizeof(V));                           \
            V h = ((v - mh) - ml) * is;                                          \
            fastnn_stream_##SUFFIX(hr + j, h);                                   \
            fastnn_stream_##SUFFIX(orow + j, g * h + b);                         \
        }                                                                        \
        for (; j < w; j++) {                                                     \
            T h = ((xr[j] - mu_hi[j]) - mu_lo[j]) * istd[j];                     \
            hr[j] = h;                                                           \
            orow[j] = gamma[j] * h + beta[j];                                    \
        }                                                                        \
    }                                                                            \
    fastnn_stream_fence();                                                       \
}                                                                                \
FASTNN_CLONES SUMS_FMA                                                           \
static void fastnn_bn_backward_sums_##SUFFIX(                                    \
        const T *dout, Py_ssize_t ld, const T *x_hat, Py_ssize_t ldh,            \
        Py_ssize_t n, Py_ssize_t w, double *FASTNN_RESTRICT sdy,                 \
        double *FASTNN_RESTRICT sdyx) {                                          \
    for (Py_ssize_t i = 0; i < n; i++) {                                         \
        const T *dr = dout + i * ld, *hr = x_hat + i * ldh;                      \
        for (Py_ssize_t j = 0; j < w; j++) {                                     \
            double dy = (double)dr[j];                                           \
            sdy[j] += dy;                                                        \
            sdyx[j] += dy * (double)hr[j];                                       \
        }                                                                        \
    }                                                                            \
}                                                                                \
FASTNN_CLONES                                                                    \
static void fastnn_bn_backward_dx_##SUFFIX(                                      \
        const T *dout, Py_ssize_t ld, const T *x_hat, Py_ssize_t ldh,            \
        Py_ssize_t n, Py_ssize_t w, const T *FASTNN_RESTRICT k, const T *FASTNN_RESTRICT mdy, \
        const T *FASTNN_RESTRICT mdyx, T *dx, Py_ssize_t ldx, int stream) {      \
    enum { L = sizeof(V) / sizeof(T) };                                          \
    Py_ssize_t s = stream ? fastnn_stream_start(dx, ldx, dx, ldx, sizeof(T)) : -1; \
    if (s < 0) {                                                                 \
        for (Py_ssize_t i = 0; i < n; i++) {                                     \
            const T *dr = dout + i * ld, *hr = x_hat + i * ldh;                  \
            T *xr = dx + i * ldx;                                                \
            for (Py_ssize_t j = 0; j < w; j++)                                   \
                xr[j] = k[j] * (dr[j] - mdy[j] - hr[j] * mdyx[j]);               \
        }                                                                        \
        return;                                                                  \
    }                                                                            \
    if (s > w) s = w;                                                            \
    for (Py_ssize_t i = 0; i < n; i++) {  /* streamed from element s of each row */ \
        const T *dr = dout + i * ld, *hr = x_hat + i * ldh;                      \
        T *xr = dx + i * ldx;                                                    \
        Py_ssize_t j = 0;                                                        \
        for (; j < s; j++)                                                       \
            xr[j] = k[j] * (dr[j] - mdy[j] - hr[j] * mdyx[j]);                   \
        for (; j + L <= w; j += L) {                                             \
            V d, h, kv, my, mx;                                                  \
            __builtin_memcpy(&d, dr + j, sizeof(V));                             \
            __builtin_memcpy(&h, hr + j, sizeof(V));                             \
            __builtin_memcpy(&kv, k + j, sizeof(V));                             \
            __builtin_memcpy(&my, mdy + j, sizeof(V));                           \
            __builtin_memcpy(&mx, mdyx + j, sizeof(V));                          \
            fastnn_stream_##SUFFIX(xr + j, kv * ((d - my) - h * mx));            \
        }                                                                        \
        for (; j < w; j++)                                                       \
            xr[j] = k[j] * (dr[j] - mdy[j] - hr[j] * mdyx[j]);                   \
    }                                                                            \
    fastnn_stream_fence();                                                       \
}
/* Eval-mode batch norm over a block of w features, (x - mu) * a + b, with
   act 1 ReLU, 2 LeakyReLU (slope), else none, in one pass over each row. */
#define FASTNN_DEFINE_BN_EVAL(T, SUFFIX)                                         \
FASTNN_CLONES                                                                    \
static void fastnn_bn_eval_##SUFFIX(                                             \
        const T *x, Py_ssize_t ld, Py_ssize_t n, Py_ssize_t w,                   \
        const T *FASTNN_RESTRICT mu, const T *FASTNN_RESTRICT a,                 \
        const T *FASTNN_RESTRICT b, T *out, Py_ssize_t ldo, int act, T slope) {  \
    for (Py_ssize_t i = 0; i < n; i++) {                                         \
        const T *xr = x + i * ld;                                                \
        T *orow = out + i * ldo;                                                 \
        if (act == 1) {                                                          \
            for (Py_ssize_t j = 0; j < w; j++) {                                 \
                T v = (xr[j] - mu[j]) * a[j] + b[j];                             \
                orow[j] = v < 0 ? (T)0 : v;                                      \
            }                                                                    \
        } else if (act == 2) {                                                   \
            for (Py_ssize_t j = 0; j < w; j++) {                                 \
                T v = (xr[j] - mu[j]) * a[j] + b[j];                             \
                orow[j] = v < 0 ? v * slope : v;                                 \
            }                                                                    \
        } else {                                                                 \
            for (Py_ssize_t j = 0; j < w; j++)                                   \
                orow[j] = (xr[j] - mu[j]) * a[j] + b[j];                         \
        }                                                                        \
    }                                                                            \
}

#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
FASTNN_DEFINE_BN(float, f32, fastnn_vf, FASTNN_EXACT_FMA)
FASTNN_DEFINE_BN(double, f64, fastnn_vd, )
FASTNN_DEFINE_BN_EVAL(float, f32)
FASTNN_DEFINE_BN_EVAL(double, f64)
#pragma GCC pop_options

FASTNN_DEFINE_ADAM(float, __builtin_sqrtf, fastnn_adam_f32)
FASTNN_DEFINE_ADAM(double, __builtin_sqrt, fastnn_adam_f64)


/* ---- Packed float32 matrix products with AVX-512 ---------------------------
   c = op(a) @ op(b) (+ bias) for products too large for the small loop above,
   where a BLAS call's cost no longer matters but its speed does. On this
   project's CI machine (AMD Zen 4) OpenBLAS's sgemm runs at ~87% of the core's
   peak on the shapes of a dense network; this one at ~96%, and it fuses the
   bias (and the caller picks the columns a thread computes).

   GotoBLAS's scheme, with a rows-direct twist: for each block of KC steps of
   the inner dimension, op(b)'s rows are packed into panels of NR = 64 columns
   (a transposed b through 16x16 register transposes); op(a) is not packed: the
   micro-kernel broadcasts its entries from where they lie (a row-major a row by
   row, a transposed one from its columns, six adjacent floats), so the only
   copy is of b, and none when b is row-major and its columns fill whole panels
   (the kernel then reads each step's 64 columns from b's row). The micro-kernel
   keeps a 6 x 64 block of c in 24 zmm registers over the KC steps (one 64-float
   panel row and six broadcasts per step).
   Sums are in float32, in order of the inner index within a block of KC, as
   BLAS does. Rows past the last multiple of 6 go through a zero-padded copy of
   their a; columns past the last multiple of 64 are masked.

   Compiled for AVX-512F with a target attribute; fastnn_packed_gemm_supported()
   says whether this CPU (and its OS) runs it, else callers use BLAS. */
#define FASTNN_PG_MR 6
#define FASTNN_PG_NV 4
#define FASTNN_PG_NR (16 * FASTNN_PG_NV)
#ifndef FASTNN_PG_KC
#define FASTNN_PG_KC 512
#endif
#ifndef FASTNN_PG_INPLACE
#define FASTNN_PG_INPLACE 1  /* 0: always pack b (for comparisons) */
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FASTNN_HAVE_PACKED_GEMM 1
#include <immintrin.h>
#define FASTNN_AVX512 __attribute__((target("avx512f,avx2,fma")))

static int fastnn_packed_gemm_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 1 : 0;
}
#else
#define FASTNN_HAVE_PACKED_GEMM 0
static int fastnn_packed_gemm_supported(void) { return 0; }
#endif

/* The floats of workspace a product with inner dimension k needs to compute
   ncols columns (its packed b, the padded rows of a, and room to align). */
static Py_ssize_t fastnn_packed_gemm_work(Py_ssize_t k, Py_ssize_t ncols) {
    Py_ssize_t kc = k < FASTNN_PG_KC ? k : FASTNN_PG_KC;
    Py_ssize_t panels = (ncols + FASTNN_PG_NR - 1) / FASTNN_PG_NR;
    return kc * FASTNN_PG_NR * panels + FASTNN_PG_MR * kc + 16;
}

/* What the packed product does to each result as it stores it (the eval-mode
   batch norm and activation after a Dense, fused): with check, count results
   that are NaN or infinite into *bad (before anything else); with mu,
   (x - mu[j]) * a[j] + b[j] for column j, rounded as fastnn_bn_eval's loop
   (no FMA contraction); then act 1 ReLU, 2 LeakyReLU (slope), as there. */
typedef struct {
    const float *mu, *a, *b;
    int act, check;
    float slope;
} fastnn_pg_epi;

#if FASTNN_HAVE_PACKED_GEMM
/* The masks of the four 16-float vectors of a panel row of w columns. */
FASTNN_AVX512 static inline void fastnn_pg_masks(Py_ssize_t w, __mmask16 mk[FASTNN_PG_NV]) {
    for (int v = 0; v < FASTNN_PG_NV; v++) {
        Py_ssize_t r = w - 16 * v;
        mk[v] = r >= 16 ? (__mmask16)0xFFFF : r > 0 ? (__mmask16)((1u << r) - 1) : 0;
    }
}

/* r[0..15] = its transpose, as 2x2 block swaps of halving size h = 8, 4, 2, 1:
   rows i and i + h (bit h of i clear) exchange their off-diagonal h-blocks. */
#define FASTNN_PG_SWAP(H, LO, HI)                                                \
    for (int i = 0; i < 16; i++) {                                               \
        if (i & (H)) continue;                                                   \
        __m512 x = r[i], y = r[i + (H)];                                         \
        r[i] = _mm512_permutex2var_ps(x, LO, y);                                 \
        r[i + (H)] = _mm512_permutex2var_ps(x, HI, y);                           \
    }
FASTNN_AVX512 static inline void fastnn_pg_transpose16(__m512 r[16]) {
    /* lo[c] = c or 16 + c - h (bit h of c set); hi[c] = c + h or 16 + c */
    const __m512i lo8 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7,
                                          16, 17, 18, 19, 20, 21, 22, 23);
    const __m512i hi8 = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15,
                                          24, 25, 26, 27, 28, 29, 30, 31);
    const __m512i lo4 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19,
                                          8, 9, 10, 11, 24, 25, 26, 27);
    const __m512i hi4 = _mm512_setr_epi32(4, 5, 6, 7, 20, 21, 22, 23,
                                          12, 13, 14, 15, 28, 29, 30, 31);
    const __m512i lo2 = _mm512_setr_epi32(0, 1, 16, 17, 4, 5, 20, 21,
                                          8, 9, 24, 25, 12, 13, 28, 29);
    const __m512i hi2 = _mm512_setr_epi32(2, 3, 18, 19, 6, 7, 22, 23,
                                          10, 11, 26, 27, 14, 15, 30, 31);
    const __m512i lo1 = _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22,
                                          8, 24, 10, 26, 12, 28, 14, 30);
    const __m512i hi1 = _mm512_setr_epi32(1, 17, 3, 19, 5, 21, 7, 23,
                                          9, 25, 11, 27, 13, 29, 15, 31);
    FASTNN_PG_SWAP(8, lo8, hi8)
    FASTNN_PG_SWAP(4, lo4, hi4)
    FASTNN_PG_SWAP(2, lo2, hi2)
    FASTNN_PG_SWAP(1, lo1, hi1)
}

/* Pack rows [p0, p0 + kc) of op(b), columns [j0, j0 + ncols), into panels of NR
   columns (zero past the last column): panel q holds kc rows of NR floats. */
FASTNN_AVX512 static void fastnn_pg_pack_b(const float *b, Py_ssize_t ldb, int tb,
                                           Py_ssize_t p0, Py_ssize_t kc, Py_ssize_t j0,
                                           Py_ssize_t ncols, float *bp) {
    for (Py_ssize_t jp = 0; jp < ncols; jp += FASTNN_PG_NR, bp += kc * FASTNN_PG_NR) {
        Py_ssize_t w = ncols - jp < FASTNN_PG_NR ? ncols - jp : FASTNN_PG_NR;
        if (!tb) {  /* b (k, n) row-major: each panel row is a (masked) slice of a row */
            __mmask16 mk[FASTNN_PG_NV];
            fastnn_pg_masks(w, mk);
            for (Py_ssize_t p = 0; p < kc; p++) {
                const float *src = b + (p0 + p) * ldb + j0 + jp;
                for (int v = 0; v < FASTNN_PG_NV; v++)
                    _mm512_store_ps(bp + p * FASTNN_PG_NR + 16 * v,
                                    _mm512_maskz_loadu_ps(mk[v], src + 16 * v));
            }
            continue;
        }
        /* b (n, k) row-major, op(b) = b.T: 16 x 16 tiles of b, transposed */
        for (int q0 = 0; q0 < FASTNN_PG_NR; q0 += 16) {
            Py_ssize_t nq = w - q0 < 0 ? 0 : (w - q0 < 16 ? w - q0 : 16);
            for (Py_ssize_t pp = 0; pp < kc; pp += 16) {
                Py_ssize_t np_ = kc - pp < 16 ? kc - pp : 16;
                __mmask16 mp = np_ >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << np_) - 1);
                __m512 r[16];
                for (int t = 0; t < 16; t++)
                    r[t] = t < nq ? _mm512_maskz_loadu_ps(
                                        mp, b + (j0 + jp + q0 + t) * ldb + p0 + pp)
                                  : _mm512_setzero_ps();
                fastnn_pg_transpose16(r);
                for (Py_ssize_t t = 0; t < np_; t++)
                    _mm512_store_ps(bp + (pp + t) * FASTNN_PG_NR + q0, r[t]);
            }
        }
    }
}

/* c[0:h, 0:w] (+)= A @ panel over kc steps: A's entry (r, p) at a[r * lda + p]
   (NAME_n: a row-major) or a[p * lda + r] (NAME_t: a transposed). The first
   block of the inner dimension starts from the bias (init, or zero if NULL);
   the others add to c. The last applies ep (columns from ep_j) if given. */
#define FASTNN_DEFINE_PG_KERNEL(NAME, AT)                                        \
FASTNN_AVX512 static int NAME(Py_ssize_t kc, const float *a, Py_ssize_t lda,    \
                              const float *bp, Py_ssize_t ldbp,                  \
                              float *c, Py_ssize_t ldc,                          \
                              const float *init, int accumulate, int h,          \
                              Py_ssize_t w, const fastnn_pg_epi *ep,             \
                              Py_ssize_t ep_j) {                                 \
    __m512 acc[FASTNN_PG_MR][FASTNN_PG_NV];                                      \
    __mmask16 mk[FASTNN_PG_NV];                                                  \
    fastnn_pg_masks(w, mk);                                                      \
    for (int v = 0; v < FASTNN_PG_NV; v++) {                                     \
        __m512 z = init != NULL && !accumulate                                   \
                   ? _mm512_maskz_loadu_ps(mk[v], init + 16 * v)                 \
                   : _mm512_setzero_ps();                                        \
        for (int r = 0; r < FASTNN_PG_MR; r++) acc[r][v] = z;                    \
    }                                                                            \
    for (Py_ssize_t p = 0; p < kc; p++) {  /* panel rows ldbp apart, all whole */ \
        __m512 bv[FASTNN_PG_NV];                                                 \
        _Pragma("GCC unroll 4")                                                  \
        for (int v = 0; v < FASTNN_PG_NV; v++)                                   \
            bv[v] = _mm512_loadu_ps(bp + 16 * v);                                \
        _Pragma("GCC unroll 8")                                                  \
        for (int r = 0; r < FASTNN_PG_MR; r++) {                                 \
            __m512 x = _mm512_set1_ps(AT);                                       \
            _Pragma("GCC unroll 4")                                              \
            for (int v = 0; v < FASTNN_PG_NV; v++)                               \
                acc[r][v] = _mm512_fmadd_ps(x, bv[v], acc[r][v]);                \
        }                                                                        \
        bp += ldbp;                                                              \
    }                                                                            \
    if (accumulate)                                                              \
        for (int r = 0; r < h; r++)                                              \
            for (int v = 0; v < FASTNN_PG_NV; v++)                               \
                acc[r][v] = _mm512_add_ps(acc[r][v], _mm512_maskz_loadu_ps(      \
                    mk[v], c + r * ldc + 16 * v));                               \
    return fastnn_pg_store(acc, c, ldc, h, mk, ep, ep_j);                        \
}

/* Store the kernel's block (rows < h, masked columns), through the epilogue ep
   if given; the number of non-finite raw results if ep->check. */
FASTNN_AVX512 static inline int fastnn_pg_store(
        __m512 acc[FASTNN_PG_MR][FASTNN_PG_NV], float *c, Py_ssize_t ldc, int h,
        const __mmask16 mk[FASTNN_PG_NV], const fastnn_pg_epi *ep, Py_ssize_t j) {
    int bad = 0;
    if (ep == NULL) {
        for (int r = 0; r < h; r++)
            for (int v = 0; v < FASTNN_PG_NV; v++)
                _mm512_mask_storeu_ps(c + r * ldc + 16 * v, mk[v], acc[r][v]);
        return 0;
    }
    const __m512 zero = _mm512_setzero_ps(), slope = _mm512_set1_ps(ep->slope);
    for (int v = 0; v < FASTNN_PG_NV; v++) {
        __m512 mu = zero, a = zero, b = zero;
        if (ep->mu != NULL) {
            mu = _mm512_maskz_loadu_ps(mk[v], ep->mu + j + 16 * v);
            a = _mm512_maskz_loadu_ps(mk[v], ep->a + j + 16 * v);
            b = _mm512_maskz_loadu_ps(mk[v], ep->b + j + 16 * v);
        }
        for (int r = 0; r < h; r++) {
            __m512 x = acc[r][v];
            if (ep->check) {  /* x - x: 0 if finite, NaN for NaN or inf */
                __m512 d = _mm512_sub_ps(x, x);
                bad += __builtin_popcount(_mm512_mask_cmp_ps_mask(mk[v], d, d, _CMP_UNORD_Q));
            }
            if (ep->mu != NULL)
                x = _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(x, mu), a), b);
            if (ep->act == 1)  /* max(0, x): a NaN x stays NaN, -0 stays -0 (as x < 0 ? 0 : x) */
                x = _mm512_max_ps(zero, x);
            else if (ep->act == 2)
                x = _mm512_mask_mul_ps(x, _mm512_cmp_ps_mask(x, zero, _CMP_LT_OQ), x, slope);
            _mm512_mask_storeu_ps(c + r * ldc + 16 * v, mk[v], x);
        }
    }
    return bad;
}
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
FASTNN_DEFINE_PG_KERNEL(fastnn_pg_kernel_n, a[r * lda + p])
FASTNN_DEFINE_PG_KERNEL(fastnn_pg_kernel_t, a[p * lda + r])
#pragma GCC pop_options
#endif  /* FASTNN_HAVE_PACKED_GEMM */

/* c[:, j_lo:j_hi] = op(a) @ op(b)[:, j_lo:j_hi] (+ bias[j_lo:j_hi]), op(a) (m, k),
   op(b) (k, n): a is (m, k) row-major with row stride lda, or with ta its
   transpose (a (k, m), stride lda); likewise b (k, n) or with tb (n, k). work:
   fastnn_packed_gemm_work(k, j_hi - j_lo) floats of the caller's. Two threads may
   compute disjoint column ranges at once, each with its own work. */
#if FASTNN_HAVE_PACKED_GEMM
FASTNN_AVX512
static int fastnn_packed_gemm(Py_ssize_t m, Py_ssize_t k, Py_ssize_t n,
                              const float *a, Py_ssize_t lda, int ta,
                              const float *b, Py_ssize_t ldb, int tb,
                              float *c, Py_ssize_t ldc, const float *bias,
                              float *work, Py_ssize_t j_lo, Py_ssize_t j_hi,
                              const fastnn_pg_epi *ep) {
    int bad = 0;
    (void)n;
    Py_ssize_t ncols = j_hi - j_lo;
    if (ncols <= 0 || m <= 0) return 0;
    float *bp = (float *)(((uintptr_t)work + 63) & ~(uintptr_t)63);
    Py_ssize_t panels = (ncols + FASTNN_PG_NR - 1) / FASTNN_PG_NR;
    /* A row-major b whose columns fill whole panels is read where it lies (each
       step's 64 columns are adjacent there too), not copied: the copy cost as much as
       a tenth of the product at 32 rows (784 x 256 weights), and the product read
       from b itself was no slower at any row count measured (8 to 1024). A last
       partial panel would need masked loads in the inner loop, which Zen 4 runs at
       a third of the speed: such a b is packed as before. */
    int inplace = FASTNN_PG_INPLACE && !tb && ncols % FASTNN_PG_NR == 0;
    for (Py_ssize_t p0 = 0; p0 < k; p0 += FASTNN_PG_KC) {
        Py_ssize_t kc = k - p0 < FASTNN_PG_KC ? k - p0 : FASTNN_PG_KC;
        float *pad = bp + kc * FASTNN_PG_NR * panels;
        if (!inplace)
            fastnn_pg_pack_b(b, ldb, tb, p0, kc, j_lo, ncols, bp);
        for (Py_ssize_t i0 = 0; i0 < m; i0 += FASTNN_PG_MR) {
            int h = m - i0 < FASTNN_PG_MR ? (int)(m - i0) : FASTNN_PG_MR;
            const float *ab;
            Py_ssize_t la;
            if (!ta) {
                ab = a + i0 * lda + p0;
                la = lda;
                if (h < FASTNN_PG_MR) {  /* the last rows, zero-padded to MR */
                    for (int r = 0; r < FASTNN_PG_MR; r++)
                        for (Py_ssize_t p = 0; p < kc; p++)
                            pad[r * kc + p] = r < h ? ab[r * lda + p] : 0.0f;
                    ab = pad;
                    la = kc;
                }
            } else {
                ab = a + p0 * lda + i0;
                la = lda;
                if (h < FASTNN_PG_MR) {
                    for (Py_ssize_t p = 0; p < kc; p++)
                        for (int r = 0; r < FASTNN_PG_MR; r++)
                            pad[p * FASTNN_PG_MR + r] = r < h ? ab[p * lda + r] : 0.0f;
                    ab = pad;
                    la = FASTNN_PG_MR;
                }
            }
            for (Py_ssize_t q = 0; q < panels; q++) {
                Py_ssize_t j = j_lo + q * FASTNN_PG_NR;
                Py_ssize_t w = j_hi - j < FASTNN_PG_NR ? j_hi - j : FASTNN_PG_NR;
                const float *init = bias != NULL ? bias + j : NULL;
                const fastnn_pg_epi *last = p0 + kc >= k ? ep : NULL;
                const float *panel = inplace ? b + p0 * ldb + j : bp + q * kc * FASTNN_PG_NR;
                Py_ssize_t ldp = inplace ? ldb : FASTNN_PG_NR;
                if (ta)
                    bad += fastnn_pg_kernel_t(kc, ab, la, panel, ldp, c + i0 * ldc + j, ldc,
                                              init, p0 > 0, h, w, last, j);
                else
                    bad += fastnn_pg_kernel_n(kc, ab, la, panel, ldp, c + i0 * ldc + j, ldc,
                                              init, p0 > 0, h, w, last, j);
            }
        }
    }
    return bad;
}
#else
static int fastnn_packed_gemm(Py_ssize_t m, Py_ssize_t k, Py_ssize_t n,
                              const float *a, Py_ssize_t lda, int ta,
                              const float *b, Py_ssize_t ldb, int tb,
                              float *c, Py_ssize_t ldc, const float *bias,
                              float *work, Py_ssize_t j_lo, Py_ssize_t j_hi,
                              const fastnn_pg_epi *ep) {
    /* never called: fastnn_packed_gemm_supported() is 0 here */
    (void)m; (void)k; (void)n; (void)a; (void)lda; (void)ta; (void)b; (void)ldb;
    (void)tb; (void)c; (void)ldc; (void)bias; (void)work; (void)j_lo; (void)j_hi;
    (void)ep;
    return 0;
}
#endif


/* ---- Two threads for the packed product ------------------------------------
   fastnn's own second thread: a large packed product (fastnn's thread policy,
   fastnn._threads, decides which) splits its columns in two (or its rows, when
   it has a single panel of columns) and a helper thread computes one part while
   the caller computes the other. Each column and row is computed as on one
   thread, so results do not depend on the thread count. The helper is started
   on first use; between products it spins a little (FASTNN_POOL_SPIN_NS), then
   sleeps on a condition variable; one caller uses it at a time (a concurrent
   one computes alone); a forked child starts without it and makes a new one
   when it needs one. */
#if FASTNN_HAVE_PACKED_GEMM
#include <pthread.h>
#include <time.h>

static int fastnn_gemm_threads = 1;  /* set by fastnn's thread policy (1 or 2) */

typedef struct {
    Py_ssize_t m, k, n, lda, ldb, ldc, j_lo, j_hi;
    const float *a, *b, *bias;
    float *c, *work;
    int ta, tb;
    const fastnn_pg_epi *ep;
    int bad;  /* out: the non-finite results ep->check counted */
} fastnn_pg_job;

static struct {
    pthread_mutex_t lock;     /* guards sleeping and the condition variable */
    pthread_cond_t wake;
    int started, sleeping;
    int seq, done;            /* jobs posted, jobs finished (atomics) */
    fastnn_pg_job *job;
} fastnn_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, NULL};
static pthread_mutex_t fastnn_pool_busy = PTHREAD_MUTEX_INITIALIZER;  /* one caller */
static int fastnn_pool_atfork_set = 0;

/* After a job the helper spins this long for the next one before it sleeps: a
   training step or a prediction runs its products a few hundred microseconds apart,
   and waking a sleeping thread costs tens of microseconds (more in a VM). It spins
   only after a product fastnn's policy gave two threads, which it does only while
   no other process is running on the second core. */
#define FASTNN_POOL_SPIN_NS 300000

static void fastnn_pg_run_job(fastnn_pg_job *j) {
    j->bad = fastnn_packed_gemm(j->m, j->k, j->n, j->a, j->lda, j->ta, j->b, j->ldb, j->tb,
                                j->c, j->ldc, j->bias, j->work, j->j_lo, j->j_hi, j->ep);
}

static long long fastnn_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void *fastnn_pool_main(void *unused) {
    (void)unused;
    /* the last job done (not posted: the first may be posted before this runs) */
    int seen = __atomic_load_n(&fastnn_pool.done, __ATOMIC_ACQUIRE);
    for (;;) {
        long long until = fastnn_now_ns() + FASTNN_POOL_SPIN_NS;
        int spins = 0;
        while (__atomic_load_n(&fastnn_pool.seq, __ATOMIC_ACQUIRE) == seen) {
            __builtin_ia32_pause();
            if (++spins % 256 == 0 && fastnn_now_ns() > until) {
                pthread_mutex_lock(&fastnn_pool.lock);
                fastnn_pool.sleeping = 1;
                while (__atomic_load_n(&fastnn_pool.seq, __ATOMIC_ACQUIRE) == seen)
                    pthread_cond_wait(&fastnn_pool.wake, &fastnn_pool.lock);
                fastnn_pool.sleeping = 0;
                pthread_mutex_unlock(&fastnn_pool.lock);
            }
        }
        seen = __atomic_load_n(&fastnn_pool.seq, __ATOMIC_ACQUIRE);
        fastnn_pg_run_job(fastnn_pool.job);
        __atomic_store_n(&fastnn_pool.done, seen, __ATOMIC_RELEASE);
    }
    return NULL;
}

static void fastnn_pool_atfork_child(void) {
    /* the helper thread did not survive the fork: start afresh */
    pthread_mutex_init(&fastnn_pool.lock, NULL);
    pthread_cond_init(&fastnn_pool.wake, NULL);
    pthread_mutex_init(&fastnn_pool_busy, NULL);
    fastnn_pool.started = fastnn_pool.sleeping = 0;
    fastnn_pool.seq = fastnn_pool.done = 0;
    fastnn_pool.job = NULL;
}

/* Run `theirs` on the helper thread while the caller runs `mine`; 0 (nothing run)
   if the helper is in use by another caller or cannot be started. */
static int fastnn_pool_run2(fastnn_pg_job *theirs, fastnn_pg_job *mine) {
    if (pthread_mutex_trylock(&fastnn_pool_busy) != 0)
        return 0;
    if (!fastnn_pool.started) {
        pthread_t thread;
        if (!fastnn_pool_atfork_set) {
            pthread_atfork(NULL, NULL, fastnn_pool_atfork_child);
            fastnn_pool_atfork_set = 1;
        }
        if (pthread_create(&thread, NULL, fastnn_pool_main, NULL) != 0) {
            pthread_mutex_unlock(&fastnn_pool_busy);
            return 0;
        }
        pthread_detach(thread);
        fastnn_pool.started = 1;
    }
    fastnn_pool.job = theirs;
    int seq = fastnn_pool.seq + 1;
    __atomic_store_n(&fastnn_pool.seq, seq, __ATOMIC_RELEASE);
    pthread_mutex_lock(&fastnn_pool.lock);
    if (fastnn_pool.sleeping)
        pthread_cond_signal(&fastnn_pool.wake);
    pthread_mutex_unlock(&fastnn_pool.lock);
    fastnn_pg_run_job(mine);
    /* the helper is running its part (or about to): wait for it without sleeping */
    while (__atomic_load_n(&fastnn_pool.done, __ATOMIC_ACQUIRE) != seq)
        __builtin_ia32_pause();
    pthread_mutex_unlock(&fastnn_pool_busy);
    return 1;
}
#else
static int fastnn_gemm_threads = 1;
#endif

static void fastnn_set_gemm_threads(int n) { fastnn_gemm_threads = n < 2 ? 1 : 2; }
static int fastnn_get_gemm_threads(void) { return fastnn_gemm_threads; }

/* The floats of workspace fastnn_packed_gemm_threads needs: two threads' worth. */
static Py_ssize_t fastnn_packed_gemm_work2(Py_ssize_t k, Py_ssize_t n) {
    return 2 * fastnn_packed_gemm_work(k, n);
}

/* fastnn_packed_gemm over all of c (with the epilogue ep, or NULL), on two threads
   when fastnn_gemm_threads says so and the product has at least min_macs
   multiply-adds (else, or if the helper is busy, on the caller's); the count of
   non-finite results if ep->check. work: fastnn_packed_gemm_work2(k, n) floats. */
static int fastnn_packed_gemm_threads(Py_ssize_t m, Py_ssize_t k, Py_ssize_t n,
                                      const float *a, Py_ssize_t lda, int ta,
                                      const float *b, Py_ssize_t ldb, int tb,
                                      float *c, Py_ssize_t ldc, const float *bias,
                                      float *work, double min_macs,
                                      const fastnn_pg_epi *ep) {
#if FASTNN_HAVE_PACKED_GEMM
    if (fastnn_gemm_threads >= 2 && (double)m * (double)k * (double)n >= min_macs) {
        fastnn_pg_job mine = {m, k, n, lda, ldb, ldc, 0, n, a, b, bias, c, work, ta, tb,
                              ep, 0};
        fastnn_pg_job theirs = mine;
        theirs.work = work + fastnn_packed_gemm_work(k, n);
        Py_ssize_t panels = (n + FASTNN_PG_NR - 1) / FASTNN_PG_NR;
        if (panels >= 2) {  /* columns: each thread packs and computes half the panels */
            Py_ssize_t split = (panels + 1) / 2 * FASTNN_PG_NR;
            mine.j_hi = split;
            theirs.j_lo = split;
        } else if (m >= 2 * FASTNN_PG_MR) {  /* one panel: rows, each packing all of b */
            Py_ssize_t split = (m / 2 + FASTNN_PG_MR - 1) / FASTNN_PG_MR * FASTNN_PG_MR;
            mine.m = split;
            theirs.m = m - split;
            theirs.a = ta ? a + split : a + split * lda;
            theirs.c = c + split * ldc;
        } else {
            theirs.m = 0;
        }
        if (theirs.m > 0 && fastnn_pool_run2(&theirs, &mine))
            return mine.bad + theirs.bad;
    }
#else
    (void)min_macs;
#endif
    return fastnn_packed_gemm(m, k, n, a, lda, ta, b, ldb, tb, c, ldc, bias, work, 0, n, ep);
}

#endif  /* FASTNN_KERNELS_H */

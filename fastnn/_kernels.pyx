"""Cython kernels: batch normalisation, softmax cross-entropy, optimizer updates.

Every function here has a twin with the same name and signature in
``fastnn._numpy_kernels``; that twin is the readable reference. Only
``fastnn.ops`` calls these functions, after it has validated every argument:

* arrays are C-contiguous, of one floating dtype, of consistent shapes;
* outputs are writable, caller-owned, and do not partially overlap inputs;
* scalars are finite and in range; labels lie in ``[0, n_classes)``.

The kernels therefore never validate and never allocate. They are compiled
without bounds checks (directives live in ``setup.py``), so calling them with
bad arguments from anywhere but ``fastnn.ops`` can crash the interpreter.

Conventions (see DESIGN.md): inputs are ``const`` memoryviews, outputs are
named ``*_out``, signatures read inputs, then outputs, then scalars. Sums are
accumulated in ``double`` even for float32 data, in a fixed order, so a result
never depends on the number of OpenMP threads.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, log, sqrt, sqrtf, tanh, tanhf
from libc.string cimport memcpy
from libc.stdint cimport int32_t, int64_t

cdef extern from *:
    """
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
       row-major array), b (k, n) row stride ldb, c (m, n) row stride ldc. Blocks of 4 rows x 2 vectors of c (16 float32 or 8
       float64 columns) stay in registers over k: each step loads two vectors of a
       row of b and broadcasts four entries of a. Partial column blocks go through
       a zero-padded copy of b's columns; a partial row block through a plain loop.
       Sums are in the data's dtype, as in BLAS. For products where a BLAS call
       costs more than the arithmetic (tiny networks); compiled baseline +
       x86-64-v3 like the exp loop (GCC vector extensions: SSE2 pairs or AVX2). */
    #define FASTNN_GEMM_ROWS 4
    #define FASTNN_GEMM_PACK_K 256
    typedef float fastnn_vf __attribute__((vector_size(32), aligned(4)));
    typedef double fastnn_vd __attribute__((vector_size(32), aligned(8)));
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
            for (; i0 < m; i0++) {                                                   \
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
    }
    FASTNN_DEFINE_GEMM(float, fastnn_vf, fastnn_gemm_f32)
    FASTNN_DEFINE_GEMM(double, fastnn_vd, fastnn_gemm_f64)
    """
    const int FASTNN_HAVE_OPENMP
    const char* FASTNN_SOURCE_SHA256
    const int FASTNN_DEBUG_BUILD
    const int FASTNN_NATIVE
    float fastnn_expf(float x) noexcept nogil
    void fastnn_exp_shifted_f32(const float *z, float *e, Py_ssize_t n, float shift) noexcept nogil
    const int FASTNN_HAVE_CLONES
    int fastnn_max_threads() noexcept nogil
    void fastnn_gemm_f32(Py_ssize_t m, Py_ssize_t k, Py_ssize_t n, const float *a,
                         Py_ssize_t rsa, Py_ssize_t csa, const float *b, Py_ssize_t ldb,
                         float *c, Py_ssize_t ldc, const float *bias) noexcept nogil
    void fastnn_gemm_f64(Py_ssize_t m, Py_ssize_t k, Py_ssize_t n, const double *a,
                         Py_ssize_t rsa, Py_ssize_t csa, const double *b, Py_ssize_t ldb,
                         double *c, Py_ssize_t ldc, const double *bias) noexcept nogil


ctypedef fused label_t:
    int32_t
    int64_t

# Batch norm works on blocks of features: each block's per-feature sums live
# in stack arrays of doubles, rows are walked outside and the block's features
# inside (contiguous, so up to BLOCK features a row is one streaming read), and
# with OpenMP the blocks are shared between threads. Each feature's statistics
# are summed over rows in row order whatever the blocking, so results do not
# depend on the thread count.
cdef enum:
    BLOCK = 2048

# Row reductions (softmax max and sum) use LANES independent accumulators, summed
# over chunks of CHUNK elements; both fixed, so results never depend on threads.
cdef enum:
    LANES = 8
    CHUNK = 64

# Activations fused into planned steps (see the "Planned training steps" section).
cdef enum:
    ACT_NONE = 0
    ACT_RELU = 1
    ACT_LEAKY_RELU = 2
    ACT_TANH = 3
    ACT_SIGMOID = 4

# Below this many elements, OpenMP threads cost more than they save.
cdef Py_ssize_t PARALLEL_MIN_ELEMENTS = 1 << 16


def build_info():
    """Compile-time facts about this extension (for ``fastnn info``)."""
    return {
        "openmp": bool(FASTNN_HAVE_OPENMP),
        "debug_build": bool(FASTNN_DEBUG_BUILD),
        "native": bool(FASTNN_NATIVE),
        "simd_clones": bool(FASTNN_HAVE_CLONES),
        "source_sha256": FASTNN_SOURCE_SHA256.decode("ascii"),
    }


cdef inline floating _sqrt(floating x) noexcept nogil:
    # sqrtf for float32: libc's sqrt would round-trip through double.
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline Py_ssize_t _block_width(Py_ssize_t n, Py_ssize_t dim) noexcept nogil:
    """Features per block: BLOCK, or fewer so that every OpenMP thread gets one."""
    cdef Py_ssize_t threads = fastnn_max_threads()
    cdef Py_ssize_t width
    if threads <= 1 or n * dim < PARALLEL_MIN_ELEMENTS:
        return BLOCK
    width = (dim + threads - 1) // threads
    width = ((width + 63) // 64) * 64  # whole cache lines of float32 and float64
    return min(width, <Py_ssize_t>BLOCK)


cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef void _activate(floating[:, ::1] y, Py_ssize_t j0, Py_ssize_t w, int act,
                    double alpha) noexcept nogil:
    """y[:, j0:j0+w] = act(y[:, j0:j0+w]) in place, with the layers' arithmetic
    (ReLU and LeakyReLU keep NaN, as np.maximum does; sigmoid = tanh(x/2)/2 + 1/2)."""
    cdef Py_ssize_t n = y.shape[0], i, j
    cdef floating *row
    cdef floating v, a = <floating>alpha, half = <floating>0.5
    for i in range(n):
        row = &y[i, j0]
        if act == ACT_RELU:
            for j in range(w):
                v = row[j]
                row[j] = 0 if v < 0 else v
        elif act == ACT_LEAKY_RELU:
            for j in range(w):
                v = row[j]
                row[j] = v * a if v < 0 else v
        elif act == ACT_TANH:
            for j in range(w):
                row[j] = _tanh(row[j])
        elif act == ACT_SIGMOID:
            for j in range(w):
                row[j] = _tanh(row[j] * half) * half + half


cdef void _activation_backward(const floating[:, ::1] y, floating[:, ::1] d, int act,
                               double alpha) noexcept nogil:
    """d *= act'(x), from the activation's output y = act(x), in place."""
    cdef Py_ssize_t n = y.shape[0], w = y.shape[1], i, j
    cdef const floating *yr
    cdef floating *dr
    cdef floating a = <floating>alpha, one = 1
    for i in range(n):
        yr = &y[i, 0]
        dr = &d[i, 0]
        if act == ACT_RELU:
            for j in range(w):
                dr[j] = dr[j] if yr[j] > 0 else 0
        elif act == ACT_LEAKY_RELU:
            for j in range(w):
                dr[j] = dr[j] if yr[j] > 0 else dr[j] * a
        elif act == ACT_TANH:
            for j in range(w):
                dr[j] = (one - yr[j] * yr[j]) * dr[j]
        elif act == ACT_SIGMOID:
            for j in range(w):
                dr[j] = ((one - yr[j]) * yr[j]) * dr[j]


# --------------------------------------------------------------------------
# Batch normalisation
# --------------------------------------------------------------------------

cdef void _bn_train_block(
    const floating[:, ::1] x,
    const floating[::1] gamma,
    const floating[::1] beta,
    floating[:, ::1] out,
    floating[:, ::1] x_hat_out,
    floating[::1] mean_out,
    floating[::1] inv_std_out,
    floating[::1] running_mean,
    floating[::1] running_var,
    bint update_running,
    double momentum,
    double eps,
    Py_ssize_t j0,
    Py_ssize_t w,
) noexcept nogil:
    cdef double mu[BLOCK]      # the shift, then the mean
    cdef double istd[BLOCK]    # sum of (x - shift), then 1 / sqrt(var + eps)
    cdef double s2[BLOCK]      # sum of (x - shift)**2
    cdef floating mu_hi[BLOCK]
    cdef floating mu_lo[BLOCK]
    cdef floating fistd[BLOCK]
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t i, j
    cdef double d, m1, var
    cdef floating fxh

    # One pass of shifted sums (shift = first row) in double: as stable as two
    # passes for any shift within the data's range, and x is read once for it.
    for j in range(w):
        mu[j] = x[0, j0 + j]
        istd[j] = 0.0
        s2[j] = 0.0
    for i in range(n):
        for j in range(w):
            d = x[i, j0 + j] - mu[j]
            istd[j] += d
            s2[j] += d * d
    for j in range(w):
        m1 = istd[j] / n
        var = s2[j] / n - m1 * m1
        if var < 0.0:
            var = 0.0
        mu[j] = mu[j] + m1
        istd[j] = 1.0 / sqrt(var + eps)
        mean_out[j0 + j] = <floating>mu[j]
        inv_std_out[j0 + j] = <floating>istd[j]
        if update_running:
            running_mean[j0 + j] = <floating>(
                (1.0 - momentum) * running_mean[j0 + j] + momentum * mu[j])
            running_var[j0 + j] = <floating>(
                (1.0 - momentum) * running_var[j0 + j]
                + momentum * (var * n / (n - 1.0)))
    # x - mean in the data's dtype, with the mean split in two (hi + lo): as
    # accurate as double arithmetic (x - mu_hi is exact when x is near the
    # mean), at the vector width of the data.
    for j in range(w):
        mu_hi[j] = <floating>mu[j]
        mu_lo[j] = <floating>(mu[j] - mu_hi[j])
        fistd[j] = <floating>istd[j]
    for i in range(n):
        for j in range(w):
            fxh = ((x[i, j0 + j] - mu_hi[j]) - mu_lo[j]) * fistd[j]
            x_hat_out[i, j0 + j] = fxh
            out[i, j0 + j] = gamma[j0 + j] * fxh + beta[j0 + j]


def batchnorm_forward_train(
    const floating[:, ::1] x,
    const floating[::1] gamma,
    const floating[::1] beta,
    floating[:, ::1] out,
    floating[:, ::1] x_hat_out,
    floating[::1] mean_out,
    floating[::1] inv_std_out,
    floating[::1] running_mean,
    floating[::1] running_var,
    bint update_running,
    double momentum,
    double eps,
):
    """Training forward: batch statistics, normalise, scale and shift.

    ``mean = mean(x, 0)``, ``var = mean((x - mean)**2, 0)`` (biased),
    ``x_hat = (x - mean) / sqrt(var + eps)``, ``out = gamma * x_hat + beta``.
    If ``update_running``: ``r_mean <- (1 - momentum) r_mean + momentum mean``
    and ``r_var <- (1 - momentum) r_var + momentum var * n / (n - 1)``.
    Needs n >= 2 rows. ``out`` may be ``x`` itself.
    """
    _bn_train(x, gamma, beta, out, x_hat_out, mean_out, inv_std_out, running_mean,
              running_var, update_running, momentum, eps, ACT_NONE, 0.0)


cdef void _bn_train(
    const floating[:, ::1] x,
    const floating[::1] gamma,
    const floating[::1] beta,
    floating[:, ::1] out,
    floating[:, ::1] x_hat_out,
    floating[::1] mean_out,
    floating[::1] inv_std_out,
    floating[::1] running_mean,
    floating[::1] running_var,
    bint update_running,
    double momentum,
    double eps,
    int act,
    double alpha,
) noexcept nogil:
    """batchnorm_forward_train, then the activation ``act`` on ``out`` (block by block,
    while it is in cache)."""
    cdef Py_ssize_t n = x.shape[0], dim = x.shape[1]
    cdef Py_ssize_t width = _block_width(n, dim)
    cdef Py_ssize_t nblocks = (dim + width - 1) // width
    cdef Py_ssize_t k, j0
    for k in prange(nblocks, schedule="static", use_threads_if=nblocks > 1):
        j0 = k * width
        _bn_train_block(x, gamma, beta, out, x_hat_out, mean_out, inv_std_out,
                        running_mean, running_var, update_running, momentum, eps,
                        j0, min(width, dim - j0))
        if act != ACT_NONE:
            _activate(out, j0, min(width, dim - j0), act, alpha)


cdef void _bn_eval_block(
    const floating[:, ::1] x,
    const floating[::1] gamma,
    const floating[::1] beta,
    const floating[::1] running_mean,
    const floating[::1] running_var,
    floating[:, ::1] out,
    floating[::1] mean_out,
    floating[::1] inv_std_out,
    double eps,
    Py_ssize_t j0,
    Py_ssize_t w,
) noexcept nogil:
    cdef floating mu[BLOCK]
    cdef floating a[BLOCK]
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t i, j
    cdef double istd
    for j in range(w):
        mu[j] = running_mean[j0 + j]
        istd = 1.0 / sqrt(<double>running_var[j0 + j] + eps)
        a[j] = <floating>(gamma[j0 + j] * istd)
        mean_out[j0 + j] = mu[j]
        inv_std_out[j0 + j] = <floating>istd
    for i in range(n):
        for j in range(w):
            out[i, j0 + j] = (x[i, j0 + j] - mu[j]) * a[j] + beta[j0 + j]


def batchnorm_forward_eval(
    const floating[:, ::1] x,
    const floating[::1] gamma,
    const floating[::1] beta,
    const floating[::1] running_mean,
    const floating[::1] running_var,
    floating[:, ::1] out,
    floating[::1] mean_out,
    floating[::1] inv_std_out,
    double eps,
):
    """Eval forward from running statistics.

    ``out = gamma * (x - r_mean) / sqrt(r_var + eps) + beta``; writes the
    statistics used (``r_mean`` and ``1/sqrt(r_var + eps)``) to ``mean_out``
    and ``inv_std_out`` for the backward pass. ``out`` may be ``x`` itself.
    """
    cdef Py_ssize_t n = x.shape[0], dim = x.shape[1]
    cdef Py_ssize_t width = _block_width(n, dim)
    cdef Py_ssize_t nblocks = (dim + width - 1) // width
    cdef Py_ssize_t k, j0
    for k in prange(nblocks, nogil=True, schedule="static", use_threads_if=nblocks > 1):
        j0 = k * width
        _bn_eval_block(x, gamma, beta, running_mean, running_var, out,
                       mean_out, inv_std_out, eps, j0, min(width, dim - j0))


cdef void _bn_backward_train_block(
    const floating[:, ::1] dout,
    const floating[:, ::1] x_hat,
    const floating[::1] gamma,
    const floating[::1] inv_std,
    floating[:, ::1] dx_out,
    floating[::1] dgamma_out,
    floating[::1] dbeta_out,
    Py_ssize_t j0,
    Py_ssize_t w,
) noexcept nogil:
    cdef double sdy[BLOCK]
    cdef double sdyx[BLOCK]
    cdef floating k[BLOCK]
    cdef floating mdy[BLOCK]
    cdef floating mdyx[BLOCK]
    cdef Py_ssize_t n = dout.shape[0]
    cdef Py_ssize_t i, j
    cdef double dy
    for j in range(w):
        sdy[j] = 0.0
        sdyx[j] = 0.0
    for i in range(n):
        for j in range(w):
            dy = dout[i, j0 + j]
            sdy[j] += dy
            sdyx[j] += dy * x_hat[i, j0 + j]
    for j in range(w):
        dbeta_out[j0 + j] = <floating>sdy[j]
        dgamma_out[j0 + j] = <floating>sdyx[j]
        k[j] = <floating>(<double>gamma[j0 + j] * inv_std[j0 + j])
        mdy[j] = <floating>(sdy[j] / n)
        mdyx[j] = <floating>(sdyx[j] / n)
    # dx = gamma * inv_std * (dy - mean(dy) - x_hat * mean(dy * x_hat))
    for i in range(n):
        for j in range(w):
            dx_out[i, j0 + j] = k[j] * (
                dout[i, j0 + j] - mdy[j] - x_hat[i, j0 + j] * mdyx[j])


def batchnorm_backward_train(
    const floating[:, ::1] dout,
    const floating[:, ::1] x_hat,
    const floating[::1] gamma,
    const floating[::1] inv_std,
    floating[:, ::1] dx_out,
    floating[::1] dgamma_out,
    floating[::1] dbeta_out,
):
    """Backward of the training forward, from the cached ``x_hat``.

    ``dbeta = sum(dy, 0)``, ``dgamma = sum(dy * x_hat, 0)``,
    ``dx = gamma * inv_std / n * (n dy - dbeta - x_hat * dgamma)``.
    ``dx_out`` may be ``dout`` itself.
    """
    _bn_backward_train(dout, x_hat, gamma, inv_std, dx_out, dgamma_out, dbeta_out)


cdef void _bn_backward_train(
    const floating[:, ::1] dout,
    const floating[:, ::1] x_hat,
    const floating[::1] gamma,
    const floating[::1] inv_std,
    floating[:, ::1] dx_out,
    floating[::1] dgamma_out,
    floating[::1] dbeta_out,
) noexcept nogil:
    cdef Py_ssize_t n = dout.shape[0], dim = dout.shape[1]
    cdef Py_ssize_t width = _block_width(n, dim)
    cdef Py_ssize_t nblocks = (dim + width - 1) // width
    cdef Py_ssize_t kb, j0
    for kb in prange(nblocks, schedule="static", use_threads_if=nblocks > 1):
        j0 = kb * width
        _bn_backward_train_block(dout, x_hat, gamma, inv_std, dx_out,
                                 dgamma_out, dbeta_out, j0, min(width, dim - j0))


cdef void _bn_backward_eval_block(
    const floating[:, ::1] dout,
    const floating[:, ::1] x,
    const floating[::1] gamma,
    const floating[::1] mean,
    const floating[::1] inv_std,
    floating[:, ::1] dx_out,
    floating[::1] dgamma_out,
    floating[::1] dbeta_out,
    Py_ssize_t j0,
    Py_ssize_t w,
) noexcept nogil:
    cdef double sdy[BLOCK]
    cdef double sdyx[BLOCK]
    cdef floating k[BLOCK]
    cdef Py_ssize_t n = dout.shape[0]
    cdef Py_ssize_t i, j
    cdef double dy
    for j in range(w):
        sdy[j] = 0.0
        sdyx[j] = 0.0
        k[j] = <floating>(<double>gamma[j0 + j] * inv_std[j0 + j])
    for i in range(n):
        for j in range(w):
            dy = dout[i, j0 + j]
            sdy[j] += dy
            sdyx[j] += dy * ((x[i, j0 + j] - <double>mean[j0 + j]) * inv_std[j0 + j])
            dx_out[i, j0 + j] = k[j] * dout[i, j0 + j]
    for j in range(w):
        dbeta_out[j0 + j] = <floating>sdy[j]
        dgamma_out[j0 + j] = <floating>sdyx[j]


def batchnorm_backward_eval(
    const floating[:, ::1] dout,
    const floating[:, ::1] x,
    const floating[::1] gamma,
    const floating[::1] mean,
    const floating[::1] inv_std,
    floating[:, ::1] dx_out,
    floating[::1] dgamma_out,
    floating[::1] dbeta_out,
):
    """Backward of the eval forward (statistics are constants).

    ``x_hat = (x - mean) * inv_std``; ``dbeta = sum(dy, 0)``,
    ``dgamma = sum(dy * x_hat, 0)``, ``dx = gamma * inv_std * dy``.
    ``dx_out`` may be ``dout`` itself (each element is read before written).
    """
    cdef Py_ssize_t n = dout.shape[0], dim = dout.shape[1]
    cdef Py_ssize_t width = _block_width(n, dim)
    cdef Py_ssize_t nblocks = (dim + width - 1) // width
    cdef Py_ssize_t kb, j0
    for kb in prange(nblocks, nogil=True, schedule="static", use_threads_if=nblocks > 1):
        j0 = kb * width
        _bn_backward_eval_block(dout, x, gamma, mean, inv_std, dx_out,
                                dgamma_out, dbeta_out, j0, min(width, dim - j0))


# --------------------------------------------------------------------------
# Softmax and cross-entropy
# --------------------------------------------------------------------------

# The row helpers take raw pointers to one row (its memoryview element
# addresses, taken where the row index is bounds-checked in a debug build):
# passing memoryview slices by value per row costs more than a 10-class row.

cdef inline floating _row_max(const floating *z, Py_ssize_t ncls) noexcept nogil:
    # LANES independent maxima (one vector register) break the compare chain.
    # NaN never wins a comparison, so NaN logits are skipped here and propagate
    # through exp(z - max) instead.
    cdef floating m[LANES]
    cdef Py_ssize_t c, k
    cdef Py_ssize_t stop = ncls - ncls % LANES
    for k in range(LANES):
        m[k] = z[0]
    c = 0
    while c < stop:
        for k in range(LANES):
            if z[c + k] > m[k]:
                m[k] = z[c + k]
        c += LANES
    for c in range(stop, ncls):
        if z[c] > m[0]:
            m[0] = z[c]
    for k in range(1, LANES):
        if m[k] > m[0]:
            m[0] = m[k]
    return m[0]


cdef inline double _exp_row(const floating *z, floating *e, Py_ssize_t ncls,
                            floating zmax) noexcept nogil:
    """e = exp(z - zmax) over one row; returns the row sum.

    The sum runs in LANES partial sums of the data's dtype over chunks of
    CHUNK elements (each partial adds CHUNK / LANES terms in [0, 1]), and the
    chunks are accumulated in double: vectorised, deterministic, and within a
    few ulp of a double sum.
    """
    cdef floating s[LANES]
    cdef Py_ssize_t c, c0, q, k
    cdef Py_ssize_t stop = ncls - ncls % CHUNK
    cdef double total = 0.0, part
    if floating is float:
        fastnn_exp_shifted_f32(z, e, ncls, zmax)
    else:
        for c in range(ncls):
            e[c] = exp(z[c] - zmax)
    c0 = 0
    while c0 < stop:
        for k in range(LANES):
            s[k] = 0
        for q in range(CHUNK // LANES):
            for k in range(LANES):
                s[k] += e[c0 + q * LANES + k]
        part = 0.0
        for k in range(LANES):
            part += s[k]
        total += part
        c0 += CHUNK
    for c in range(stop, ncls):
        total += e[c]
    return total


cdef inline double _weighted_gap(const floating *z, const floating *w, Py_ssize_t ncls,
                                 double zmax) noexcept nogil:
    """sum_c w_c (zmax - z_c) (w NULL: all ones): the smoothing term without log-sum-exp."""
    cdef Py_ssize_t c
    cdef double acc = 0.0
    if w != NULL:
        for c in range(ncls):
            acc += w[c] * (zmax - z[c])
    else:
        for c in range(ncls):
            acc += zmax - z[c]
    return acc


cdef inline double _ce_row(
    const floating *z,
    Py_ssize_t y,
    const floating *w,
    floating *g,
    Py_ssize_t ncls,
    double smoothing,
    double weight_total,
    double inv_norm,
) noexcept nogil:
    """One row's weighted loss; writes the row's gradient to g (which may be z)."""
    cdef Py_ssize_t c
    cdef double zmax = _row_max(z, ncls)
    cdef double zy = z[y]
    cdef double wy = w[y] if w != NULL else 1.0
    cdef double s_c = smoothing / ncls
    cdef double gap = 0.0
    cdef double total, lse, loss, a
    cdef floating fa, fb
    if smoothing != 0.0:
        # Read all logits before the gradient row (which may alias them).
        gap = _weighted_gap(z, w, ncls, zmax)
    total = _exp_row(z, g, ncls, <floating>zmax)  # sum(exp(z - zmax)) >= 1
    lse = log(total)  # log-sum-exp - zmax
    loss = (1.0 - smoothing) * wy * (lse + zmax - zy)
    if smoothing != 0.0:
        loss += s_c * (weight_total * lse + gap)
    # grad_c = [(1-s) wy (p_c - [c == y]) + (s/C)(W p_c - w_c)] / norm,
    # with p_c = e_c / total.
    a = ((1.0 - smoothing) * wy + s_c * weight_total) * inv_norm / total
    fa = <floating>a
    if smoothing != 0.0 and w != NULL:
        for c in range(ncls):
            g[c] = <floating>(g[c] * a - s_c * w[c] * inv_norm)
    else:
        fb = <floating>(s_c * inv_norm)
        for c in range(ncls):
            g[c] = g[c] * fa - fb
    g[y] = <floating>(g[y] - (1.0 - smoothing) * wy * inv_norm)
    return loss


def softmax_cross_entropy(
    const floating[:, ::1] logits,
    const label_t[::1] labels,
    const floating[::1] class_weight,
    floating[:, ::1] grad_out,
    double[::1] row_loss_out,
    double label_smoothing,
    double inv_norm,
):
    """Fused softmax + cross-entropy: loss and gradient w.r.t. the logits.

    With ``s = label_smoothing``, ``w = class_weight`` (``None``: all ones),
    ``W = sum(w)``, ``lsm = log_softmax(logits)`` (max subtracted per row):
    ``row_loss_n = -(1-s) w[y_n] lsm[n, y_n] - (s/C) sum_c w_c lsm[n, c]``,
    ``loss = sum_n row_loss_n * inv_norm``, with ``inv_norm = 1/sum_n w[y_n]``
    (PyTorch's ``CrossEntropyLoss`` mean reduction), and
    ``grad[n, c] = ((1-s) w[y_n] (p_nc - [c == y_n]) + (s/C)(W p_nc - w_c)) * inv_norm``.
    Per-row losses go to ``row_loss_out`` and are summed in row order, so the
    result does not depend on the thread count. ``grad_out`` may be ``logits``.
    """
    return _softmax_ce(logits, labels, class_weight, grad_out, row_loss_out, label_smoothing,
                       inv_norm)


cdef double _softmax_ce(
    const floating[:, ::1] logits,
    const label_t[::1] labels,
    const floating[::1] class_weight,
    floating[:, ::1] grad_out,
    double[::1] row_loss_out,
    double label_smoothing,
    double inv_norm,
) noexcept nogil:
    cdef Py_ssize_t n = logits.shape[0], ncls = logits.shape[1]
    cdef Py_ssize_t i, c
    cdef const floating *w = NULL
    cdef double weight_total = ncls
    cdef double total = 0.0
    cdef bint threads = n * ncls >= PARALLEL_MIN_ELEMENTS and n > 1
    if class_weight is not None:
        w = &class_weight[0]
        weight_total = 0.0
        for c in range(ncls):
            weight_total += class_weight[c]
    for i in prange(n, schedule="static", use_threads_if=threads):
        row_loss_out[i] = _ce_row(&logits[i, 0], labels[i], w, &grad_out[i, 0], ncls,
                                  label_smoothing, weight_total, inv_norm)
    for i in range(n):
        total += row_loss_out[i]
    return total * inv_norm


def softmax(const floating[:, ::1] logits, floating[:, ::1] out):
    """Row softmax with the row max subtracted. ``out`` may be ``logits``."""
    cdef Py_ssize_t n = logits.shape[0], ncls = logits.shape[1]
    cdef Py_ssize_t i, c
    cdef floating inv
    cdef bint threads = n * ncls >= PARALLEL_MIN_ELEMENTS and n > 1
    for i in prange(n, nogil=True, schedule="static", use_threads_if=threads):
        inv = <floating>(1.0 / _exp_row(&logits[i, 0], &out[i, 0], ncls,
                                         _row_max(&logits[i, 0], ncls)))
        for c in range(ncls):
            out[i, c] = out[i, c] * inv


# --------------------------------------------------------------------------
# Optimizer updates over one flat buffer, in place, one pass
# --------------------------------------------------------------------------

def adam_update(
    floating[::1] param,
    const floating[::1] grad,
    floating[::1] m,
    floating[::1] v,
    floating[::1] v_max,
    double lr,
    double beta1,
    double beta2,
    double eps,
    double weight_decay,
    bint decoupled,
    double bias_correction1,
    double bias_correction2,
):
    """One Adam / AdamW step (PyTorch placement of eps), in place.

    ``g = grad + wd * param`` (L2, when not decoupled) or
    ``param *= 1 - lr * wd`` (AdamW, decoupled);
    ``m = b1 m + (1-b1) g``; ``v = b2 v + (1-b2) g**2``;
    with amsgrad (``v_max`` not None) ``v_max = max(v_max, v)`` is used for v;
    ``param -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)``,
    ``bc1 = 1 - b1**t``, ``bc2 = 1 - b2**t`` (passed in by the caller).
    """
    _adam(param, grad, m, v, v_max, v_max is not None, lr, beta1, beta2, eps, weight_decay,
          decoupled, bias_correction1, bias_correction2)


cdef void _adam(
    floating[::1] param,
    const floating[::1] grad,
    floating[::1] m,
    floating[::1] v,
    floating[::1] v_max,
    bint amsgrad,
    double lr,
    double beta1,
    double beta2,
    double eps,
    double weight_decay,
    bint decoupled,
    double bias_correction1,
    double bias_correction2,
) noexcept nogil:
    cdef Py_ssize_t i, n = param.shape[0]
    cdef floating b1 = <floating>beta1, b2 = <floating>beta2
    cdef floating one_b1 = <floating>(1.0 - beta1), one_b2 = <floating>(1.0 - beta2)
    cdef floating step_size = <floating>(lr / bias_correction1)
    cdef floating inv_bc2_sqrt = <floating>(1.0 / sqrt(bias_correction2))
    cdef floating feps = <floating>eps
    cdef floating l2 = <floating>(0.0 if decoupled else weight_decay)
    cdef floating shrink = <floating>(1.0 - lr * weight_decay if decoupled else 1.0)
    cdef floating g, mi, vi, p
    cdef bint threads = n >= 4 * PARALLEL_MIN_ELEMENTS
    if amsgrad:
        for i in prange(n, schedule="static", use_threads_if=threads):
            p = param[i]
            g = grad[i] + l2 * p
            mi = b1 * m[i] + one_b1 * g
            vi = b2 * v[i] + one_b2 * g * g
            m[i] = mi
            v[i] = vi
            if vi > v_max[i]:
                v_max[i] = vi
            param[i] = p * shrink - step_size * (mi / (_sqrt(v_max[i]) * inv_bc2_sqrt + feps))
    elif weight_decay == 0.0:
        for i in prange(n, schedule="static", use_threads_if=threads):
            g = grad[i]
            mi = b1 * m[i] + one_b1 * g
            vi = b2 * v[i] + one_b2 * g * g
            m[i] = mi
            v[i] = vi
            param[i] = param[i] - step_size * (mi / (_sqrt(vi) * inv_bc2_sqrt + feps))
    else:
        for i in prange(n, schedule="static", use_threads_if=threads):
            p = param[i]
            g = grad[i] + l2 * p
            mi = b1 * m[i] + one_b1 * g
            vi = b2 * v[i] + one_b2 * g * g
            m[i] = mi
            v[i] = vi
            param[i] = p * shrink - step_size * (mi / (_sqrt(vi) * inv_bc2_sqrt + feps))


def sgd_update(
    floating[::1] param,
    const floating[::1] grad,
    floating[::1] velocity,
    double lr,
    double momentum,
    double dampening,
    bint nesterov,
    double weight_decay,
    bint first_step,
):
    """One SGD step (PyTorch semantics), in place.

    ``g = grad + wd * param``; with momentum (``velocity`` not None)
    ``buf = g`` on the first step, else ``buf = mu buf + (1 - dampening) g``;
    ``g = g + mu buf`` (Nesterov) or ``g = buf``; ``param -= lr * g``.
    """
    cdef Py_ssize_t i, n = param.shape[0]
    cdef floating flr = <floating>lr, mu = <floating>momentum
    cdef floating damp = <floating>(1.0 - dampening), wd = <floating>weight_decay
    cdef floating g, buf
    cdef bint threads = n >= 4 * PARALLEL_MIN_ELEMENTS
    if velocity is None:
        for i in prange(n, nogil=True, schedule="static", use_threads_if=threads):
            param[i] = param[i] - flr * (grad[i] + wd * param[i])
        return
    for i in prange(n, nogil=True, schedule="static", use_threads_if=threads):
        g = grad[i] + wd * param[i]
        if first_step:
            buf = g
        else:
            buf = mu * velocity[i] + damp * g
        velocity[i] = buf
        if nesterov:
            g = g + mu * buf
        else:
            g = buf
        param[i] = param[i] - flr * g


def rmsprop_update(
    floating[::1] param,
    const floating[::1] grad,
    floating[::1] square_avg,
    floating[::1] momentum_buffer,
    floating[::1] grad_avg,
    double lr,
    double alpha,
    double eps,
    double weight_decay,
    double momentum,
):
    """One RMSprop step (PyTorch semantics), in place.

    ``g = grad + wd * param``; ``sq = alpha sq + (1 - alpha) g**2``;
    centered (``grad_avg`` not None): ``ga = alpha ga + (1 - alpha) g`` and
    ``avg = sqrt(max(sq - ga**2, 0)) + eps``, else ``avg = sqrt(sq) + eps``;
    with momentum (``momentum_buffer`` not None) ``buf = mu buf + g / avg``,
    ``param -= lr * buf``, else ``param -= lr * g / avg``.
    """
    cdef Py_ssize_t i, n = param.shape[0]
    cdef bint centered = grad_avg is not None
    cdef bint use_momentum = momentum_buffer is not None
    cdef floating flr = <floating>lr, a = <floating>alpha, one_a = <floating>(1.0 - alpha)
    cdef floating feps = <floating>eps, wd = <floating>weight_decay, mu = <floating>momentum
    cdef floating g, sq, ga, var, step
    cdef bint threads = n >= 4 * PARALLEL_MIN_ELEMENTS
    for i in prange(n, nogil=True, schedule="static", use_threads_if=threads):
        g = grad[i] + wd * param[i]
        sq = a * square_avg[i] + one_a * g * g
        square_avg[i] = sq
        if centered:
            ga = a * grad_avg[i] + one_a * g
            grad_avg[i] = ga
            var = sq - ga * ga
            if var < 0:
                var = 0
            step = g / (_sqrt(var) + feps)
        else:
            step = g / (_sqrt(sq) + feps)
        if use_momentum:
            step = mu * momentum_buffer[i] + step
            momentum_buffer[i] = step
        param[i] = param[i] - flr * step


# --------------------------------------------------------------------------
# Planned training steps
# --------------------------------------------------------------------------
# A planned step is a list of Op objects built once per batch shape by
# ``fastnn.ops`` (which validates every array then: dtype, shape, contiguity,
# aliasing). Each op keeps its arrays as typed memoryviews, acquired once, so a
# step costs one C call per op instead of a validated Python call with a buffer
# acquisition per argument (~0.5 us each: more than a tiny layer's arithmetic).
# Ops hold both a float32 and a float64 set of views; ``f64`` says which is bound.

ACTIVATIONS = {"identity": ACT_NONE, "relu": ACT_RELU, "leaky_relu": ACT_LEAKY_RELU,
               "tanh": ACT_TANH, "sigmoid": ACT_SIGMOID}


cdef void _transpose(const floating[:, ::1] src, floating[:, ::1] dst) noexcept nogil:
    cdef Py_ssize_t n = src.shape[0], m = src.shape[1], i, j
    for i in range(n):
        for j in range(m):
            dst[j, i] = src[i, j]


cdef void _small_gemm(const floating[:, ::1] a, bint ta, const floating[:, ::1] b,
                      floating[:, ::1] c, const floating[::1] bias) noexcept nogil:
    """c = op(a) @ b (+ bias), op(a) = a.T if ta (read in place, strided)."""
    cdef const floating *bias_ptr = NULL
    cdef Py_ssize_t m = a.shape[1] if ta else a.shape[0]
    cdef Py_ssize_t k = a.shape[0] if ta else a.shape[1]
    cdef Py_ssize_t rsa = 1 if ta else a.shape[1]
    cdef Py_ssize_t csa = a.shape[1] if ta else 1
    if bias is not None:
        bias_ptr = &bias[0]
    if floating is float:
        fastnn_gemm_f32(m, k, b.shape[1], &a[0, 0], rsa, csa,
                        &b[0, 0], b.shape[1], &c[0, 0], c.shape[1], bias_ptr)
    else:
        fastnn_gemm_f64(m, k, b.shape[1], &a[0, 0], rsa, csa,
                        &b[0, 0], b.shape[1], &c[0, 0], c.shape[1], bias_ptr)


cdef void _add_bias(floating[:, ::1] c, const floating[::1] bias) noexcept nogil:
    cdef Py_ssize_t n = c.shape[0], m = c.shape[1], i, j
    cdef floating *row
    for i in range(n):
        row = &c[i, 0]
        for j in range(m):
            row[j] = row[j] + bias[j]


cdef void _column_sums(const floating[:, ::1] d, floating[::1] out) noexcept nogil:
    """out[j] = sum_i d[i, j], accumulated in double in row order."""
    cdef double acc[BLOCK]
    cdef Py_ssize_t n = d.shape[0], m = d.shape[1], i, j, j0 = 0, w
    while j0 < m:
        w = min(<Py_ssize_t>BLOCK, m - j0)
        for j in range(w):
            acc[j] = 0.0
        for i in range(n):
            for j in range(w):
                acc[j] += d[i, j0 + j]
        for j in range(w):
            out[j0 + j] = <floating>acc[j]
        j0 += w


cdef class Op:
    """One step of a planned pass."""

    cdef int run(self) except -1:
        return 0

    def __call__(self):
        """Run this op alone (tests)."""
        self.run()


cdef class GatherOp(Op):
    """Batch rows ``order[start:start + n]`` of (X, labels) into (x_out, labels_out)."""
    cdef const float[:, ::1] X32
    cdef const double[:, ::1] X64
    cdef float[:, ::1] out32
    cdef double[:, ::1] out64
    cdef const int64_t[::1] labels
    cdef int64_t[::1] labels_out
    cdef const int64_t[::1] order
    cdef public Py_ssize_t start
    cdef bint f64

    def __init__(self, X, labels, order, x_out, labels_out, bint f64):
        self.f64 = f64
        if f64:
            self.X64, self.out64 = X, x_out
        else:
            self.X32, self.out32 = X, x_out
        self.labels, self.labels_out, self.order = labels, labels_out, order
        self.start = 0

    def set_order(self, order):
        self.order = order

    cdef int run(self) except -1:
        cdef Py_ssize_t r, idx, n = self.labels_out.shape[0]
        cdef Py_ssize_t rows = self.labels.shape[0]
        cdef bint bad = False
        if self.start < 0 or self.start > self.order.shape[0] - n:
            raise ValueError(f"rows {self.start}..{self.start + n - 1} of an order of "
                             f"{self.order.shape[0]} indices")
        with nogil:
            for r in range(n):
                idx = self.order[self.start + r]
                bad = bad | (idx < 0) | (idx >= rows)
        if bad:
            raise ValueError(f"order holds row indices outside [0, {rows})")
        with nogil:
            for r in range(n):
                idx = self.order[self.start + r]
                self.labels_out[r] = self.labels[idx]
                if self.f64:
                    memcpy(&self.out64[r, 0], &self.X64[idx, 0],
                           self.out64.shape[1] * sizeof(double))
                else:
                    memcpy(&self.out32[r, 0], &self.X32[idx, 0],
                           self.out32.shape[1] * sizeof(float))
        return 0


cdef class GemmOp(Op):
    """``c = op(a) @ op(b) (+ bias)``, op = transpose where asked (a read strided in
    place; b first copied to a scratch buffer), in the register-blocked C product: for
    products too small for a BLAS call."""
    cdef const float[:, ::1] a32, b32
    cdef const double[:, ::1] a64, b64
    cdef float[:, ::1] bt32, c32
    cdef double[:, ::1] bt64, c64
    cdef const float[::1] vbias32
    cdef const double[::1] vbias64
    cdef bint f64, ta, tb

    def __init__(self, a, b, c, bias, bint ta, bint tb, bt, bint f64):
        self.f64, self.ta, self.tb = f64, ta, tb
        # An unassigned memoryview attribute is not None (it is unset): say None.
        self.vbias32 = None
        self.vbias64 = None
        if f64:
            self.a64, self.b64, self.c64 = a, b, c
            if bias is not None:
                self.vbias64 = bias
            if tb:
                self.bt64 = bt
        else:
            self.a32, self.b32, self.c32 = a, b, c
            if bias is not None:
                self.vbias32 = bias
            if tb:
                self.bt32 = bt

    cdef int run(self) except -1:
        with nogil:
            if self.f64:
                if self.tb:
                    _transpose(self.b64, self.bt64)
                _small_gemm(self.a64, self.ta, self.bt64 if self.tb else self.b64, self.c64,
                            self.vbias64)
            else:
                if self.tb:
                    _transpose(self.b32, self.bt32)
                _small_gemm(self.a32, self.ta, self.bt32 if self.tb else self.b32, self.c32,
                            self.vbias32)
        return 0


cdef class MatmulOp(Op):
    """``c = a @ b (+ bias)`` through NumPy's matmul (BLAS), for products large
    enough that the call's overhead does not matter; a and b may be transposed views."""
    cdef object matmul, a, b, c
    cdef float[:, ::1] c32
    cdef double[:, ::1] c64
    cdef const float[::1] bias32
    cdef const double[::1] bias64
    cdef bint f64, has_bias

    def __init__(self, matmul, a, b, c, bias, bint f64):
        self.matmul, self.a, self.b, self.c = matmul, a, b, c
        self.f64, self.has_bias = f64, bias is not None
        if f64:
            self.c64 = c
            if bias is not None:
                self.bias64 = bias
        else:
            self.c32 = c
            if bias is not None:
                self.bias32 = bias

    cdef int run(self) except -1:
        self.matmul(self.a, self.b, out=self.c)
        if self.has_bias:
            with nogil:
                if self.f64:
                    _add_bias(self.c64, self.bias64)
                else:
                    _add_bias(self.c32, self.bias32)
        return 0


cdef class ColumnSumOp(Op):
    """``out = d.sum(axis=0)`` (a Dense layer's bias gradient)."""
    cdef const float[:, ::1] d32
    cdef const double[:, ::1] d64
    cdef float[::1] out32
    cdef double[::1] out64
    cdef bint f64

    def __init__(self, d, out, bint f64):
        self.f64 = f64
        if f64:
            self.d64, self.out64 = d, out
        else:
            self.d32, self.out32 = d, out

    cdef int run(self) except -1:
        with nogil:
            if self.f64:
                _column_sums(self.d64, self.out64)
            else:
                _column_sums(self.d32, self.out32)
        return 0


cdef class ActivationOp(Op):
    """``y = act(y)`` in place."""
    cdef float[:, ::1] y32
    cdef double[:, ::1] y64
    cdef int act
    cdef double alpha
    cdef bint f64

    def __init__(self, y, int act, double alpha, bint f64):
        self.f64, self.act, self.alpha = f64, act, alpha
        if f64:
            self.y64 = y
        else:
            self.y32 = y

    cdef int run(self) except -1:
        with nogil:
            if self.f64:
                _activate(self.y64, 0, self.y64.shape[1], self.act, self.alpha)
            else:
                _activate(self.y32, 0, self.y32.shape[1], self.act, self.alpha)
        return 0


cdef class ActivationBackwardOp(Op):
    """``d *= act'``, computed from the activation's output y (read only)."""
    cdef const float[:, ::1] y32
    cdef const double[:, ::1] y64
    cdef float[:, ::1] d32
    cdef double[:, ::1] d64
    cdef int act
    cdef double alpha
    cdef bint f64

    def __init__(self, y, d, int act, double alpha, bint f64):
        self.f64, self.act, self.alpha = f64, act, alpha
        if f64:
            self.y64, self.d64 = y, d
        else:
            self.y32, self.d32 = y, d

    cdef int run(self) except -1:
        with nogil:
            if self.f64:
                _activation_backward(self.y64, self.d64, self.act, self.alpha)
            else:
                _activation_backward(self.y32, self.d32, self.act, self.alpha)
        return 0


cdef class BatchNormTrainOp(Op):
    """Training-mode batch norm forward (running statistics updated), then ``act``."""
    cdef const float[:, ::1] x32
    cdef const double[:, ::1] x64
    cdef const float[::1] gamma32, beta32
    cdef const double[::1] gamma64, beta64
    cdef float[:, ::1] out32, xhat32
    cdef double[:, ::1] out64, xhat64
    cdef float[::1] mean32, istd32, rmean32, rvar32
    cdef double[::1] mean64, istd64, rmean64, rvar64
    cdef double momentum, eps, alpha
    cdef int act
    cdef bint f64

    def __init__(self, x, gamma, beta, out, x_hat, mean, inv_std, running_mean, running_var,
                 double momentum, double eps, int act, double alpha, bint f64):
        self.momentum, self.eps, self.act, self.alpha, self.f64 = momentum, eps, act, alpha, f64
        if f64:
            self.x64, self.gamma64, self.beta64, self.out64, self.xhat64 = (
                x, gamma, beta, out, x_hat)
            self.mean64, self.istd64, self.rmean64, self.rvar64 = (
                mean, inv_std, running_mean, running_var)
        else:
            self.x32, self.gamma32, self.beta32, self.out32, self.xhat32 = (
                x, gamma, beta, out, x_hat)
            self.mean32, self.istd32, self.rmean32, self.rvar32 = (
                mean, inv_std, running_mean, running_var)

    cdef int run(self) except -1:
        with nogil:
            if self.f64:
                _bn_train(self.x64, self.gamma64, self.beta64, self.out64, self.xhat64,
                          self.mean64, self.istd64, self.rmean64, self.rvar64, True,
                          self.momentum, self.eps, self.act, self.alpha)
            else:
                _bn_train(self.x32, self.gamma32, self.beta32, self.out32, self.xhat32,
                          self.mean32, self.istd32, self.rmean32, self.rvar32, True,
                          self.momentum, self.eps, self.act, self.alpha)
        return 0


cdef class BatchNormTrainBackwardOp(Op):
    """``dout *= act'`` (from the activation's output y), then the batch-norm backward.
    ``dout`` is written only with an activation (else it may be read-only)."""
    cdef float[:, ::1] dout32, dx32
    cdef double[:, ::1] dout64, dx64
    cdef const float[:, ::1] cdout32
    cdef const double[:, ::1] cdout64
    cdef const float[:, ::1] y32, xhat32
    cdef const double[:, ::1] y64, xhat64
    cdef const float[::1] gamma32, istd32
    cdef const double[::1] gamma64, istd64
    cdef float[::1] dgamma32, dbeta32
    cdef double[::1] dgamma64, dbeta64
    cdef int act
    cdef double alpha
    cdef bint f64

    def __init__(self, dout, y, x_hat, gamma, inv_std, dx, dgamma, dbeta, int act,
                 double alpha, bint f64):
        self.act, self.alpha, self.f64 = act, alpha, f64
        if f64:
            self.cdout64, self.xhat64, self.gamma64, self.istd64 = dout, x_hat, gamma, inv_std
            self.dx64, self.dgamma64, self.dbeta64 = dx, dgamma, dbeta
            if act != ACT_NONE:
                self.y64, self.dout64 = y, dout
        else:
            self.cdout32, self.xhat32, self.gamma32, self.istd32 = dout, x_hat, gamma, inv_std
            self.dx32, self.dgamma32, self.dbeta32 = dx, dgamma, dbeta
            if act != ACT_NONE:
                self.y32, self.dout32 = y, dout

    cdef int run(self) except -1:
        with nogil:
            if self.f64:
                if self.act != ACT_NONE:
                    _activation_backward(self.y64, self.dout64, self.act, self.alpha)
                _bn_backward_train(self.cdout64, self.xhat64, self.gamma64, self.istd64,
                                   self.dx64, self.dgamma64, self.dbeta64)
            else:
                if self.act != ACT_NONE:
                    _activation_backward(self.y32, self.dout32, self.act, self.alpha)
                _bn_backward_train(self.cdout32, self.xhat32, self.gamma32, self.istd32,
                                   self.dx32, self.dgamma32, self.dbeta32)
        return 0


cdef class SoftmaxCrossEntropyOp(Op):
    """Fused softmax cross-entropy over int64 labels (mean, or class-weighted mean);
    also counts the rows whose first maximal logit is the label (accuracy)."""
    cdef const float[:, ::1] z32
    cdef const double[:, ::1] z64
    cdef const float[::1] w32
    cdef const double[::1] w64
    cdef float[:, ::1] g32
    cdef double[:, ::1] g64
    cdef const int64_t[::1] labels
    cdef double[::1] row_loss
    cdef double smoothing
    cdef bint f64, weighted
    cdef readonly double loss
    cdef readonly Py_ssize_t correct

    def __init__(self, logits, labels, class_weight, grad, row_loss, double smoothing,
                 bint f64):
        self.f64, self.smoothing = f64, smoothing
        self.weighted = class_weight is not None
        self.w32 = None  # (unset, not None, until assigned)
        self.w64 = None
        if f64:
            self.z64, self.g64 = logits, grad
            if class_weight is not None:
                self.w64 = class_weight
        else:
            self.z32, self.g32 = logits, grad
            if class_weight is not None:
                self.w32 = class_weight
        self.labels, self.row_loss = labels, row_loss
        self.loss, self.correct = 0.0, 0

    cdef int run(self) except -1:
        cdef Py_ssize_t n = self.labels.shape[0], i
        cdef int64_t ncls = self.g64.shape[1] if self.f64 else self.g32.shape[1]
        cdef double total = 0.0
        cdef bint bad = False
        with nogil:
            for i in range(n):
                bad = bad | (self.labels[i] < 0) | (self.labels[i] >= ncls)
        if bad:
            raise ValueError(f"labels must lie in [0, {ncls})")
        with nogil:
            if self.f64:
                self.correct = _count_correct(self.z64, self.labels)
                if self.weighted:
                    for i in range(n):
                        total += self.w64[self.labels[i]]
                else:
                    total = n
                if total == 0.0:
                    with gil:
                        raise ValueError("the class weights of this batch's labels sum to "
                                         "zero: the weighted mean loss is undefined")
                self.loss = _softmax_ce(self.z64, self.labels, self.w64, self.g64,
                                        self.row_loss, self.smoothing, 1.0 / total)
            else:
                self.correct = _count_correct(self.z32, self.labels)
                if self.weighted:
                    for i in range(n):
                        total += self.w32[self.labels[i]]
                else:
                    total = n
                if total == 0.0:
                    with gil:
                        raise ValueError("the class weights of this batch's labels sum to "
                                         "zero: the weighted mean loss is undefined")
                self.loss = _softmax_ce(self.z32, self.labels, self.w32, self.g32,
                                        self.row_loss, self.smoothing, 1.0 / total)
        return 0


cdef Py_ssize_t _count_correct(const floating[:, ::1] z, const int64_t[::1] labels) noexcept nogil:
    cdef Py_ssize_t n = z.shape[0], ncls = z.shape[1], i, c, best, hits = 0
    cdef const floating *row
    for i in range(n):
        row = &z[i, 0]
        best = 0
        for c in range(1, ncls):
            if row[c] > row[best]:
                best = c
        hits += best == labels[i]
    return hits


cdef class Program:
    """The ops of one planned pass, run in order by one call."""
    cdef list _ops
    cdef GatherOp gather
    cdef SoftmaxCrossEntropyOp loss_op

    def __init__(self, list ops, GatherOp gather, SoftmaxCrossEntropyOp loss_op):
        for op in ops:
            if not isinstance(op, Op):
                raise TypeError(f"Program takes Op objects; got {type(op).__name__}")
        self._ops, self.gather, self.loss_op = list(ops), gather, loss_op

    @property
    def ops(self):
        """The ops, in order (a tuple: the program's own list cannot be changed)."""
        return tuple(self._ops)

    def set_order(self, order):
        if self.gather is not None:
            self.gather.set_order(order)

    def run(self, Py_ssize_t start=0):
        """Run every op (the gather from row ``start`` of the order); the loss."""
        cdef Op op
        if self.gather is not None:
            self.gather.start = start
        for op in self._ops:
            op.run()
        return self.loss_op.loss if self.loss_op is not None else 0.0

    @property
    def correct(self):
        return self.loss_op.correct if self.loss_op is not None else 0


cdef class AdamOp:
    """An Adam/AdamW update bound to its (validated) flat buffers: ``update`` costs one
    C call, against a validated ``ops.adam_update`` per step."""
    cdef float[::1] p32, m32, v32, vm32
    cdef const float[::1] g32
    cdef double[::1] p64, m64, v64, vm64
    cdef const double[::1] g64
    cdef readonly tuple arrays
    cdef bint f64, amsgrad

    def __init__(self, param, grad, m, v, v_max, bint f64):
        self.f64, self.amsgrad = f64, v_max is not None
        self.arrays = (param, grad, m, v, v_max)
        self.vm32 = None  # (unset, not None, until assigned)
        self.vm64 = None
        if f64:
            self.p64, self.g64, self.m64, self.v64 = param, grad, m, v
            if v_max is not None:
                self.vm64 = v_max
        else:
            self.p32, self.g32, self.m32, self.v32 = param, grad, m, v
            if v_max is not None:
                self.vm32 = v_max

    def update(self, double lr, double beta1, double beta2, double eps, double weight_decay,
               bint decoupled, double bias_correction1, double bias_correction2):
        with nogil:
            if self.f64:
                _adam(self.p64, self.g64, self.m64, self.v64, self.vm64, self.amsgrad, lr,
                      beta1, beta2, eps, weight_decay, decoupled, bias_correction1,
                      bias_correction2)
            else:
                _adam(self.p32, self.g32, self.m32, self.v32, self.vm32, self.amsgrad, lr,
                      beta1, beta2, eps, weight_decay, decoupled, bias_correction1,
                      bias_correction2)

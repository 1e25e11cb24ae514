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
from libc.math cimport exp, log, sqrt, sqrtf
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
    """
    const int FASTNN_HAVE_OPENMP
    const char* FASTNN_SOURCE_SHA256
    const int FASTNN_DEBUG_BUILD
    const int FASTNN_NATIVE
    float fastnn_expf(float x) noexcept nogil
    void fastnn_exp_shifted_f32(const float *z, float *e, Py_ssize_t n, float shift) noexcept nogil
    const int FASTNN_HAVE_CLONES
    int fastnn_max_threads() noexcept nogil


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
    cdef Py_ssize_t n = x.shape[0], dim = x.shape[1]
    cdef Py_ssize_t width = _block_width(n, dim)
    cdef Py_ssize_t nblocks = (dim + width - 1) // width
    cdef Py_ssize_t k, j0
    for k in prange(nblocks, nogil=True, schedule="static", use_threads_if=nblocks > 1):
        j0 = k * width
        _bn_train_block(x, gamma, beta, out, x_hat_out, mean_out, inv_std_out,
                        running_mean, running_var, update_running, momentum, eps,
                        j0, min(width, dim - j0))


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
    cdef Py_ssize_t n = dout.shape[0], dim = dout.shape[1]
    cdef Py_ssize_t width = _block_width(n, dim)
    cdef Py_ssize_t nblocks = (dim + width - 1) // width
    cdef Py_ssize_t kb, j0
    for kb in prange(nblocks, nogil=True, schedule="static", use_threads_if=nblocks > 1):
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
    for i in prange(n, nogil=True, schedule="static", use_threads_if=threads):
        row_loss_out[i] = _ce_row(&logits[i, 0], labels[i], w, &grad_out[i, 0], ncls,
                                  label_smoothing, weight_total, inv_norm)
    with nogil:
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
    cdef Py_ssize_t i, n = param.shape[0]
    cdef bint amsgrad = v_max is not None
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
        for i in prange(n, nogil=True, schedule="static", use_threads_if=threads):
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
        for i in prange(n, nogil=True, schedule="static", use_threads_if=threads):
            g = grad[i]
            mi = b1 * m[i] + one_b1 * g
            vi = b2 * v[i] + one_b2 * g * g
            m[i] = mi
            v[i] = vi
            param[i] = param[i] - step_size * (mi / (_sqrt(vi) * inv_bc2_sqrt + feps))
    else:
        for i in prange(n, nogil=True, schedule="static", use_threads_if=threads):
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

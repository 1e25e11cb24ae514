"""NumPy twin of ``fastnn._kernels``: the same functions and signatures, in NumPy.

This is the readable reference for every kernel and a selectable backend
(``fastnn.set_backend("numpy")``). Like the Cython kernels, these functions do
not validate their arguments (``fastnn.ops`` does) and write their results
into the caller's ``*_out`` arrays. Statistics are accumulated in float64, as
the Cython kernels do; elementwise work stays in the data's dtype.
"""

from __future__ import annotations

import numpy as np


def build_info() -> dict:
    return {"openmp": False, "debug_build": False, "native": False, "source_sha256": ""}


# --------------------------------------------------------------------------
# Batch normalisation
# --------------------------------------------------------------------------


def batchnorm_forward_train(
    x, gamma, beta, out, x_hat_out, mean_out, inv_std_out,
    running_mean, running_var, update_running, momentum, eps,
):
    """Training forward: see ``fastnn._kernels.batchnorm_forward_train``."""
    n = x.shape[0]
    mean = x.mean(axis=0, dtype=np.float64)
    centered = x - mean  # float64: exact for float32 data
    var = np.einsum("ij,ij->j", centered, centered) / n
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = centered * inv_std
    if update_running:
        running_mean[...] = (1.0 - momentum) * running_mean + momentum * mean
        running_var[...] = (1.0 - momentum) * running_var + momentum * var * (n / (n - 1.0))
    mean_out[...] = mean
    inv_std_out[...] = inv_std
    x_hat_out[...] = x_hat
    np.multiply(x_hat, gamma, out=x_hat)
    np.add(x_hat, beta, out=x_hat)
    out[...] = x_hat


def batchnorm_forward_eval(
    x, gamma, beta, running_mean, running_var, out, mean_out, inv_std_out, eps,
):
    """Eval forward: see ``fastnn._kernels.batchnorm_forward_eval``."""
    mean = running_mean.astype(np.float64)
    inv_std = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    mean_out[...] = mean
    inv_std_out[...] = inv_std
    out[...] = (x - mean) * (gamma * inv_std) + beta


def batchnorm_backward_train(dout, x_hat, gamma, inv_std, dx_out, dgamma_out, dbeta_out):
    """Training backward: see ``fastnn._kernels.batchnorm_backward_train``."""
    n = dout.shape[0]
    dbeta = dout.sum(axis=0, dtype=np.float64)
    dgamma = np.einsum("ij,ij->j", dout, x_hat, dtype=np.float64)
    dtype = dout.dtype
    k = (gamma.astype(np.float64) * inv_std).astype(dtype)
    mean_dy = (dbeta / n).astype(dtype)
    mean_dyx = (dgamma / n).astype(dtype)
    dbeta_out[...] = dbeta
    dgamma_out[...] = dgamma
    dx = x_hat * mean_dyx
    np.subtract(dout, dx, out=dx)
    np.subtract(dx, mean_dy, out=dx)
    np.multiply(dx, k, out=dx_out)


def batchnorm_backward_eval(dout, x, gamma, mean, inv_std, dx_out, dgamma_out, dbeta_out):
    """Eval backward: see ``fastnn._kernels.batchnorm_backward_eval``."""
    x_hat = (x - mean.astype(np.float64)) * inv_std
    dbeta = dout.sum(axis=0, dtype=np.float64)
    dgamma = np.einsum("ij,ij->j", dout, x_hat)
    k = (gamma.astype(np.float64) * inv_std).astype(dout.dtype)
    np.multiply(dout, k, out=dx_out)
    dbeta_out[...] = dbeta
    dgamma_out[...] = dgamma


# --------------------------------------------------------------------------
# Softmax and cross-entropy
# --------------------------------------------------------------------------


def softmax_cross_entropy(
    logits, labels, class_weight, grad_out, row_loss_out, label_smoothing, inv_norm,
):
    """Fused softmax cross-entropy: see ``fastnn._kernels.softmax_cross_entropy``."""
    n, ncls = logits.shape
    s = label_smoothing
    rows = np.arange(n)
    zmax = logits.max(axis=1, keepdims=True)
    shifted = logits - zmax  # <= 0; read before grad_out (which may alias logits)
    z_y = shifted[rows, labels].astype(np.float64)
    weighted = class_weight is not None
    w = class_weight.astype(np.float64) if weighted else np.ones(ncls)
    w_y = w[labels]
    if s != 0.0:
        gap = -(shifted.astype(np.float64) @ w)  # sum_c w_c (zmax - z_c)
    np.exp(shifted, out=grad_out)
    lse = np.log(grad_out.sum(axis=1, dtype=np.float64))  # log-sum-exp - zmax
    row_loss = (1.0 - s) * w_y * (lse - z_y)
    if s != 0.0:
        row_loss += (s / ncls) * (w.sum() * lse + gap)
    row_loss_out[...] = row_loss
    scale = ((1.0 - s) * w_y + (s / ncls) * w.sum()) * inv_norm * np.exp(-lse)
    np.multiply(grad_out, scale.astype(grad_out.dtype)[:, None], out=grad_out)
    if s != 0.0:
        grad_out -= ((s / ncls) * inv_norm * w).astype(grad_out.dtype)
    grad_out[rows, labels] -= ((1.0 - s) * w_y * inv_norm).astype(grad_out.dtype)
    return float(row_loss.sum() * inv_norm)


def softmax(logits, out):
    """Row softmax: see ``fastnn._kernels.softmax``."""
    zmax = logits.max(axis=1, keepdims=True)
    np.subtract(logits, zmax, out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True, dtype=np.float64).astype(out.dtype)


# --------------------------------------------------------------------------
# Optimizer updates
# --------------------------------------------------------------------------


def adam_update(
    param, grad, m, v, v_max, lr, beta1, beta2, eps, weight_decay, decoupled,
    bias_correction1, bias_correction2,
):
    """One Adam / AdamW step: see ``fastnn._kernels.adam_update``."""
    dtype = param.dtype.type
    if weight_decay != 0.0 and not decoupled:
        grad = grad + dtype(weight_decay) * param
    if weight_decay != 0.0 and decoupled:
        param *= dtype(1.0 - lr * weight_decay)
    m *= dtype(beta1)
    m += dtype(1.0 - beta1) * grad
    v *= dtype(beta2)
    v += dtype(1.0 - beta2) * grad * grad
    if v_max is not None:
        np.maximum(v_max, v, out=v_max)
        denom = np.sqrt(v_max)
    else:
        denom = np.sqrt(v)
    denom /= dtype(np.sqrt(bias_correction2))
    denom += dtype(eps)
    np.divide(m, denom, out=denom)
    denom *= dtype(lr / bias_correction1)
    param -= denom


def sgd_update(param, grad, velocity, lr, momentum, dampening, nesterov, weight_decay, first_step):
    """One SGD step: see ``fastnn._kernels.sgd_update``."""
    dtype = param.dtype.type
    g = grad + dtype(weight_decay) * param if weight_decay != 0.0 else grad
    if velocity is not None:
        if first_step:
            velocity[...] = g
        else:
            velocity *= dtype(momentum)
            velocity += dtype(1.0 - dampening) * g
        g = g + dtype(momentum) * velocity if nesterov else velocity
    param -= dtype(lr) * g


def rmsprop_update(
    param, grad, square_avg, momentum_buffer, grad_avg, lr, alpha, eps, weight_decay, momentum,
):
    """One RMSprop step: see ``fastnn._kernels.rmsprop_update``."""
    dtype = param.dtype.type
    g = grad + dtype(weight_decay) * param if weight_decay != 0.0 else grad
    square_avg *= dtype(alpha)
    square_avg += dtype(1.0 - alpha) * g * g
    if grad_avg is not None:
        grad_avg *= dtype(alpha)
        grad_avg += dtype(1.0 - alpha) * g
        avg = np.sqrt(np.maximum(square_avg - grad_avg * grad_avg, 0))
    else:
        avg = np.sqrt(square_avg)
    avg += dtype(eps)
    step = g / avg
    if momentum_buffer is not None:
        momentum_buffer *= dtype(momentum)
        momentum_buffer += step
        step = momentum_buffer
    param -= dtype(lr) * step

"""Independent float64 reference formulas, written from the definitions (not from fastnn).

They are deliberately naive: loops or plain NumPy in float64, no fused tricks,
so that agreement with them means something.
"""

from __future__ import annotations

import numpy as np

from fastnn import layers


def batchnorm_train(x, gamma, beta, eps=1e-5):
    """Training forward from the textbook definition; returns out, x_hat, mean, biased var."""
    x = np.asarray(x, np.float64)
    mean = x.sum(axis=0) / x.shape[0]
    var = ((x - mean) ** 2).sum(axis=0) / x.shape[0]
    x_hat = (x - mean) / np.sqrt(var + eps)
    return gamma * x_hat + beta, x_hat, mean, var


def batchnorm_eval(x, gamma, beta, running_mean, running_var, eps=1e-5):
    x = np.asarray(x, np.float64)
    return gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta


def batchnorm_loss(x, gamma, beta, dout, eps=1e-5):
    """Scalar sum(out * dout): its gradients are the backward pass given dout."""
    out = batchnorm_train(x, gamma, beta, eps)[0]
    return float((out * dout).sum())


def log_softmax(z):
    z = np.asarray(z, np.float64)
    return z - np.logaddexp.reduce(z, axis=1, keepdims=True)


def cross_entropy(z, y, smoothing=0.0, weight=None):
    """PyTorch CrossEntropyLoss(weight, label_smoothing, reduction='mean'), from its docs."""
    z = np.asarray(z, np.float64)
    n, c = z.shape
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    lsm = log_softmax(z)
    nll = -lsm[np.arange(n), y] * w[y]
    smooth = -(lsm * w).sum(axis=1)
    return float(((1 - smoothing) * nll.sum() + smoothing / c * smooth.sum()) / w[y].sum())


def numerical_gradient(f, x, h=1e-6):
    """Central differences of a scalar function f at x (float64), one coordinate at a time."""
    x = np.array(x, np.float64)
    grad = np.empty_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + h
        up = f(x)
        flat[i] = keep - h
        down = f(x)
        flat[i] = keep
        gflat[i] = (up - down) / (2 * h)
    return grad


def adam_steps(param, grads, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
               decoupled=False, amsgrad=False):
    """Adam/AdamW over a list of gradients, per the PyTorch documentation's pseudocode."""
    theta = np.array(param, np.float64)
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    v_hat_max = np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        g = np.array(g, np.float64)
        if decoupled:
            theta = theta * (1 - lr * weight_decay)
        elif weight_decay:
            g = g + weight_decay * theta
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1**t)
        if amsgrad:
            v_hat_max = np.maximum(v_hat_max, v)
            v_hat = v_hat_max / (1 - beta2**t)
        else:
            v_hat = v / (1 - beta2**t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta, m, v


def sgd_steps(param, grads, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
    theta = np.array(param, np.float64)
    buf = None
    for g in grads:
        g = np.array(g, np.float64) + weight_decay * theta
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        theta = theta - lr * g
    return theta, buf


def rmsprop_steps(param, grads, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                  centered=False):
    theta = np.array(param, np.float64)
    sq = np.zeros_like(theta)
    ga = np.zeros_like(theta)
    buf = np.zeros_like(theta)
    for g in grads:
        g = np.array(g, np.float64) + weight_decay * theta
        sq = alpha * sq + (1 - alpha) * g * g
        if centered:
            ga = alpha * ga + (1 - alpha) * g
            avg = np.sqrt(sq - ga * ga) + eps
        else:
            avg = np.sqrt(sq) + eps
        if momentum:
            buf = momentum * buf + g / avg
            theta = theta - lr * buf
        else:
            theta = theta - lr * g / avg
    return theta


def model_forward(model, X, training=False):
    """An independent float64 forward of a fastnn model from get_weights() (Keras order).

    ``training``: batch statistics for BatchNorm (no Dropout allowed); else running ones.
    """
    weights = [np.asarray(w, np.float64) for w in model.get_weights()]
    h = np.asarray(X, np.float64)
    k = 0
    for layer in model.layers:
        if isinstance(layer, layers.Dense):
            h = h @ weights[k]
            k += 1
            if layer.has_bias:
                h = h + weights[k]
                k += 1
        elif isinstance(layer, layers.BatchNorm):
            gamma, beta, mean, var = weights[k:k + 4]
            k += 4
            if training:
                h = batchnorm_train(h, gamma, beta, layer.eps)[0]
            else:
                h = gamma * (h - mean) / np.sqrt(var + layer.eps) + beta
        elif isinstance(layer, layers.ReLU):
            h = np.where(h > 0, h, 0.0)
        elif isinstance(layer, layers.LeakyReLU):
            h = np.where(h > 0, h, layer.alpha * h)
        elif isinstance(layer, layers.Tanh):
            h = np.tanh(h)
        elif isinstance(layer, layers.Sigmoid):
            h = 1.0 / (1.0 + np.exp(-h))
        elif isinstance(layer, layers.Softmax):
            z = h - h.max(axis=1, keepdims=True)
            h = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        elif isinstance(layer, layers.Dropout):
            assert not training
        else:
            raise AssertionError(f"model_forward does not know {type(layer).__name__}")
    assert k == len(weights)
    return h

"""PyTorch CPU as an independent oracle (skipped when torch is not installed).

Install the CPU build this project pins: ``pip install torch==2.13.0``.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REF_TOL

from fastnn import ops

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.torch


def _t(a, grad=False):
    return torch.tensor(np.array(a), requires_grad=grad)


@pytest.mark.parametrize("shape", [(2, 3), (16, 5), (128, 64)])
def test_bn_forward_backward_running_stats_vs_torch(backend, dtype, shape):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, shape[1]).astype(dtype)
    beta = rng.standard_normal(shape[1]).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    rm, rv = np.zeros(shape[1], dtype), np.ones(shape[1], dtype)
    trm, trv = _t(rm), _t(rv)
    tx, tg, tb = _t(x, True), _t(gamma, True), _t(beta, True)
    tout = F.batch_norm(tx, trm, trv, tg, tb, training=True, momentum=0.1, eps=1e-5)
    tout.backward(_t(dout))

    out, cache = ops.batchnorm_forward(x, gamma, beta, rm, rv)
    dx, dgamma, dbeta = ops.batchnorm_backward(dout, cache)
    tol = REF_TOL[dtype]
    np.testing.assert_allclose(out, tout.detach().numpy(), **tol)
    np.testing.assert_allclose(rm, trm.numpy(), **tol)
    np.testing.assert_allclose(rv, trv.numpy(), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
    np.testing.assert_allclose(dgamma, tg.grad.numpy(), **tol)
    np.testing.assert_allclose(dbeta, tb.grad.numpy(), **tol)

    # Eval mode with the updated running statistics.
    out_eval, _ = ops.batchnorm_forward(x, gamma, beta, rm, rv, training=False)
    t_eval = F.batch_norm(_t(x), trm, trv, _t(gamma), _t(beta), training=False, eps=1e-5)
    np.testing.assert_allclose(out_eval, t_eval.numpy(), **tol)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_ce_vs_torch(backend, dtype, smoothing, weighted):
    rng = np.random.default_rng(4)
    z = (rng.standard_normal((32, 7)) * 4).astype(dtype)
    y = rng.integers(0, 7, 32)
    w = rng.uniform(0.2, 3.0, 7).astype(dtype) if weighted else None
    tz = _t(z, True)
    tloss = F.cross_entropy(tz, torch.tensor(y), weight=None if w is None else _t(w),
                            label_smoothing=smoothing)
    tloss.backward()
    loss, grad = ops.softmax_cross_entropy(z, y, label_smoothing=smoothing, class_weight=w)
    np.testing.assert_allclose(loss, tloss.item(), **REF_TOL[dtype])
    np.testing.assert_allclose(grad, tz.grad.numpy(), **REF_TOL[dtype])


def test_softmax_vs_torch(backend, dtype):
    z = (np.random.default_rng(5).standard_normal((9, 11)) * 10).astype(dtype)
    np.testing.assert_allclose(ops.softmax(z), torch.softmax(_t(z), 1).numpy(), **REF_TOL[dtype])


@pytest.mark.parametrize("kind", ["adam", "adam_l2", "adamw", "amsgrad"])
def test_adam_several_steps_vs_torch(backend, dtype, kind):
    rng = np.random.default_rng(6)
    param = rng.standard_normal(300).astype(dtype)
    grads = [rng.standard_normal(300).astype(dtype) for _ in range(6)]
    opts = {"lr": 0.01, "betas": (0.9, 0.99), "eps": 1e-6}
    kw = {"lr": 0.01, "beta1": 0.9, "beta2": 0.99, "eps": 1e-6}
    if kind == "adam_l2":
        opts["weight_decay"] = kw["weight_decay"] = 0.1
    if kind == "adamw":
        opts["weight_decay"] = kw["weight_decay"] = 0.1
        kw["decoupled"] = True
    if kind == "amsgrad":
        opts["amsgrad"] = kw["amsgrad"] = True
    tp = _t(param, True)
    topt = (torch.optim.AdamW if kind == "adamw" else torch.optim.Adam)([tp], **opts)
    p, m, v = param.copy(), np.zeros_like(param), np.zeros_like(param)
    v_max = np.zeros_like(param) if kind == "amsgrad" else None
    for t, g in enumerate(grads, start=1):
        tp.grad = _t(g)
        topt.step()
        ops.adam_update(p, g, m, v, t, v_max=v_max, **kw)
    np.testing.assert_allclose(p, tp.detach().numpy(), **REF_TOL[dtype])
    state = topt.state[tp]
    np.testing.assert_allclose(m, state["exp_avg"].numpy(), **REF_TOL[dtype])
    np.testing.assert_allclose(v, state["exp_avg_sq"].numpy(), **REF_TOL[dtype])


@pytest.mark.parametrize("kw", [{"momentum": 0.9}, {"momentum": 0.9, "nesterov": True},
                                {"momentum": 0.8, "dampening": 0.3, "weight_decay": 0.01}])
def test_sgd_vs_torch(backend, kw):
    rng = np.random.default_rng(7)
    param = rng.standard_normal(50)
    grads = [rng.standard_normal(50) for _ in range(5)]
    tp = _t(param, True)
    topt = torch.optim.SGD([tp], lr=0.05, **kw)
    p, vel = param.copy(), np.zeros(50)
    for t, g in enumerate(grads, start=1):
        tp.grad = _t(g)
        topt.step()
        ops.sgd_update(p, g, vel, t, lr=0.05, **kw)
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12)


@pytest.mark.parametrize("kw", [{}, {"momentum": 0.5}, {"centered": True},
                                {"centered": True, "momentum": 0.3, "weight_decay": 0.1}])
def test_rmsprop_vs_torch(backend, kw):
    rng = np.random.default_rng(8)
    param = rng.standard_normal(50)
    grads = [rng.standard_normal(50) for _ in range(5)]
    tp = _t(param, True)
    topt = torch.optim.RMSprop([tp], lr=0.01, **kw)
    p, sq = param.copy(), np.zeros(50)
    buf = np.zeros(50) if kw.get("momentum") else None
    ga = np.zeros(50) if kw.get("centered") else None
    for g in grads:
        tp.grad = _t(g)
        topt.step()
        ops.rmsprop_update(p, g, sq, lr=0.01, momentum_buffer=buf, grad_avg=ga, **kw)
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12)

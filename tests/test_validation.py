"""Bad input to every kernel entry point raises a clear error naming the argument.

The kernels run without bounds checks, so each rule here is also what stands
between a user mistake and a crash. Every case runs on both backends: the
error must come from fastnn.ops, before any kernel runs, and leave all
in-place state untouched.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn import ops

F32, F64 = np.float32, np.float64


def _bn(n=4, d=3, dtype=F64):
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((n, d)).astype(dtype),
        "gamma": np.ones(d, dtype),
        "beta": np.zeros(d, dtype),
        "running_mean": np.zeros(d, dtype),
        "running_var": np.ones(d, dtype),
    }


def _bn_call(**changes):
    args = _bn()
    args.update(changes)
    return lambda: ops.batchnorm_forward(**args)


def _read_only(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


_buf = np.zeros(13)

BN_FORWARD_CASES = {
    "x None": (_bn_call(x=None), TypeError, "x is required"),
    "x 1-D": (_bn_call(x=np.ones(3)), ValueError, r"x must be a 2-D array; got shape \(3,\)"),
    "x 3-D": (_bn_call(x=np.ones((2, 3, 1))), ValueError, "x must be a 2-D array"),
    "x int": (_bn_call(x=np.ones((4, 3), np.int64)), TypeError,
              "x must have dtype float32 or float64; got int64"),
    "x float16": (_bn_call(x=np.ones((4, 3), np.float16)), TypeError, "got float16"),
    "x big-endian": (_bn_call(x=np.ones((4, 3), ">f8")), TypeError, "x must have dtype"),
    "x empty": (_bn_call(x=np.ones((0, 3))), ValueError, "empty batch"),
    "x one row": (_bn_call(x=np.ones((1, 3))), ValueError, "at least 2 rows in training"),
    "x no features": (_bn_call(x=np.ones((4, 0)), gamma=np.ones(0), beta=np.zeros(0),
                                running_mean=np.zeros(0), running_var=np.ones(0)),
                      ValueError, "at least one feature"),
    "gamma None": (_bn_call(gamma=None), TypeError, "gamma is required"),
    "gamma shape": (_bn_call(gamma=np.ones(4)), ValueError,
                    r"gamma must have shape \(3,\) to match x of shape \(4, 3\); got \(4,\)"),
    "gamma dtype": (_bn_call(gamma=np.ones(3, F32)), TypeError,
                    "gamma must have dtype float64 .*got float32"),
    "gamma 2-D": (_bn_call(gamma=np.ones((3, 1))), ValueError, "gamma must be a 1-D array"),
    "beta shape": (_bn_call(beta=np.ones(2)), ValueError, r"beta must have shape \(3,\)"),
    "beta None": (_bn_call(beta=None), TypeError, "beta is required"),
    "running_mean alone": (_bn_call(running_var=None), ValueError, "must be given together"),
    "running_mean shape": (_bn_call(running_mean=np.zeros(4)), ValueError,
                           r"running_mean must have shape \(3,\)"),
    "running_var dtype": (_bn_call(running_var=np.ones(3, F32)), TypeError,
                          "running_var must have dtype float64"),
    "running_mean read-only": (_bn_call(running_mean=_read_only(np.zeros(3))), ValueError,
                               "running_mean must be writable"),
    "running_var strided": (_bn_call(running_var=np.ones(6)[::2]), ValueError,
                            "running_var must be C-contiguous"),
    "running stats same array": (_bn_call(running_mean=_buf[:3], running_var=_buf[:3]),
                                 ValueError, "must not share memory"),
    "running_mean list": (_bn_call(running_mean=[0.0, 0.0, 0.0]), TypeError,
                          "running_mean must be a NumPy array"),
    "eval without stats": (_bn_call(running_mean=None, running_var=None, training=False),
                           ValueError, "eval mode .* needs running_mean and running_var"),
    "eval stats shape": (_bn_call(running_mean=np.zeros(2), training=False), ValueError,
                         r"running_mean and running_var must have shape \(3,\)"),
    "momentum negative": (_bn_call(momentum=-0.1), ValueError, r"momentum must be in \[0.0, 1.0\]"),
    "momentum > 1": (_bn_call(momentum=1.5), ValueError, "momentum must be in"),
    "momentum nan": (_bn_call(momentum=float("nan")), ValueError, "momentum must be in"),
    "momentum str": (_bn_call(momentum="0.1x"), TypeError, "momentum must be a real number"),
    "eps zero": (_bn_call(eps=0.0), ValueError, r"eps must be in \(0.0, inf\)"),
    "eps inf": (_bn_call(eps=float("inf")), ValueError, "eps must be in"),
    "out shape": (_bn_call(out=np.empty((3, 3))), ValueError, r"out must have shape \(4, 3\)"),
    "out dtype": (_bn_call(out=np.empty((4, 3), F32)), TypeError, "out must have dtype float64"),
    "out read-only": (_bn_call(out=_read_only(np.empty((4, 3)))), ValueError,
                      "out must be writable"),
    "out Fortran": (_bn_call(out=np.empty((4, 3), order="F")), ValueError,
                    "out must be C-contiguous"),
    "out is gamma's memory": (_bn_call(gamma=_buf[:3], out=_buf[:12].reshape(4, 3)),
                              ValueError, "out and gamma must not share memory"),
    "cache wrong type": (_bn_call(cache={"x_hat": 1}), TypeError,
                         "cache must be a BatchNormCache"),
}


def _shifted_overlap():
    buf = np.random.default_rng(1).standard_normal(15)
    x = buf[:12].reshape(4, 3)
    out = buf[3:15].reshape(4, 3)  # overlaps x, shifted by one row
    return lambda: ops.batchnorm_forward(x, np.ones(3), np.zeros(3), out=out)


BN_FORWARD_CASES["out overlaps x shifted"] = (_shifted_overlap(), ValueError,
                                              "out and x must not share memory")


@pytest.mark.parametrize("case", BN_FORWARD_CASES)
def test_bn_forward_rejects(backend, case):
    call, error, message = BN_FORWARD_CASES[case]
    with pytest.raises(error, match=message):
        call()


def test_bn_rejected_call_leaves_running_stats_untouched(backend):
    args = _bn()
    rm, rv = args["running_mean"].copy(), args["running_var"].copy()
    with pytest.raises(ValueError):
        ops.batchnorm_forward(**args, eps=-1.0)
    np.testing.assert_array_equal(args["running_mean"], rm)
    np.testing.assert_array_equal(args["running_var"], rv)


def _bn_backward_case(**kw):
    args = _bn()
    _, cache = ops.batchnorm_forward(args["x"], args["gamma"], args["beta"])
    dout = kw.pop("dout", np.ones((4, 3)))
    if kw.pop("use_x_hat_as_dx", False):
        kw["dx"] = cache.x_hat
    if kw.pop("same_dgamma_dbeta", False):
        shared = np.zeros(3)
        kw["dgamma"], kw["dbeta"] = shared, shared
    return lambda: ops.batchnorm_backward(dout, kw.pop("cache", cache), **kw)


BN_BACKWARD_CASES = {
    "cache None": (lambda: _bn_backward_case(cache=None), TypeError,
                   "cache must be the BatchNormCache"),
    "dout shape": (lambda: _bn_backward_case(dout=np.ones((4, 2))), ValueError,
                   r"dout must have shape \(4, 3\)"),
    "dout dtype": (lambda: _bn_backward_case(dout=np.ones((4, 3), F32)), TypeError,
                   "dout must have dtype float64"),
    "dx shape": (lambda: _bn_backward_case(dx=np.empty((3, 3))), ValueError,
                 r"dx must have shape \(4, 3\)"),
    "dgamma read-only": (lambda: _bn_backward_case(dgamma=_read_only(np.zeros(3))),
                         ValueError, "dgamma must be writable"),
    "dbeta dtype": (lambda: _bn_backward_case(dbeta=np.zeros(3, F32)), TypeError,
                    "dbeta must have dtype float64"),
    "dx over cache": (lambda: _bn_backward_case(use_x_hat_as_dx=True), ValueError,
                      "dx and cache x_hat must not share memory"),
    "dgamma is dbeta": (lambda: _bn_backward_case(same_dgamma_dbeta=True), ValueError,
                        "dgamma and dbeta must not share memory"),
}


@pytest.mark.parametrize("case", BN_BACKWARD_CASES)
def test_bn_backward_rejects(backend, case):
    make, error, message = BN_BACKWARD_CASES[case]
    call = make()
    with pytest.raises(error, match=message):
        call()


# ---- cross-entropy and softmax -------------------------------------------------


def _ce_call(logits=None, labels=None, **kw):
    z = np.zeros((4, 3)) if logits is None else logits
    y = np.array([0, 1, 2, 1]) if labels is None else labels
    return lambda: ops.softmax_cross_entropy(z, y, **kw)


CE_CASES = {
    "logits 1-D": (_ce_call(logits=np.zeros(3)), ValueError, "logits must be a 2-D array"),
    "logits int": (_ce_call(logits=np.zeros((4, 3), np.int32)), TypeError,
                   "logits must have dtype float32 or float64; got int32"),
    "logits empty": (_ce_call(logits=np.zeros((0, 3)), labels=np.zeros(0, np.int64)),
                     ValueError, "logits must have at least 1 row"),
    "logits no classes": (_ce_call(logits=np.zeros((4, 0))), ValueError,
                          "at least one class"),
    "labels None": (lambda: ops.softmax_cross_entropy(np.zeros((4, 3)), None), TypeError,
                    "labels is required"),
    "labels float": (_ce_call(labels=np.array([0.0, 1.0, 2.0, 1.0])), TypeError,
                     "labels must be an integer array; got dtype float64"),
    "labels bool": (_ce_call(labels=np.array([True, False, True, False])), TypeError,
                    "labels must be an integer array; got dtype bool"),
    "labels length": (_ce_call(labels=np.array([0, 1, 2])), ValueError,
                      r"labels must have shape \(4,\) to match logits with 4 rows; got \(3,\)"),
    "labels 2-D": (_ce_call(labels=np.zeros((4, 1), np.int64)), ValueError,
                   r"labels must have shape \(4,\)"),
    "label too big": (_ce_call(labels=np.array([0, 1, 3, 1])), ValueError,
                      r"labels must be in \[0, 3\) for logits with 3 classes; got max label 3"),
    "label negative": (_ce_call(labels=np.array([0, -1, 2, 1])), ValueError,
                       "got min label -1"),
    "label negative int32": (_ce_call(labels=np.array([0, -7, 2, 1], np.int32)), ValueError,
                             "got min label -7"),
    "label huge uint64": (_ce_call(labels=np.array([0, 2**63 + 5, 2, 1], np.uint64)),
                          ValueError, r"labels must be in \[0, 3\)"),
    "label huge int8 wrap": (_ce_call(labels=np.array([0, -128, 2, 1], np.int8)), ValueError,
                             "got min label -128"),
    "smoothing negative": (_ce_call(label_smoothing=-0.1), ValueError,
                           r"label_smoothing must be in \[0.0, 1.0\]"),
    "smoothing > 1": (_ce_call(label_smoothing=1.01), ValueError, "label_smoothing must be in"),
    "smoothing nan": (_ce_call(label_smoothing=float("nan")), ValueError,
                      "label_smoothing must be in"),
    "weight shape": (_ce_call(class_weight=np.ones(4)), ValueError,
                     r"class_weight must have shape \(3,\) for logits with 3 classes"),
    "weight dtype": (_ce_call(class_weight=np.ones(3, F32)), TypeError,
                     "class_weight must have dtype float64"),
    "weight negative": (_ce_call(class_weight=np.array([1.0, -1.0, 1.0])), ValueError,
                        "class_weight must be finite and non-negative"),
    "weight nan": (_ce_call(class_weight=np.array([1.0, np.nan, 1.0])), ValueError,
                   "class_weight must be finite"),
    "weight inf": (_ce_call(class_weight=np.array([1.0, np.inf, 1.0])), ValueError,
                   "class_weight must be finite"),
    "weights zero for batch": (_ce_call(labels=np.array([0, 0, 0, 0]),
                                        class_weight=np.array([0.0, 1.0, 1.0])),
                               ValueError, "zero weight"),
    "grad shape": (_ce_call(grad=np.empty((4, 2))), ValueError, r"grad must have shape \(4, 3\)"),
    "grad dtype": (_ce_call(grad=np.empty((4, 3), F32)), TypeError, "grad must have dtype"),
    "grad read-only": (_ce_call(grad=_read_only(np.empty((4, 3)))), ValueError,
                       "grad must be writable"),
    "row_loss float32": (_ce_call(row_loss=np.empty(4, F32)), TypeError,
                         "row_loss must have dtype float64"),
    "row_loss shape": (_ce_call(row_loss=np.empty(3)), ValueError,
                       r"row_loss must have shape \(4,\)"),
}


@pytest.mark.parametrize("case", CE_CASES)
def test_ce_rejects(backend, case):
    call, error, message = CE_CASES[case]
    with pytest.raises(error, match=message):
        call()


def test_ce_grad_partially_overlapping_logits_rejected(backend):
    buf = np.zeros(15)
    z = buf[:12].reshape(4, 3)
    with pytest.raises(ValueError, match="grad and logits must not share memory"):
        ops.softmax_cross_entropy(z, np.array([0, 1, 2, 0]), grad=buf[3:].reshape(4, 3))


SOFTMAX_CASES = {
    "logits 3-D": (lambda: ops.softmax(np.zeros((2, 2, 2))), ValueError, "2-D array"),
    "logits empty": (lambda: ops.softmax(np.zeros((0, 2))), ValueError, "at least 1 row"),
    "logits None": (lambda: ops.softmax(None), TypeError, "logits is required"),
    "out shape": (lambda: ops.softmax(np.zeros((2, 2)), out=np.empty((2, 3))), ValueError,
                  r"out must have shape \(2, 2\)"),
    "out list": (lambda: ops.softmax(np.zeros((1, 2)), out=[[0.0, 0.0]]), TypeError,
                 "out must be a NumPy array"),
}


@pytest.mark.parametrize("case", SOFTMAX_CASES)
def test_softmax_rejects(backend, case):
    call, error, message = SOFTMAX_CASES[case]
    with pytest.raises(error, match=message):
        call()


# ---- optimizers ------------------------------------------------------------------


def _adam_call(n=5, **kw):
    state = {
        "param": np.ones(n),
        "grad": np.full(n, 0.5),
        "m": np.zeros(n),
        "v": np.zeros(n),
        "step": 1,
    }
    state.update(kw)
    return lambda: ops.adam_update(**state)


_shared = np.zeros(10)

ADAM_CASES = {
    "param list": (_adam_call(param=[1.0, 2.0]), TypeError, "param must be a NumPy array"),
    "param int": (_adam_call(param=np.ones(5, np.int64)), TypeError,
                  "param must have dtype float32 or float64; got int64"),
    "param read-only": (_adam_call(param=_read_only(np.ones(5))), ValueError,
                        "param must be writable"),
    "param strided": (_adam_call(param=np.ones(10)[::2]), ValueError,
                      "param must be C-contiguous"),
    "grad shape": (_adam_call(grad=np.ones(4)), ValueError,
                   r"grad must have the shape of param \(5,\); got \(4,\)"),
    "grad dtype": (_adam_call(grad=np.ones(5, F32)), TypeError, "grad must have dtype float64"),
    "grad None": (_adam_call(grad=None), TypeError, "grad is required"),
    "m size": (_adam_call(m=np.zeros(6)), ValueError, "m must have 5 elements"),
    "v dtype": (_adam_call(v=np.zeros(5, F32)), TypeError, "v must have dtype float64"),
    "v read-only": (_adam_call(v=_read_only(np.zeros(5))), ValueError, "v must be writable"),
    "m is v": (_adam_call(m=_shared[:5], v=_shared[:5]), ValueError,
               "m and v must not share memory"),
    "m overlaps v": (_adam_call(m=_shared[:5], v=_shared[3:8]), ValueError,
                     "m and v must not share memory"),
    "grad is param": (lambda: (lambda p: ops.adam_update(p, p, np.zeros(3), np.zeros(3), 1))(
        np.ones(3)), ValueError, "param and grad must not share memory"),
    "step 0": (_adam_call(step=0), ValueError, "step must be >= 1"),
    "step float": (_adam_call(step=1.5), TypeError, "step must be an integer"),
    "step bool": (_adam_call(step=True), TypeError, "step must be an integer"),
    "lr negative": (_adam_call(lr=-1e-3), ValueError, r"lr must be in \[0.0, inf\)"),
    "lr nan": (_adam_call(lr=float("nan")), ValueError, "lr must be in"),
    "lr inf": (_adam_call(lr=float("inf")), ValueError, "lr must be in"),
    "beta1 one": (_adam_call(beta1=1.0), ValueError, r"beta1 must be in \[0.0, 1.0\)"),
    "beta2 negative": (_adam_call(beta2=-0.5), ValueError, "beta2 must be in"),
    "eps negative": (_adam_call(eps=-1e-8), ValueError, "eps must be in"),
    "weight_decay negative": (_adam_call(weight_decay=-0.1), ValueError,
                              "weight_decay must be in"),
    "amsgrad without v_max": (_adam_call(amsgrad=True), ValueError, "amsgrad=True needs v_max"),
    "v_max without amsgrad": (_adam_call(v_max=np.zeros(5)), ValueError,
                              "v_max is only used with amsgrad=True"),
    "v_max size": (_adam_call(amsgrad=True, v_max=np.zeros(2)), ValueError,
                   "v_max must have 5 elements"),
}


@pytest.mark.parametrize("case", ADAM_CASES)
def test_adam_rejects(backend, case):
    call, error, message = ADAM_CASES[case]
    with pytest.raises(error, match=message):
        call()


def test_adam_rejected_call_changes_nothing(backend):
    param, m, v = np.ones(4), np.zeros(4), np.zeros(4)
    with pytest.raises(ValueError):
        ops.adam_update(param, np.ones(4), m, v, 1, beta2=1.0)
    np.testing.assert_array_equal(param, 1.0)
    np.testing.assert_array_equal(m, 0.0)
    np.testing.assert_array_equal(v, 0.0)


SGD_CASES = {
    "momentum without velocity": (lambda: ops.sgd_update(np.ones(3), np.ones(3), momentum=0.9),
                                  ValueError, "momentum=0.9 needs velocity"),
    "velocity without momentum": (lambda: ops.sgd_update(np.ones(3), np.ones(3), np.zeros(3)),
                                  ValueError, "velocity is only used with momentum > 0"),
    "nesterov without momentum": (lambda: ops.sgd_update(np.ones(3), np.ones(3), nesterov=True),
                                  ValueError, "nesterov=True needs momentum > 0"),
    "nesterov with dampening": (lambda: ops.sgd_update(np.ones(3), np.ones(3), np.zeros(3),
                                                       momentum=0.9, dampening=0.1,
                                                       nesterov=True),
                                ValueError, "dampening == 0"),
    "momentum > 1": (lambda: ops.sgd_update(np.ones(3), np.ones(3), np.zeros(3), momentum=1.5),
                     ValueError, r"momentum must be in \[0.0, 1.0\]"),
    "velocity size": (lambda: ops.sgd_update(np.ones(3), np.ones(3), np.zeros(2), momentum=0.5),
                      ValueError, "velocity must have 3 elements"),
    "step 0": (lambda: ops.sgd_update(np.ones(3), np.ones(3), step=0), ValueError,
               "step must be >= 1"),
}


@pytest.mark.parametrize("case", SGD_CASES)
def test_sgd_rejects(backend, case):
    call, error, message = SGD_CASES[case]
    with pytest.raises(error, match=message):
        call()


RMSPROP_CASES = {
    "centered without grad_avg": (lambda: ops.rmsprop_update(np.ones(3), np.ones(3), np.zeros(3),
                                                             centered=True),
                                  ValueError, "centered=True needs grad_avg"),
    "grad_avg without centered": (lambda: ops.rmsprop_update(np.ones(3), np.ones(3), np.zeros(3),
                                                             grad_avg=np.zeros(3)),
                                  ValueError, "grad_avg is only used with centered=True"),
    "momentum without buffer": (lambda: ops.rmsprop_update(np.ones(3), np.ones(3), np.zeros(3),
                                                           momentum=0.5),
                                ValueError, "momentum=0.5 needs momentum_buffer"),
    "alpha > 1": (lambda: ops.rmsprop_update(np.ones(3), np.ones(3), np.zeros(3), alpha=1.1),
                  ValueError, r"alpha must be in \[0.0, 1.0\]"),
    "square_avg dtype": (lambda: ops.rmsprop_update(np.ones(3), np.ones(3), np.zeros(3, F32)),
                         TypeError, "square_avg must have dtype float64"),
}


@pytest.mark.parametrize("case", RMSPROP_CASES)
def test_rmsprop_rejects(backend, case):
    call, error, message = RMSPROP_CASES[case]
    with pytest.raises(error, match=message):
        call()


def test_set_backend_rejects_unknown_name():
    with pytest.raises(ValueError, match="backend must be 'cython' or 'numpy'; got 'torch'"):
        fastnn.set_backend("torch")
    assert fastnn.get_backend() in ("cython", "numpy")

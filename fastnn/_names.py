"""fastnn's vocabulary: the names users type, defined once.

The command line, the scikit-learn estimators and the tuner all accept activations,
optimizers and hyperparameters by name; they read them here, so a name means the same
everywhere. This module is plain data and imports nothing of fastnn: the layer and
optimizer modules resolve the class names below (:func:`fastnn.layers.activation`,
:func:`fastnn.optimizers.make`).
"""

from __future__ import annotations

__all__ = ["ACTIVATIONS", "HYPERPARAMETERS", "OPTIMIZERS", "STAGES", "first", "hyperparameter_of"]

#: Activation name -> layer class name (in :mod:`fastnn.layers`). "logistic" is
#: scikit-learn's name for the sigmoid.
ACTIVATIONS: dict[str, str] = {
    "relu": "ReLU",
    "leaky_relu": "LeakyReLU",
    "tanh": "Tanh",
    "sigmoid": "Sigmoid",
    "logistic": "Sigmoid",
    "identity": "Identity",
}

#: Optimizer name -> class name (in :mod:`fastnn.optimizers`).
OPTIMIZERS: dict[str, str] = {
    "adam": "Adam",
    "adamw": "AdamW",
    "sgd": "SGD",
    "rmsprop": "RMSprop",
}

#: Canonical hyperparameter -> the names it goes by in a trial's params (first wins),
#: listed in the course's order of importance (the "staged" strategy's stages).
HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "lr": ("lr", "learning_rate"),
    "beta1": ("beta1", "beta_1", "beta", "momentum"),
    "hidden": ("hidden", "units", "hidden_units", "width"),
    "batch_size": ("batch_size", "minibatch"),
    "beta2": ("beta2", "beta_2"),
    "layers": ("layers", "n_layers", "depth"),
    "decay": ("decay", "decay_rate", "lr_decay"),
}

#: The course's order of importance, for the "staged" strategy: the learning rate;
#: then beta (momentum), hidden units and the minibatch size; then the number of layers
#: and the learning-rate decay. Every other name joins the last stage.
STAGES: tuple[tuple[str, ...], ...] = (("lr",), ("beta1", "hidden", "batch_size"),
                                       ("layers", "decay"))


def first(params: dict, canonical: str, default=None):
    """The value ``params`` gives the hyperparameter ``canonical`` under any of its names.

    >>> first({"learning_rate": 0.1}, "lr")
    0.1
    >>> first({}, "beta1", 0.9)
    0.9
    """
    for name in HYPERPARAMETERS[canonical]:
        if name in params:
            return params[name]
    return default


def hyperparameter_of(name: str) -> str | None:
    """The canonical hyperparameter that ``name`` is an alias of (None if none).

    >>> hyperparameter_of("momentum")
    'beta1'
    """
    for canonical, names in HYPERPARAMETERS.items():
        if name in names:
            return canonical
    return None

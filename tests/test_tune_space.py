"""fastnn.tune.space: distributions on their own scale, unit maps, grids, configs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastnn.tune.space import (
    Choice,
    Distribution,
    IntLogUniform,
    IntUniform,
    LogUniform,
    OneMinusLogUniform,
    Uniform,
    check_space,
    distribution_from_config,
    space_from_config,
    space_to_config,
)

N_DRAWS = 20_000

EXAMPLES = [
    Uniform(-2.0, 3.0),
    LogUniform(1e-4, 1.0),
    OneMinusLogUniform(0.9, 0.999),
    IntUniform(1, 6),
    IntLogUniform(16, 512),
    Choice(["relu", "tanh", 3, 2.5, True, None]),
]


def draws(dist, n=N_DRAWS, seed=0):
    rng = np.random.default_rng(seed)
    return [dist.sample(rng) for _ in range(n)]


# ---------------------------------------------------------------------------- the must-show shares

def test_one_minus_log_uniform_half_the_draws_above_0_99():
    beta = np.array(draws(OneMinusLogUniform(0.9, 0.999)))
    assert beta.min() >= 0.9 and beta.max() <= 0.999
    assert abs(np.mean(beta > 0.99) - 0.5) <= 0.02


def test_one_minus_log_uniform_each_decade_of_one_minus_beta():
    # 1 - β for (0.5, 0.9999) spans [1e-4, 0.5]: the decades [1e-4, 1e-3), [1e-3, 1e-2),
    # [1e-2, 1e-1) each get log(10) / log(0.5 / 1e-4) of the draws.
    one_minus = 1.0 - np.array(draws(OneMinusLogUniform(0.5, 0.9999), seed=1))
    share = math.log(10) / math.log(0.5 / 1e-4)
    for lo in (1e-4, 1e-3, 1e-2):
        assert abs(np.mean((one_minus >= lo) & (one_minus < 10 * lo)) - share) <= 0.02


def test_log_uniform_a_quarter_per_decade():
    lr = np.array(draws(LogUniform(1e-4, 1.0)))
    assert lr.min() >= 1e-4 and lr.max() <= 1.0
    for lo in (1e-4, 1e-3, 1e-2, 1e-1):
        assert abs(np.mean((lr >= lo) & (lr < 10 * lo)) - 0.25) <= 0.02


def test_int_log_uniform_a_third_per_decade():
    units = np.array(draws(IntLogUniform(1, 999)))
    assert units.min() >= 1 and units.max() <= 999
    for lo in (1, 10, 100):
        assert abs(np.mean((units >= lo) & (units < 10 * lo)) - 1 / 3) <= 0.02


def test_int_log_uniform_each_octave_alike():
    # IntLogUniform(16, 511): octaves [16, 32), [32, 64), ..., [256, 512) get 1/5 each.
    units = np.array(draws(IntLogUniform(16, 511), seed=2))
    for lo in (16, 32, 64, 128, 256):
        assert abs(np.mean((units >= lo) & (units < 2 * lo)) - 0.2) <= 0.02


def test_int_uniform_ends_as_likely_as_the_middle():
    values = np.array(draws(IntUniform(0, 4)))
    counts = np.bincount(values, minlength=5) / len(values)
    np.testing.assert_allclose(counts, 0.2, atol=0.015)


def test_choice_each_option_alike():
    options = ["a", "b", "c", "d"]
    values = draws(Choice(options))
    for o in options:
        assert abs(values.count(o) / len(values) - 0.25) <= 0.015


def test_uniform_mean_and_spread():
    x = np.array(draws(Uniform(-2.0, 3.0)))
    assert x.min() >= -2.0 and x.max() <= 3.0
    assert abs(x.mean() - 0.5) < 0.05
    assert abs(x.var() - 25 / 12) < 0.1


@pytest.mark.parametrize("dist", EXAMPLES, ids=repr)
def test_values_are_plain_python(dist):
    rng = np.random.default_rng(0)
    for _ in range(50):
        v = dist.sample(rng)
        assert type(v) in (float, int, str, bool, type(None))
        if isinstance(dist, (Uniform, LogUniform, OneMinusLogUniform)):
            assert type(v) is float
        if isinstance(dist, (IntUniform, IntLogUniform)):
            assert type(v) is int
    json.dumps([dist.from_unit(u) for u in np.linspace(0, 1, 7)])


def test_sample_wants_a_generator():
    with pytest.raises(TypeError, match="rng"):
        Uniform(0, 1).sample(np.random.RandomState(0))


def test_same_generator_state_same_draws():
    assert draws(LogUniform(1e-5, 1e-1), 100, seed=7) == draws(LogUniform(1e-5, 1e-1), 100, seed=7)


# ---------------------------------------------------------------------------- unit maps

def test_unit_ends_and_centres():
    assert LogUniform(1e-4, 1.0).to_unit(1e-4) == 0.0
    assert LogUniform(1e-4, 1.0).to_unit(1.0) == 1.0
    assert LogUniform(1e-4, 1.0).from_unit(0.5) == pytest.approx(1e-2, rel=1e-12)
    assert OneMinusLogUniform(0.9, 0.999).from_unit(0.5) == pytest.approx(0.99, rel=1e-12)
    assert OneMinusLogUniform(0.9, 0.999).to_unit(0.99) == pytest.approx(0.5, abs=1e-12)
    assert Uniform(-1.0, 3.0).from_unit(0.25) == pytest.approx(0.0, abs=1e-15)
    # sqrt(16 * 257) = 64.1...: the integer whose log-cell holds the middle
    assert IntLogUniform(16, 256).from_unit(0.5) == 64
    assert IntUniform(1, 5).from_unit(0.5) == 3


@pytest.mark.parametrize("dist", EXAMPLES[:5], ids=repr)
def test_from_unit_clips_and_is_monotone(dist):
    assert dist.from_unit(-0.5) == dist.from_unit(0.0) == dist.low
    assert dist.from_unit(1.5) == dist.from_unit(1.0) == dist.high
    values = [dist.from_unit(u) for u in np.linspace(0, 1, 501)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))


def test_to_unit_clips_values_outside_the_bounds():
    assert LogUniform(1e-4, 1.0).to_unit(10.0) == 1.0
    assert Uniform(0.0, 1.0).to_unit(-3.0) == 0.0
    assert IntUniform(1, 4).to_unit(99) == IntUniform(1, 4).to_unit(4)


def test_nan_unit_position_is_an_error():
    with pytest.raises(ValueError, match="u"):
        Uniform(0, 1).from_unit(float("nan"))


@st.composite
def continuous(draw):
    kind = draw(st.sampled_from(["uniform", "log", "beta"]))
    if kind == "uniform":
        low = draw(st.floats(-1e3, 1e3))
        return Uniform(low, low + draw(st.floats(1e-3, 1e3)))
    if kind == "log":
        low = 10 ** draw(st.floats(-8, 2))
        return LogUniform(low, low * 10 ** draw(st.floats(0.01, 6)))
    low = draw(st.floats(1e-3, 0.99))
    return OneMinusLogUniform(low, low + (1 - low) * draw(st.floats(0.01, 0.999)))


@settings(max_examples=200, deadline=None)
@given(dist=continuous(), u=st.floats(0.0, 1.0))
def test_continuous_unit_round_trip(dist, u):
    v = dist.from_unit(u)
    assert dist.low <= v <= dist.high
    assert dist.to_unit(v) == pytest.approx(u, abs=1e-7)
    assert dist.from_unit(dist.to_unit(v)) == pytest.approx(v, rel=1e-9, abs=1e-12)


@st.composite
def integer(draw):
    if draw(st.booleans()):
        low = draw(st.integers(-1000, 1000))
        return IntUniform(low, low + draw(st.integers(1, 5000)))
    low = draw(st.integers(1, 1000))
    return IntLogUniform(low, low + draw(st.integers(1, 100000)))


@settings(max_examples=200, deadline=None)
@given(dist=integer(), data=st.data())
def test_integer_unit_round_trip(dist, data):
    k = data.draw(st.integers(dist.low, dist.high))
    u = dist.to_unit(k)
    assert 0.0 < u < 1.0
    assert dist.from_unit(u) == k
    w = data.draw(st.floats(0.0, 1.0))
    assert dist.low <= dist.from_unit(w) <= dist.high
    # the snapped position is the centre of the cell of the value at w
    snapped = float(dist._snap_unit(np.array([w]))[0])
    assert snapped == pytest.approx(dist.to_unit(dist.from_unit(w)), abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(options=st.lists(st.one_of(st.text(max_size=5), st.integers(-5, 5), st.booleans(),
                                  st.none(), st.floats(-10, 10)),
                        min_size=1, max_size=8, unique_by=lambda o: json.dumps(o)))
def test_choice_unit_round_trip(options):
    c = Choice(options)
    for o in options:
        back = c.from_unit(c.to_unit(o))
        assert back == o and type(back) is type(o)
    grid = np.linspace(0, 1, 33)
    snapped = c._snap_unit(grid)
    assert [c.from_unit(s) for s in snapped] == [c.from_unit(g) for g in grid]


def test_choice_keeps_true_and_one_apart():
    c = Choice([1, True, "1"])
    assert c.from_unit(c.to_unit(True)) is True
    assert c.from_unit(c.to_unit(1)) == 1 and c.from_unit(c.to_unit(1)) is not True
    assert c.to_unit(1.0) == c.to_unit(1)  # a float equal to an int option finds it
    with pytest.raises(ValueError, match="value"):
        c.to_unit("x")


# ---------------------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("make, arg", [
    (lambda: Uniform(1.0, 1.0), "low"),
    (lambda: Uniform(2.0, 1.0), "low"),
    (lambda: Uniform(0.0, float("inf")), "high"),
    (lambda: LogUniform(0.0, 1.0), "low"),
    (lambda: LogUniform(-1e-3, 1.0), "low"),
    (lambda: LogUniform(1.0, 0.1), "low"),
    (lambda: OneMinusLogUniform(0.9, 1.0), "high"),
    (lambda: OneMinusLogUniform(0.0, 0.9), "low"),
    (lambda: OneMinusLogUniform(-0.5, 0.9), "low"),
    (lambda: OneMinusLogUniform(0.99, 0.9), "low"),
    (lambda: IntUniform(1.5, 4), "low"),
    (lambda: IntUniform(1, 4.5), "high"),
    (lambda: IntUniform(3, 3), "low"),
    (lambda: IntUniform(True, 4), "low"),
    (lambda: IntLogUniform(0, 10), "low"),
    (lambda: IntLogUniform(10, 2), "low"),
    (lambda: Choice([]), "options"),
    (lambda: Choice("abc"), "options"),
    (lambda: Choice([object()]), "options"),
    (lambda: Choice([[1, 2]]), "options"),
    (lambda: Choice([float("nan")]), "options"),
    (lambda: Choice(["a", "a"]), "options"),
])
def test_bad_bounds_raise_value_error_naming_the_argument(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()


def test_non_numbers_are_type_errors():
    with pytest.raises(TypeError, match="low"):
        Uniform("0", 1)
    with pytest.raises(TypeError, match="high"):
        IntUniform(0, None)


def test_integral_floats_are_accepted_for_ints():
    assert IntLogUniform(16, 1e3) == IntLogUniform(16, 1000)
    assert type(IntLogUniform(16, 1e3).high) is int


# ---------------------------------------------------------------------------- grids

def test_log_uniform_grid_is_the_decades():
    np.testing.assert_allclose(LogUniform(1e-4, 1.0).grid(5), [1e-4, 1e-3, 1e-2, 1e-1, 1.0],
                               rtol=1e-12)


@pytest.mark.parametrize("dist, n, expected", [
    (Uniform(0.0, 1.0), 5, [0.0, 0.25, 0.5, 0.75, 1.0]),
    (Uniform(-1.0, 1.0), 1, [0.0]),
    (LogUniform(1e-4, 1.0), 1, [1e-2]),
    (LogUniform(1e-3, 1e-1), 3, [1e-3, 1e-2, 1e-1]),
    (OneMinusLogUniform(0.9, 0.999), 3, [0.9, 0.99, 0.999]),
    (OneMinusLogUniform(0.9, 0.9999), 4, [0.9, 0.99, 0.999, 0.9999]),
])
def test_float_grids_on_their_scale(dist, n, expected):
    np.testing.assert_allclose(dist.grid(n), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dist, n, expected", [
    (IntUniform(1, 5), 5, [1, 2, 3, 4, 5]),
    (IntUniform(1, 5), 20, [1, 2, 3, 4, 5]),      # no repeats
    (IntUniform(0, 100), 3, [0, 50, 100]),
    (IntLogUniform(1, 1000), 4, [1, 10, 100, 1000]),
    (IntLogUniform(16, 256), 5, [16, 32, 64, 128, 256]),
    (IntLogUniform(1, 4), 10, [1, 2, 3, 4]),
])
def test_int_grids_are_unique_values_on_their_scale(dist, n, expected):
    grid = dist.grid(n)
    assert grid == expected
    assert all(type(v) is int for v in grid)


def test_choice_grid_is_all_options():
    assert Choice(["x", 2, None]).grid(1) == ["x", 2, None]


def test_grid_needs_a_positive_count():
    with pytest.raises(ValueError, match="n"):
        Uniform(0, 1).grid(0)


# ---------------------------------------------------------------------------- config, equality

@pytest.mark.parametrize("dist", EXAMPLES, ids=repr)
def test_config_round_trip(dist):
    config = dist.to_config()
    assert config["type"] == type(dist).__name__
    back = distribution_from_config(json.loads(json.dumps(config)))
    assert back == dist and hash(back) == hash(dist)
    assert [back.from_unit(u) for u in np.linspace(0, 1, 11)] == \
        [dist.from_unit(u) for u in np.linspace(0, 1, 11)]


@pytest.mark.parametrize("dist", EXAMPLES, ids=repr)
def test_repr_recreates(dist):
    namespace = {cls.__name__: cls for cls in (Uniform, LogUniform, OneMinusLogUniform,
                                                 IntUniform, IntLogUniform, Choice)}
    assert eval(repr(dist), namespace) == dist


def test_equality():
    assert LogUniform(1e-4, 1) == LogUniform(1e-4, 1.0)
    assert LogUniform(1e-4, 1) != Uniform(1e-4, 1)
    assert LogUniform(1e-4, 1) != LogUniform(1e-3, 1)
    assert Choice([1, 2]) != Choice([True, 2])
    assert Choice(["a", "b"]) != Choice(["b", "a"])
    assert IntUniform(1, 3) != IntLogUniform(1, 3)
    assert isinstance(IntUniform(1, 3), Distribution)


@pytest.mark.parametrize("config, match", [
    ({"type": "Normal", "low": 0, "high": 1}, "type"),
    ({"low": 0, "high": 1}, "type"),
    ({"type": "Uniform", "low": 0}, "keys"),
    ({"type": "Uniform", "low": 0, "high": 1, "step": 2}, "keys"),
    ({"type": "Choice", "choices": [1]}, "keys"),
])
def test_bad_distribution_config(config, match):
    with pytest.raises(ValueError, match=match):
        distribution_from_config(config)


# ---------------------------------------------------------------------------- spaces

def space_example():
    return {
        "lr": LogUniform(1e-4, 1.0),
        "beta": OneMinusLogUniform(0.9, 0.999),
        "hidden": IntLogUniform(16, 256),
        "activation": Choice(["relu", "tanh"]),
        "epochs": 10,
        "layers": [64, 32],
        "extra": {"type": "Uniform", "low": 0, "high": 1},  # a constant that looks like a config
        "name": None,
    }


def test_check_space_returns_a_new_dict_in_order():
    space = space_example()
    checked = check_space(space)
    assert checked == space and checked is not space
    assert list(checked) == list(space)


def test_check_space_converts_numpy_constants():
    checked = check_space({"epochs": np.int64(5), "p": np.float32(0.5)})
    assert type(checked["epochs"]) is int and type(checked["p"]) is float


@pytest.mark.parametrize("space, error, match", [
    ([("lr", LogUniform(1e-4, 1))], TypeError, "space"),
    ({1: LogUniform(1e-4, 1)}, TypeError, "names"),
    ({"": LogUniform(1e-4, 1)}, ValueError, "empty"),
    ({"f": object()}, ValueError, "'f'"),
    ({"f": float("nan")}, ValueError, "'f'"),
    ({"f": {1, 2}}, ValueError, "'f'"),
])
def test_check_space_errors(space, error, match):
    with pytest.raises(error, match=match):
        check_space(space)


def test_space_config_round_trip_through_json():
    space = space_example()
    config = json.loads(json.dumps(space_to_config(space)))
    assert config["epochs"] == {"type": "Constant", "value": 10}
    back = space_from_config(config)
    assert back == space
    assert back["extra"] == {"type": "Uniform", "low": 0, "high": 1}  # still a constant
    assert not isinstance(back["extra"], Distribution)

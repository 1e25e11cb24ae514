"""Building a strategy or a pruner from its name (shared by the strategies and the pruners)."""

from __future__ import annotations


def build_by_name(kind: str, registry: dict, name: str, options: dict, *, or_also: str = ""):
    """``registry[name](**options)``, the name read case-insensitively with ``-`` as ``_``.

    An unknown name raises ValueError listing the known ones (and ``or_also``); options the
    class does not take raise TypeError naming ``kind`` and the name.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in registry:
        raise ValueError(f"{kind} must be one of {sorted(registry)}{or_also}; got {name!r}")
    try:
        return registry[key](**options)
    except TypeError as exc:
        raise TypeError(f"bad options for {kind} {key!r}: {exc}") from None

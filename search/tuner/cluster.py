"""What the Ray cluster of a search offers: the nodes alive now, and the nodes its autoscaler
may start later (a `ray up` cluster begins a search with its head alone)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

# `ray up` leaves the cluster's config, resources declared, here on the head node.
AUTOSCALING_CONFIG = "~/ray_bootstrap_config.yaml"


def autoscaler_nodes(config: str | Path | None = None) -> list[dict[str, float]]:
    """The resources of every node the autoscaler may start (a node type with max_workers 3
    counts 3 times, all types together at most the cluster's max_workers); [] without one."""
    try:
        loaded = yaml.safe_load(Path(config or AUTOSCALING_CONFIG).expanduser().read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    types: dict[str, Any] = loaded.get("available_node_types") or {}
    nodes = [dict(node.get("resources") or {}) for node in types.values()
             for _ in range(int(node.get("max_workers") or 0))]
    return nodes[:int(loaded.get("max_workers") or 0)]


def unfit_request(wanted: dict[str, float], nodes: list[dict[str, float]]) -> str | None:
    """Why no node could ever run a trial asking for `wanted` (Ray would wait for ever), or None.

    A trial runs on one node, so one node must have all of it; cluster totals do not count.
    """
    if any(trials_on(node, wanted) > 0 for node in nodes):
        return None
    largest = {name: max((node.get(name, 0) for node in nodes), default=0) for name in wanted}
    asked = ", ".join(f"{amount:g} {name}" for name, amount in wanted.items())
    has = ", ".join(f"{amount:g} {name}" for name, amount in largest.items())
    return (f"a trial asks for {asked} but no node of this Ray cluster (or that its autoscaler can start)"
            f" has that; the most any node has is {has}. Lower --cpus-per-trial / --gpus-per-trial")


def trials_on(node: dict[str, float], wanted: dict[str, float]) -> int:
    """How many trials asking for `wanted` fit on one node at once."""
    fits = [math.floor(node.get(name, 0) / amount + 1e-9) for name, amount in wanted.items() if amount > 0]
    return min(fits) if fits else 0


def trials_at_once(nodes: list[dict[str, float]], wanted: dict[str, float]) -> int:
    """How many trials the nodes can run at the same time."""
    return sum(trials_on(node, wanted) for node in nodes)

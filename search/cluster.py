"""What the Ray cluster of a search offers: the nodes alive now, and the nodes its autoscaler
may start later (a `ray up` cluster begins a search with its head alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# `ray up` leaves the cluster's config, resources declared, here on the head node.
AUTOSCALING_CONFIG = "~/ray_bootstrap_config.yaml"


def autoscaler_node_types(config: str | Path | None = None) -> list[dict[str, float]]:
    """The resources of each node type the autoscaler may start; [] without one."""
    try:
        loaded = yaml.safe_load(Path(config or AUTOSCALING_CONFIG).expanduser().read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    if int(loaded.get("max_workers") or 0) <= 0:
        return []
    types: dict[str, Any] = loaded.get("available_node_types") or {}
    return [dict(node.get("resources") or {}) for node in types.values() if int(node.get("max_workers") or 0) > 0]


def unfit_request(wanted: dict[str, float], nodes: list[dict[str, float]]) -> str | None:
    """Why no node could ever run a trial asking for `wanted` (Ray would wait for ever), or None.

    A trial runs on one node, so one node must have all of it; cluster totals do not count.
    """
    if any(all(node.get(name, 0) >= amount for name, amount in wanted.items()) for node in nodes):
        return None
    largest = {name: max((node.get(name, 0) for node in nodes), default=0) for name in wanted}
    asked = ", ".join(f"{amount:g} {name}" for name, amount in wanted.items())
    has = ", ".join(f"{amount:g} {name}" for name, amount in largest.items())
    return (f"a trial asks for {asked} but no node of this Ray cluster (or that its autoscaler can start)"
            f" has that; the most any node has is {has}. Lower --cpus-per-trial / --gpus-per-trial")

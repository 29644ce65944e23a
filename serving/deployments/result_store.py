"""The ResultStore deployment: the shared state (image store, result cache, async jobs, rate-limit
buckets) that every ingress replica reads and writes, so it runs as one replica."""

from __future__ import annotations

from ray import serve

from serving.dataplane.store import InMemoryStore


@serve.deployment(name="ResultStore")
class ResultStore(InMemoryStore):
    """Every method of the Store protocol, called through RayStore (deployments/handles.py)."""

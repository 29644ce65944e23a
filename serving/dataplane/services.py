"""The ingress's composition: one data plane, the job runner, the access policy and kserve's v2
data plane, built once per ingress replica and handed to both transports."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from serving.dataplane.access import AccessPolicy
from serving.dataplane.clients import ClientDirectory, KeyBook
from serving.dataplane.job_queue import RedisJobQueue
from serving.dataplane.jobs import JobRunner
from serving.dataplane.model import ServedModel
from serving.dataplane.redis_store import RedisStore
from serving.dataplane.service import DataPlane, ModelRoute
from serving.dataplane.stages import StageClient
from serving.dataplane.store import Store
from serving.dataplane.v2 import ServingKServeDataPlane
from serving.dataplane.webhooks import WebhookSender, WebhookTargets
from serving.metrics import IngressMetrics, Meter
from serving.settings import Settings


@dataclass(frozen=True)
class Services:
    data_plane: DataPlane
    jobs: JobRunner
    access: AccessPolicy
    v2: ServingKServeDataPlane

    @property
    def settings(self) -> Settings:
        return self.data_plane.settings

    @property
    def metrics(self) -> IngressMetrics:
        return self.data_plane.metrics


def build_services(
    settings: Settings, stages: dict[str, StageClient], store: Store, meter: Meter
) -> Services:
    """`stages`: each served model's StageClient, by model name (their configs and tokenizers
    are read here)."""
    routes = {
        name: ModelRoute(ServedModel.load(settings, name, spec), stages[name])
        for name, spec in settings.served_models().items()
    }
    keys = None if settings.api_keys_file is None else KeyBook.load(settings.api_keys_file)
    clients = ClientDirectory(keys)
    data_plane = DataPlane(settings, routes, store, IngressMetrics.create(meter), clients)
    secret = settings.webhook_secret
    webhooks = None
    if secret is not None:
        webhooks = WebhookSender(
            secret.get_secret_value().encode(),
            timeout_s=settings.webhook_timeout_s,
            attempts=settings.webhook_attempts,
            targets=WebhookTargets.allowing(settings.webhook_allow),
        )
    queue = None
    if isinstance(store, RedisStore):  # jobs outlive their replica: any replica's worker runs them
        consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        queue = RedisJobQueue(store, consumer, settings.job_lease_s)
    return Services(
        data_plane=data_plane,
        jobs=JobRunner(data_plane, store, webhooks, queue),
        access=AccessPolicy.from_settings(settings, store, keys),
        v2=ServingKServeDataPlane(data_plane),
    )

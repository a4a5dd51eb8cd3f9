"""The parts every responsibility of the coordinator works with, built once by `service.py`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.learning import Learning
from comfyfleet.coordinator.ledger import Ledger
from comfyfleet.coordinator.metrics import Metrics
from comfyfleet.coordinator.outputs import OutputFiles
from comfyfleet.coordinator.state import Live
from comfyfleet.coordinator.store import Store
from comfyfleet.coordinator.store.base import SharedStore
from comfyfleet.coordinator.tenants import Tenants


@dataclass(frozen=True, slots=True)
class Parts:
    config: CoordinatorConfig
    store: Store
    outputs: OutputFiles
    live: Live  # the placing coordinator's memory
    ledger: Ledger  # the one write path
    learning: Learning
    metrics: Metrics
    clock: Callable[[], float]
    tenants: Tenants  # per-tenant settings: webhook subscriptions and secret, retention
    shared: SharedStore | None = None  # the same store, when several coordinators share it


class Part:
    """Base of Intake, AgentLink, Reports, Placer and Sweeper: the shared parts as attributes."""

    def __init__(self, parts: Parts) -> None:
        self.config = parts.config
        self.store = parts.store
        self.outputs = parts.outputs
        self.live = parts.live
        self.ledger = parts.ledger
        self.learning = parts.learning
        self.metrics = parts.metrics
        self.clock = parts.clock
        self.tenants = parts.tenants
        self.shared = parts.shared

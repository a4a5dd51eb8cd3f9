"""Typed application keys: every object the handlers reach through the app."""

from __future__ import annotations

from aiohttp import web

from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.leader import Role
from comfyfleet.coordinator.service import Coordinator
from comfyfleet.shared.supervisor import Supervisor

CONFIG = web.AppKey("config", CoordinatorConfig)
COORDINATOR = web.AppKey("coordinator", Coordinator)
SUPERVISOR = web.AppKey("supervisor", Supervisor)
ROLE = web.AppKey("role", Role)

"""Typed application keys of the facade's aiohttp app, and the small state it shares."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from aiohttp import web

from comfyfleet.coordinator.api.keys import CONFIG
from comfyfleet.coordinator.comfy.deleted import DeletedHistory
from comfyfleet.coordinator.comfy.files import UploadStore
from comfyfleet.coordinator.comfy.frontend import Frontend
from comfyfleet.coordinator.comfy.hub import Hub
from comfyfleet.coordinator.comfy.port import FleetPort
from comfyfleet.coordinator.comfy.userdata import UserData
from comfyfleet.coordinator.comfy.v2.assets import AssetIndex
from comfyfleet.coordinator.comfy.v2.streams import JobStreams


@dataclass(slots=True)
class Numbers:
    """ComfyUI's prompt `number`: one counter, started from the clock (milliseconds) so numbers
    keep growing across coordinator restarts."""

    counter: itertools.count[int] = field(
        default_factory=lambda: itertools.count(int(time.time() * 1000))
    )

    def next(self) -> int:
        return next(self.counter)


COMFY_CONFIG = CONFIG  # the coordinator's config (body limits, timeouts, data dir)
PORT = web.AppKey("comfy_port", FleetPort)
HUB = web.AppKey("comfy_hub", Hub)
UPLOADS = web.AppKey("comfy_uploads", UploadStore)
DELETED = web.AppKey("comfy_deleted", DeletedHistory)
NUMBERS = web.AppKey("comfy_numbers", Numbers)
ASSETS = web.AppKey("comfy_v2_assets", AssetIndex)
STREAMS = web.AppKey("comfy_v2_streams", JobStreams)
USERDATA = web.AppKey("comfy_userdata", UserData)
FRONTEND = web.AppKey("comfy_frontend", Frontend)

"""`comfyfleet.client`: the Python client of the coordinator's API (async and sync).

from comfyfleet.client import Client
with Client("http://127.0.0.1:8787") as fleet:
    job = fleet.submit(workflow, vram_mb=6000)
    for event in fleet.events(job.id):
        print(event.kind, event.data)
    fleet.download_outputs(job.id, "out/")
"""

from comfyfleet.client.aio import AsyncClient
from comfyfleet.client.errors import APIError, ClientError, UIFormatWorkflow
from comfyfleet.client.models import (
    TERMINAL,
    Agent,
    Gpu,
    Job,
    JobList,
    Output,
    Progress,
    StreamEvent,
)
from comfyfleet.client.settings import DEFAULT_URL, resolve_api_key, resolve_url
from comfyfleet.client.sync import Client

__all__ = [
    "DEFAULT_URL",
    "TERMINAL",
    "APIError",
    "Agent",
    "AsyncClient",
    "Client",
    "ClientError",
    "Gpu",
    "Job",
    "JobList",
    "Output",
    "Progress",
    "StreamEvent",
    "UIFormatWorkflow",
    "resolve_api_key",
    "resolve_url",
]

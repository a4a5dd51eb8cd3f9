"""The ComfyUI facade in process, as `--comfy-listen` runs it: its app shares the coordinator
of the main app. `Facade.agent()` registers a protocol agent that describes its ComfyUI (the
simulator's /object_info). Used by the facade's API tests (tests/api/)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from comfyfleet.coordinator.api.auth import KEYRING
from comfyfleet.coordinator.api.keys import COORDINATOR
from comfyfleet.coordinator.app import create_app
from comfyfleet.coordinator.comfy.app import create_comfy_app
from comfyfleet.coordinator.keyring import new_credential, write_keys
from comfyfleet.shared import protocol as p
from comfyfleet.sim.nodes import CatalogueContext, object_info
from tests.api.conftest import fast_config
from tests.helpers.protocol_agent import ProtocolAgent

__all__ = ["NORMAL", "Facade", "make", "png"]

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui-traces"
NORMAL = json.loads((TRACES / "01_normal.json").read_text())["post"]["request_json"]
OBJECT_INFO = json.loads(json.dumps(object_info(CatalogueContext())))


class Facade:
    def __init__(self, main: Any, comfy: Any, creds: dict[str, str]) -> None:
        self.main = main
        self.client = comfy
        self.creds = creds

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.creds[who]}"} if who in self.creds else {}

    async def agent(self) -> ProtocolAgent:
        base = str(self.main.make_url("/"))
        session = _AgentSession(self.main.session, self.creds.get("gpu"))
        agent = ProtocolAgent(session, base, "gpu-1")
        await agent.call(
            "register",
            p.Register(
                agent_id="gpu-1",
                gpus=agent.gpus,
                instances=agent.instances,
                host=agent.host,
                comfyui=p.ComfyCatalog(object_info=OBJECT_INFO, models={"checkpoints": ["a"]}),
            ),
            p.RegisterReply,
        )
        return agent


class _AgentSession:
    def __init__(self, session: Any, token: str | None) -> None:
        self.session = session
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def post(self, url: str, **kw: Any) -> Any:
        kw["headers"] = {**kw.get("headers", {}), **self.headers}
        return self.session.post(url, **kw)

    def put(self, url: str, **kw: Any) -> Any:
        kw["headers"] = {**kw.get("headers", {}), **self.headers}
        return self.session.put(url, **kw)

    def get(self, url: str, **kw: Any) -> Any:
        kw["headers"] = {**kw.get("headers", {}), **self.headers}
        return self.session.get(url, **kw)


async def make(aiohttp_client: Any, tmp_path: Path, keys: bool) -> Facade:
    config = fast_config(tmp_path)
    creds: dict[str, str] = {}
    if keys:
        entries = {}
        for who, kind, tenant in (("acme", "client", "acme"), ("beta", "client", "beta"),
                                  ("gpu", "agent", None)):  # fmt: skip
            agent_id = "gpu-1" if kind == "agent" else None  # the token of agent gpu-1 only
            cred, entry = new_credential(kind, tenant=tenant, agent_id=agent_id)  # type: ignore[arg-type]
            creds[who] = cred
            entries[entry.id] = entry
        write_keys(config.keys_path, entries)
    main = await aiohttp_client(create_app(config))
    app = main.server.app
    comfy = await aiohttp_client(create_comfy_app(config, app[COORDINATOR], app[KEYRING]))
    return Facade(main, comfy, creds)


def png(color: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()

"""The one worker that runs queued prompts in order, emitting ComfyUI's event stream.

Orders follow COMFYUI.md "Orders seen": per node progress_state(running), executing(n),
[progress_state/progress/preview per step], [executed(n)], progress_state(finished); cached
output nodes only re-send `executed`; the prompt ends with execution_success / execution_error /
execution_interrupted, then `status`, then `executing{node: null}`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from comfyfleet.sim import events
from comfyfleet.sim.behaviours import BEHAVIOURS, NodeFailure, NodeResult
from comfyfleet.sim.config import SimConfig
from comfyfleet.sim.costs import burn
from comfyfleet.sim.faults import Faults
from comfyfleet.sim.files import annotated_input_path
from comfyfleet.sim.graph import cache_keys, execution_order, is_link
from comfyfleet.sim.images import SimModel
from comfyfleet.sim.naming import UnsafePath
from comfyfleet.sim.nodes import CATALOGUE
from comfyfleet.sim.prompt_queue import PromptQueue, QueueItem
from comfyfleet.sim.stats import SimStats
from comfyfleet.sim.vram import OOM_TIPS, OutOfVram, Vram
from comfyfleet.sim.ws import Hub, encode_preview, encode_preview_meta, encode_text

__all__ = ["Crashed", "Executor", "Interrupted"]

log = structlog.get_logger(__name__)

CRASH_EXIT_CODE = 1
_TEMP_LETTERS = "abcdefghijklmnopqrstupvxyz"  # sic, ComfyUI's alphabet


class Interrupted(Exception):
    """POST /interrupt seen at a check point."""


class Crashed(Exception):
    """The crash fault fired (only survives when exit_fn returns, i.e. in-process tests)."""


@dataclass(frozen=True)
class CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None


def now_ms() -> int:
    return int(time.time() * 1000)


def _fake_traceback(class_type: str, exception_type: str) -> list[str]:
    return [
        '  File "comfyui-sim/execution.py", line 496, in execute\n'
        "    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data("
        "prompt_id, unique_id, obj, input_data_all)\n",
        f'  File "comfyui-sim/nodes.py", line 1, in {class_type}\n'
        f"    raise {exception_type}(message)\n",
    ]


class Executor:
    def __init__(
        self,
        *,
        config: SimConfig,
        queue: PromptQueue,
        hub: Hub,
        vram: Vram,
        faults: Faults,
        stats: SimStats,
        exit_fn: Callable[[int], None],
    ) -> None:
        self.config = config
        self.queue = queue
        self.hub = hub
        self.vram = vram
        self.faults = faults
        self.stats = stats
        self.exit_fn = exit_fn
        self.rng = random.Random(config.seed)
        self.cache: dict[str, CacheEntry] = {}
        self.current: QueueItem | None = None
        self.last_node_id: str | None = None
        self.interrupt_requested = False
        self.dead = False
        self.hung = False
        self._temp_suffixes: dict[tuple[str, str], str] = {}
        self._models = {m.name: m for m in config.models}
        self._worker: asyncio.Task[None] | None = None
        self._faults_changed = asyncio.Event()

    # --- control ---------------------------------------------------------------------------

    def request_interrupt(self, prompt_id: str | None = None) -> bool:
        """ComfyUI's /interrupt: global, or only if `prompt_id` is the running prompt."""
        self.stats.interrupt_requests += 1
        if prompt_id:
            if self.current is None or self.current.prompt_id != prompt_id:
                log.info("sim.interrupt_ignored", prompt_id=prompt_id)
                return False
        self.interrupt_requested = True
        return True

    def faults_changed(self) -> None:
        """Wake a hung worker so it re-reads the knobs."""
        self._faults_changed.set()

    def start(self) -> asyncio.Task[None]:
        self._worker = asyncio.create_task(self.run_forever(), name="comfyui-sim-worker")
        return self._worker

    async def run_forever(self) -> None:
        while not self.dead:
            item = await self.queue.get()
            try:
                entry = await self.execute(item)
            except Crashed:
                return
            self.queue.task_done(item, entry)
            if item.client_id is not None:
                done = events.executing_done(item.prompt_id)
                self.hub.send_json("executing", done, item.client_id)

    def die(self, reason: str) -> None:
        self.stats.crashes += 1
        log.error("sim.crash", reason=reason)
        self.dead = True
        self.exit_fn(CRASH_EXIT_CODE)

    # --- one prompt ------------------------------------------------------------------------

    def _is_changed(self, node_id: str, node: dict[str, Any]) -> str | None:
        if node["class_type"] != "LoadImage":
            return None
        image = node["inputs"].get("image")
        path = annotated_input_path(self.config, image) if isinstance(image, str) else None
        try:
            st = path.stat() if path is not None else None
        except OSError:
            return None
        return None if st is None else f"{st.st_size}:{st.st_mtime_ns}"

    async def execute(self, item: QueueItem) -> dict[str, Any]:
        self.interrupt_requested = False
        self.current = item
        self.stats.prompts_started += 1
        run = _PromptRun(self, item)
        timers = self._start_fault_timers(item)
        try:
            await run.run()
        finally:
            for timer in timers:
                timer.cancel()
            self.vram.release_all_working()
            self.current = None
            self.last_node_id = None
        self.stats.prompts_executed += 1
        return run.history_entry()

    def _start_fault_timers(self, item: QueueItem) -> list[asyncio.Task[None]]:
        timers: list[asyncio.Task[None]] = []
        crash_after = self.faults.crash_after_s
        if crash_after is not None:
            timers.append(asyncio.create_task(self._crash_later(crash_after)))
        drop_after = self.faults.drop_ws_after_s
        if drop_after is not None and item.client_id is not None:
            timers.append(asyncio.create_task(self._drop_later(drop_after, item.client_id)))
        return timers

    async def _crash_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.die(f"crash_after_s={delay}")
        if self._worker is not None:
            self._worker.cancel()

    async def _drop_later(self, delay: float, client_id: str) -> None:
        await asyncio.sleep(delay)
        await self.hub.drain()
        if await self.hub.close_client(client_id):
            self.stats.ws_dropped += 1
            log.warning("sim.ws_dropped", client_id=client_id)

    async def checkpoint(self) -> None:
        """Where ComfyUI checks its interrupt flag; also where `hang` stops the worker."""
        if self.faults.hang:
            self.hung = True
            self.stats.hangs += 1
            log.warning("sim.hang")
            while self.faults.hang:
                self._faults_changed.clear()
                await self._faults_changed.wait()
            self.hung = False
        if self.interrupt_requested:
            raise Interrupted

    def temp_suffix(self, node_id: str, class_type: str) -> str:
        key = (node_id, class_type)
        if key not in self._temp_suffixes:
            self._temp_suffixes[key] = "_temp_" + "".join(
                self.rng.choice(_TEMP_LETTERS) for _ in range(5)
            )
        return self._temp_suffixes[key]

    def model(self, name: str) -> SimModel:
        spec = self._models.get(name)
        if spec is None:
            raise NodeFailure(
                "FileNotFoundError",
                f"Model in folder 'checkpoints' with filename '{name}' not found.",
            )
        return SimModel(spec.name, spec.vram_mb)


class _PromptRun:
    """State of one prompt while it runs; builds the history entry at the end."""

    def __init__(self, ex: Executor, item: QueueItem) -> None:
        self.ex = ex
        self.item = item
        self.pid = item.prompt_id
        self.client = item.client_id
        self.hub = ex.hub
        self.tracker = events.ProgressTracker(self.pid)
        self.messages: list[list[Any]] = []
        self.values: dict[str, tuple[Any, ...]] = {}
        self.executed: list[str] = []
        self.ui_outputs: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
        self.success = False
        # when the node work done so far is due: the prompt's own bookkeeping (frames, files)
        # is absorbed into its nodes' nominal time, so a prompt takes what its nodes say
        self.work_due: float | None = None
        self.keys: dict[str, str] = {}

    def add_message(self, event: str, data: dict[str, Any], broadcast: bool = False) -> None:
        self.messages.append([event, data])
        if self.client is not None or broadcast:
            self.hub.send_json(event, data, self.client)

    def send_client(self, event: str, data: dict[str, Any]) -> None:
        if self.client is not None:
            self.hub.send_json(event, data, self.client)

    def history_entry(self) -> dict[str, Any]:
        return {
            "prompt": self.item.as_list(),
            "outputs": self.ui_outputs,
            "status": {
                "status_str": "success" if self.success else "error",
                "completed": self.success,
                "messages": self.messages,
            },
            "meta": self.meta,
        }

    async def run(self) -> None:
        prompt = self.item.prompt
        self.add_message("execution_start", {"prompt_id": self.pid, "timestamp": now_ms()})
        self.work_due = asyncio.get_running_loop().time()
        self.keys = cache_keys(prompt, CATALOGUE, self.ex._is_changed)
        wanted = set(self.keys.values())
        for key in [k for k in self.ex.cache if k not in wanted]:
            del self.ex.cache[key]  # ComfyUI's classic cache keeps only the latest prompt's nodes
        cached = [n for n in prompt if self.keys[n] in self.ex.cache]
        self.add_message(
            "execution_cached", {"nodes": cached, "prompt_id": self.pid, "timestamp": now_ms()}
        )
        order = execution_order(prompt, self.item.outputs, lambda n: self.keys[n] in self.ex.cache)
        node_id = order[0] if order else ""
        try:
            for node_id in order:
                entry = self.ex.cache.get(self.keys[node_id])
                if entry is not None:
                    self._replay_cached(node_id, entry)
                else:
                    await self._run_node(node_id)
        except Interrupted:
            self.ex.stats.prompts_interrupted += 1
            log.info("sim.interrupted", prompt_id=self.pid, node_id=node_id)
            self.add_message(
                "execution_interrupted",
                {
                    "prompt_id": self.pid,
                    "node_id": node_id,
                    "node_type": prompt[node_id]["class_type"],
                    "executed": list(self.executed),
                    "timestamp": now_ms(),
                },
                broadcast=True,
            )
            return
        except Crashed:
            raise
        except Exception as exc:  # noqa: BLE001 - every node failure becomes execution_error
            self._fail(node_id, exc)
            return
        self.success = True
        self.ex.stats.prompts_succeeded += 1
        self.add_message("execution_success", {"prompt_id": self.pid, "timestamp": now_ms()})

    def _replay_cached(self, node_id: str, entry: CacheEntry) -> None:
        self.values[node_id] = entry.outputs
        self.send_client("executed", events.executed(node_id, entry.ui, self.pid))
        if entry.ui is not None:
            self.ui_outputs[node_id] = entry.ui
            self.meta[node_id] = events.display_meta(node_id)
        self.hub.send_json("progress_state", self.tracker.finish(node_id), self.client)
        self.ex.stats.nodes_cached += 1

    def _input_value(self, value: Any) -> Any:
        if not is_link(value):
            return value
        up, slot = value
        outputs = self.values.get(up)
        if outputs is None:
            outputs = self.ex.cache[self.keys[up]].outputs
        return outputs[slot]

    async def _run_node(self, node_id: str) -> None:
        ex = self.ex
        node = self.item.prompt[node_id]
        class_type = node["class_type"]
        spec = CATALOGUE[class_type]
        self.hub.send_json("progress_state", self.tracker.start(node_id), self.client)
        ex.last_node_id = node_id
        self.send_client("executing", events.executing(node_id, self.pid))
        if ex.faults.crash_on_prompt == ex.stats.prompts_started:
            await asyncio.wait_for(self.hub.drain(), timeout=1.0)
            ex.die(f"crash_on_prompt={ex.faults.crash_on_prompt}")
            raise Crashed
        await ex.checkpoint()
        if ex.faults.fail_class_type == class_type:
            ex.stats.injected_failures += 1
            raise NodeFailure("RuntimeError", f"Simulated failure of node {class_type} ({node_id})")
        if ex.faults.oom_node_class == class_type or (
            spec.uses_vram and ex.faults.oom_roll(ex.rng)
        ):
            raise OutOfVram(ex.vram.total_mb, ex.vram.used_mb, ex.vram.total_mb)
        inputs = {name: self._input_value(v) for name, v in node["inputs"].items()}
        ctx = _NodeRun(self, node_id, class_type)
        try:
            result: NodeResult = await BEHAVIOURS[class_type](ctx, inputs)
        finally:
            ex.vram.release(node_id)
        ex.stats.nodes_executed += 1
        self.values[node_id] = result.outputs
        ex.cache[self.keys[node_id]] = CacheEntry(result.outputs, result.ui)
        if result.ui is not None:
            self.ui_outputs[node_id] = result.ui
            self.meta[node_id] = events.display_meta(node_id)
            self.send_client("executed", events.executed(node_id, result.ui, self.pid))
        self.hub.send_json("progress_state", self.tracker.finish(node_id), self.client)
        self.executed.append(node_id)

    def _fail(self, node_id: str, exc: Exception) -> None:
        ex = self.ex
        prompt = self.item.prompt
        class_type = prompt[node_id]["class_type"]
        tips = ""
        if isinstance(exc, NodeFailure):
            exception_type, message, tips = exc.exception_type, exc.message, exc.tips
        elif isinstance(exc, OutOfVram):
            exception_type, message, tips = "torch.OutOfMemoryError", str(exc), OOM_TIPS
            ex.stats.oom_errors += 1
            ex.vram.unload_all()  # ComfyUI: "Got an OOM, unloading all loaded models."
        elif isinstance(exc, UnsafePath):
            exception_type, message = "Exception", str(exc)
        else:
            cls = type(exc)
            exception_type = (
                cls.__qualname__
                if cls.__module__ == "builtins"
                else f"{cls.__module__}.{cls.__qualname__}"
            )
            message = str(exc)
        ex.stats.prompts_failed += 1
        log.info("sim.execution_error", prompt_id=self.pid, node_id=node_id, type=exception_type)
        self.add_message(
            "execution_error",
            {
                "prompt_id": self.pid,
                "node_id": node_id,
                "node_type": class_type,
                "executed": list(self.executed),
                "exception_message": f"{message}\n{tips}",
                "exception_type": exception_type,
                "traceback": _fake_traceback(class_type, exception_type),
                "current_inputs": self._current_inputs(node_id),
                "current_outputs": list(prompt),
                "timestamp": now_ms(),
            },
        )

    def _current_inputs(self, node_id: str) -> dict[str, list[Any]]:
        node = self.item.prompt[node_id]
        out: dict[str, list[Any]] = {}
        for name, value in node["inputs"].items():
            try:
                resolved = self._input_value(value)
            except (KeyError, IndexError):
                resolved = None
            out[name] = [events.format_value(resolved)]
        for name, kind in CATALOGUE[node["class_type"]].hidden.items():
            hidden: Any = {
                "PROMPT": self.item.prompt,
                "EXTRA_PNGINFO": self.item.extra_data.get("extra_pnginfo"),
                "UNIQUE_ID": node_id,
            }.get(kind)
            out[name] = [events.format_value(hidden)]
        return out


class _NodeRun:
    """The NodeContext a behaviour sees (behaviours.NodeContext)."""

    def __init__(self, run: _PromptRun, node_id: str, class_type: str) -> None:
        self._run = run
        self._ex = run.ex
        self.node_id = node_id
        self.class_type = class_type
        self.prompt = run.item.prompt
        self.extra_data = run.item.extra_data
        self.config = run.ex.config

    async def work(self, ms: float) -> None:
        if self.config.node_cpu:  # off the event loop, as ComfyUI's prompt worker thread
            await asyncio.to_thread(burn, ms)
            return
        now = asyncio.get_running_loop().time()
        run = self._run
        run.work_due = (now if run.work_due is None else run.work_due) + max(0.0, ms) / 1000.0
        await asyncio.sleep(max(0.0, run.work_due - now))

    async def step(self, value: int, maximum: int, preview: tuple[str, bytes] | None) -> None:
        await self._ex.checkpoint()
        run, hub, client = self._run, self._run.hub, self._run.client
        hub.send_json("progress_state", run.tracker.update(self.node_id, value, maximum), client)
        with_meta = hub.supports_preview_metadata(client)
        if preview is not None and with_meta:
            meta = {
                "node_id": self.node_id,
                "prompt_id": run.pid,
                "display_node_id": self.node_id,
                "parent_node_id": None,
                "real_node_id": self.node_id,
            }
            hub.send_bytes(encode_preview_meta(preview[0], preview[1], meta), client)
        hub.send_json("progress", events.progress(value, maximum, run.pid, self.node_id), client)
        if preview is not None and not with_meta:
            hub.send_bytes(encode_preview(preview[0], preview[1]), client)

    def text(self, text: str) -> None:
        self._run.hub.send_bytes(encode_text(self.node_id, text), self._run.client)

    def temp_suffix(self) -> str:
        return self._ex.temp_suffix(self.node_id, self.class_type)

    def model(self, name: str) -> SimModel:
        return self._ex.model(name)

    async def ensure_loaded(self, model: SimModel) -> None:
        if self._ex.vram.load_model(model.name, model.vram_mb):
            log.info("sim.model_loaded", model=model.name, vram_mb=model.vram_mb)
            await self.work(self.config.load_ms_per_gb * model.vram_mb / 1024)

    def allocate(self, size_mb: int, keep: tuple[str, ...] = ()) -> None:
        self._ex.vram.allocate(self.node_id, size_mb, keep)

    def input_path(self, name: str) -> Path:
        path = annotated_input_path(self.config, name)
        if path is None:
            raise NodeFailure("FileNotFoundError", f"Invalid image file: {name}")
        return path

    def saved(self, count: int) -> None:
        self._ex.stats.files_saved += count

"""Comfy API v2 (`/api/v2/...`) over the fleet, on the `--comfy-listen` listener.

The contract is Comfy-Org's Comfy API v2 as `comfy-api-proxy` serves it over one ComfyUI and
Comfy's `comfy-sdk` calls it: jobs (submit, list, get, cancel, workflow, SSE events), assets
(multipart upload, from-hash, by-hash, get, content, delete) and a health probe, with its error
envelope `{"error": {"code", "message", "details"}}`. A v2 job is a ComfyUI prompt of the facade
(its id is the prompt_id, and its client_id too, as the proxy submits), so it is a fleet job,
shows in `/history` and `/queue`, and survives restarts like every job.

Pure core: `shapes` (the job, output and list JSON from a job record), `submit` (the body and
its `core/ASSET` references), `progress` (the progress snapshot from ComfyUI's frames). Shell:
`assets` (the durable per-tenant asset index), `streams` (live state and SSE subscribers,
fed by the coordinator), `routes_jobs`, `routes_assets`, `errors` (refusals in v2's shape).
"""

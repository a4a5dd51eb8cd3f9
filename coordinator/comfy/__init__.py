"""The coordinator as a ComfyUI (`--comfy-listen`): ComfyUI's own HTTP and WebSocket API, its
Jobs API, Comfy API v2 and ComfyUI's stock web UI, over the fleet (DESIGN.md §5 "Speaking
ComfyUI").

Pure core: `prompts` (a /prompt body -> a fleet job), `history` (/history and /queue from job
records), `jobs_api` (the Jobs API's entries), `stream` (one prompt's frames, replayed from what
the agent forwards), `catalog` (the fleet's /object_info, /models, /system_stats); ComfyUI's
validation rules live in `shared/comfy_validation.py` (the simulator uses them too). Shell:
`admit` (validate a prompt and carry its files), `files` and `deleted` (uploads, hidden
history, on disk), `userdata` (the web UI's settings and files), `frontend` (where the UI's
files are), `hub` (WebSocket clients), `port` (the one door to the coordinator), `routes_*`,
`ws`, `auth`, `errors`, `app`. Comfy API v2 is the `v2` package (its own module map).
"""

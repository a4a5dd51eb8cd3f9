"""The coordinator as a ComfyUI (`--comfy-listen`): ComfyUI's own HTTP and WebSocket API over
the fleet (DESIGN.md §5 "Speaking ComfyUI").

Pure core: `validation` (ComfyUI's prompt validation over /object_info documents), `prompts`
(a /prompt body -> a fleet job), `history` (/history and /queue from job records), `stream` (one
prompt's frames, replayed from what the agent forwards), `catalog` (the fleet's /object_info,
/models, /system_stats). Shell: `files` and `deleted` (uploads, hidden history, on disk), `hub`
(WebSocket clients), `port` (the one door to the coordinator), `routes_*`, `ws`, `auth`,
`errors`, `app`.
"""

"""ComfyUIs the agent runs itself (process, docker) and heals: plan, policy, runtimes, healer."""

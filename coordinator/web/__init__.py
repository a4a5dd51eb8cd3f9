"""The web dashboard: static HTML, JavaScript and CSS served by the coordinator (no build step)."""

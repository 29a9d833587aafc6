"""The MLRB engine: events, journal, bus, sandboxes, agents, telemetry, control, scheduling.

Headless by contract: nothing here imports Textual or the console.
"""

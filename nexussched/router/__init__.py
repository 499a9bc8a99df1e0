"""The router: routing policies (pure, shared with the simulator) and the live aiohttp service."""

"""The HTTP layer: translates requests to whisper_service calls and results back to HTTP."""

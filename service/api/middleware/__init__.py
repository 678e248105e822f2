"""ASGI middleware: body limits, admission, request metrics and API keys, one module each."""

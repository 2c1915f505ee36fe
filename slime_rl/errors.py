"""Errors raised to users. Each message names the input that is wrong and how to fix it."""


class SlimeRLError(Exception):
    """Base class of every error slime-rl raises on purpose."""


class ConfigError(SlimeRLError, ValueError):
    """A config value is missing, unknown or out of range."""


class DataError(SlimeRLError, ValueError):
    """A dataset row or a stored record cannot be read; the message names file and line or key."""


class ServiceError(SlimeRLError, RuntimeError):
    """An external service (Redis, Ray, an engine, the router) failed to start or answer."""

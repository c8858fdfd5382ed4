"""The dashboard: a Starlette app over the public client API and the store port.

It never touches a driver: everything goes through ``ow_es.OpenWorkflow`` and ``ow.store``.
"""

from __future__ import annotations

from ow_es.dashboard.app import create_app

__all__ = ["create_app"]

"""Permissions: one rule each."""

from __future__ import annotations

from typing import Any

from rest_framework import permissions

from .authentication import Principal, channel_of


class HasPrincipal(permissions.BasePermission):
    """The request carries valid credentials for some owner."""

    def has_permission(self, request: Any, view: Any) -> bool:
        return isinstance(request.auth, Principal)


class ChannelAllowed(permissions.BasePermission):
    """The credentials may use the channel named by the path."""

    message = "These credentials are not valid for this channel."

    def has_permission(self, request: Any, view: Any) -> bool:
        return isinstance(request.auth, Principal) and request.auth.allows(channel_of(request))

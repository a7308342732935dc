"""Discord API v10 objects as the real API serialises them, built from a few fields."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime

ALL_PERMISSIONS = str((1 << 50) - 1)
MEMBER_PERMISSIONS = str(0x400 | 0x800 | 0x8000 | 0x4000 | 0x80000000)  # view, send, attach, embed, use commands
MANAGE_MESSAGES = 0x2000
MANAGE_GUILD = 0x20

_ids = itertools.count(int(time.time() * 1000 - 1420070400000) << 22)


def snowflake() -> int:
    """Increasing ids shaped like Discord's (milliseconds since the Discord epoch in the top bits)."""
    return next(_ids)


def iso_now() -> str:
    return datetime.now(UTC).isoformat()


def user(user_id: int, name: str, *, bot: bool = False) -> dict:
    return {
        "id": str(user_id),
        "username": name,
        "global_name": name,
        "discriminator": "0",
        "avatar": None,
        "bot": bot,
        "public_flags": 0,
        "flags": 0,
    }


def member(user_payload: dict, *, permissions: str = MEMBER_PERMISSIONS, roles: list[str] | None = None) -> dict:
    return {
        "user": user_payload,
        "nick": None,
        "roles": roles or [],
        "joined_at": iso_now(),
        "deaf": False,
        "mute": False,
        "flags": 0,
        "pending": False,
        "permissions": permissions,
    }


def text_channel(channel_id: int, guild_id: int, name: str, *, nsfw: bool = False) -> dict:
    return {
        "id": str(channel_id),
        "type": 0,
        "guild_id": str(guild_id),
        "name": name,
        "position": 0,
        "permission_overwrites": [],
        "nsfw": nsfw,
        "topic": None,
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "parent_id": None,
        "flags": 0,
    }


def dm_channel(channel_id: int, recipient: dict) -> dict:
    return {"id": str(channel_id), "type": 1, "recipients": [recipient], "last_message_id": None, "flags": 0}


def role(role_id: int, name: str, permissions: str = MEMBER_PERMISSIONS) -> dict:
    return {
        "id": str(role_id),
        "name": name,
        "permissions": permissions,
        "position": 0,
        "color": 0,
        "hoist": False,
        "managed": False,
        "mentionable": False,
        "flags": 0,
    }


def guild(guild_id: int, owner_id: int, channels: list[dict], members: list[dict]) -> dict:
    everyone = role(guild_id, "@everyone")
    return {
        "id": str(guild_id),
        "name": "Test Server",
        "icon": None,
        "owner_id": str(owner_id),
        "roles": [everyone],
        "channels": channels,
        "members": members,
        "member_count": len(members),
        "features": [],
        "emojis": [],
        "stickers": [],
        "large": False,
        "unavailable": False,
        "joined_at": iso_now(),
        "voice_states": [],
        "presences": [],
        "threads": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
        "premium_tier": 0,
        "mfa_level": 0,
        "verification_level": 0,
        "explicit_content_filter": 0,
        "default_message_notifications": 0,
        "system_channel_flags": 0,
        "preferred_locale": "en-US",
        "nsfw_level": 0,
        "afk_timeout": 300,
        "afk_channel_id": None,
        "system_channel_id": None,
        "rules_channel_id": None,
        "public_updates_channel_id": None,
        "description": None,
        "banner": None,
        "splash": None,
        "discovery_splash": None,
        "vanity_url_code": None,
        "premium_subscription_count": 0,
        "max_members": 500000,
        "application_id": None,
    }


def attachment(attachment_id: int, filename: str, data_size: int, url: str, **extra: object) -> dict:
    return {
        "id": str(attachment_id),
        "filename": filename,
        "size": data_size,
        "url": url,
        "proxy_url": url,
        **extra,
    }

"""The checker must be able to fail: bodies that break Discord's schema are reported."""

from __future__ import annotations

from tests.fakediscord import OpenApiSpec
from tests.fakediscord.spec import embed_limit_violations


def test_operations_are_matched_literal_segments_first(discord_spec: OpenApiSpec) -> None:
    assert discord_spec.find("PATCH", "/webhooks/1/abc/messages/@original").template.endswith("@original")
    assert discord_spec.find("PATCH", "/webhooks/1/abc/messages/42").template.endswith("{message_id}")
    assert discord_spec.find("POST", "/not/a/route") is None


def test_valid_and_invalid_bodies(discord_spec: OpenApiSpec) -> None:
    callback = discord_spec.find("POST", "/interactions/1/abc/callback")
    assert discord_spec.violations(callback, {"type": 5}) == []
    assert discord_spec.violations(callback, {"type": 4, "data": {"content": "hi", "flags": 64}}) == []
    [too_long] = discord_spec.violations(callback, {"type": 4, "data": {"content": "x" * 2001}})
    assert "data/content" in too_long
    edit = discord_spec.find("PATCH", "/webhooks/1/abc/messages/@original")
    [integer_id] = discord_spec.violations(edit, {"attachments": [{"id": 0, "filename": "a.png"}]})
    assert "attachments/0/id" in integer_id and "string" in integer_id
    row = {"type": 1, "components": [{"type": 2, "style": 1, "label": "x", "custom_id": "c" * 101}]}
    assert discord_spec.violations(edit, {"components": [row]})


def test_embeds_over_their_combined_limit_are_reported() -> None:
    embed = {"title": "t" * 256, "description": "d" * 4000, "fields": [{"name": "n", "value": "v" * 1000}]}
    assert embed_limit_violations({"embeds": [embed]}) == []
    [over] = embed_limit_violations({"type": 4, "data": {"embeds": [embed, {"description": "d" * 800}]}})
    assert "6057 characters" in over

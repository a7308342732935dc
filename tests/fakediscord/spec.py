"""Validate request bodies against Discord's official OpenAPI document.

Each request is matched to its operation by method and path template; its JSON body (or a multipart request's
`payload_json`) must satisfy that operation's `application/json` request schema. Schemas are resolved lazily
through `referencing`, so the 1 MB document is parsed once and only the parts used are ever walked.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parents[3] / "shared" / "discord-api-spec" / "openapi.json"
SPEC_URI = "urn:discord-openapi"


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    pattern: re.Pattern[str]
    has_json_body: bool


class OpenApiSpec:
    def __init__(self, path: Path = SPEC_PATH) -> None:
        self.document = json.loads(path.read_text())
        self.registry = Registry().with_resource(
            SPEC_URI, Resource.from_contents(self.document, default_specification=DRAFT202012)
        )
        self.operations: list[Operation] = []
        for template, item in self.document["paths"].items():
            for method, operation in item.items():
                if method == "parameters":
                    continue
                content = operation.get("requestBody", {}).get("content", {})
                self.operations.append(
                    Operation(method.upper(), template, _template_pattern(template), "application/json" in content)
                )
        # Literal segments beat parameters: /messages/@original must not match /messages/{message_id}.
        self.operations.sort(key=lambda op: op.template.count("{"))

    def find(self, method: str, path: str) -> Operation | None:
        for operation in self.operations:
            if operation.method == method and operation.pattern.fullmatch(path):
                return operation
        return None

    def violations(self, operation: Operation, body: object) -> list[str]:
        """Schema errors of `body` for `operation`, as readable lines (empty when valid)."""
        if not operation.has_json_body:
            return [] if body is None else [f"{operation.method} {operation.template} takes no JSON body"]
        validator = self._validator(operation.method, operation.template)
        lines = []
        for error in validator.iter_errors(body):
            error = _deepest(error)
            where = "/".join(map(str, error.absolute_path)) or "<body>"
            message = error.message if len(error.message) < 300 else f"{error.message[:100]} … {error.message[-150:]}"
            lines.append(f"{operation.method} {operation.template}: {where}: {message}")
        return lines

    @cache  # noqa: B019 - one spec object per test session
    def _validator(self, method: str, template: str) -> Draft202012Validator:
        pointer = "/".join(
            part.replace("~", "~0").replace("/", "~1")
            for part in ("paths", template, method.lower(), "requestBody", "content", "application/json", "schema")
        )
        return Draft202012Validator({"$ref": f"{SPEC_URI}#/{pointer}"}, registry=self.registry)


EMBED_TOTAL_MAX_CHARS = 6000


def embed_limit_violations(body: object) -> list[str]:
    """Discord's documented limit that no schema can state: the titles, descriptions, field names and values,
    footers and author names of all of a message's embeds hold at most 6000 characters together."""
    if not isinstance(body, dict):
        return []
    data = body.get("data") if isinstance(body.get("data"), dict) else body  # an interaction callback nests it
    total = 0
    for embed in data.get("embeds") or []:
        texts = [embed.get("title"), embed.get("description")]
        texts += [(embed.get("footer") or {}).get("text"), (embed.get("author") or {}).get("name")]
        texts += [text for field in embed.get("fields") or [] for text in (field.get("name"), field.get("value"))]
        total += sum(len(text or "") for text in texts)
    if total > EMBED_TOTAL_MAX_CHARS:
        return [f"embeds hold {total} characters together; Discord allows {EMBED_TOTAL_MAX_CHARS}"]
    return []


def _deepest(error: ValidationError) -> ValidationError:
    """For anyOf/oneOf failures, the leaf error of the branch that matched furthest says the most."""
    leaves = [_deepest(candidate) for candidate in error.context] if error.context else [error]
    return max(leaves, key=lambda leaf: len(leaf.absolute_path))


def _template_pattern(template: str) -> re.Pattern[str]:
    regex = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
    return re.compile(regex)

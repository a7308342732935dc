"""A fake Discord (REST API v10, gateway websocket and CDN) on 127.0.0.1 for end-to-end tests.

The real discord.py client talks to it unchanged except for `discord.http.Route.BASE`. Every request body is
checked against the official OpenAPI document (`spec.py`); a body that breaks the schema, or a route this fake
does not know, is recorded in `violations` and the test using the fixture fails. The fake keeps the state a
test needs to assert on: registered commands, interactions with their acknowledgement time, and messages with
their files, embeds and components.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web
from PIL import Image

from tests.fakediscord import payloads
from tests.fakediscord.spec import OpenApiSpec, Operation, embed_limit_violations

API_PREFIX = "/api/v10"
EPHEMERAL = 1 << 6
LOADING = 1 << 7
TOKEN_LIFETIME = 15 * 60
ACK_DEADLINE = 3.0
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
OPTION_TYPES = {"string": 3, "integer": 4, "boolean": 5, "user": 6, "channel": 7, "number": 10, "attachment": 11}


class DiscordError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class FakeMessage:
    id: int
    channel_id: int
    author: dict
    content: str = ""
    embeds: list[dict] = field(default_factory=list)
    components: list[dict] = field(default_factory=list)
    attachments: list[dict] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # attachment id -> bytes
    flags: int = 0
    deleted: bool = False
    interaction_token: str | None = None

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    def images(self) -> list[Image.Image]:
        return [Image.open(io.BytesIO(self.files[item["id"]])) for item in self.attachments]

    def custom_ids(self) -> list[str]:
        return [
            item["custom_id"] for row in self.components for item in row.get("components", []) if "custom_id" in item
        ]

    def payload(self) -> dict:
        return {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "author": self.author,
            "content": self.content,
            "timestamp": payloads.iso_now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": self.attachments,
            "embeds": self.embeds,
            "components": self.components,
            "pinned": False,
            "type": 0,
            "flags": self.flags,
        }


@dataclass
class FakeInteraction:
    id: int
    token: str
    type: int
    user_id: int
    channel_id: int
    payload: dict
    created_at: float = field(default_factory=time.monotonic)
    callback_type: int | None = None
    acknowledged_at: float | None = None
    original: FakeMessage | None = None
    followups: list[FakeMessage] = field(default_factory=list)
    modal: dict | None = None
    choices: list[dict] | None = None  # an autocomplete's answer
    expired: bool = False

    @property
    def ack_latency(self) -> float | None:
        return None if self.acknowledged_at is None else self.acknowledged_at - self.created_at

    def messages(self) -> list[FakeMessage]:
        return [message for message in [self.original, *self.followups] if message is not None and not message.deleted]


@dataclass
class Failure:
    """An injected error for requests matching `method` and `path` (a regex), `times` times."""

    method: str
    path: str
    status: int
    code: int
    message: str
    times: int = 1


class FakeDiscord:
    def __init__(self, spec: OpenApiSpec, *, upload_limit: int = DEFAULT_UPLOAD_LIMIT) -> None:
        self.spec = spec
        self.upload_limit = upload_limit
        self.application_id = payloads.snowflake()
        self.bot_user = payloads.user(self.application_id, "lcm-bot", bot=True)
        self.owner = payloads.user(payloads.snowflake(), "owner")
        self.guild_id = payloads.snowflake()
        self.channel_id = payloads.snowflake()
        self.other_channel_id = payloads.snowflake()  # a second text channel, for per-channel rules
        self.users: dict[int, dict] = {int(self.owner["id"]): self.owner}
        self.moderators: set[int] = set()
        self.role_ids = {"supporter": payloads.snowflake()}  # roles the guild has, by name
        self.user_roles: dict[int, list[str]] = {}
        self.commands: dict[int | None, list[dict]] = {}  # guild id (None: global) -> registered commands
        self.interactions: dict[str, FakeInteraction] = {}
        self.messages: dict[int, FakeMessage] = {}
        self.files: dict[str, bytes] = {}  # CDN path -> bytes
        self.failures: list[Failure] = []
        self.violations: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.identified = asyncio.Event()
        self._sockets: list[web.WebSocketResponse] = []
        self._sequence = 0
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/cdn/{path:.*}", self._cdn)
        app.router.add_route("*", API_PREFIX + "/{path:.*}", self._rest)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        for socket in self._sockets:
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- test helpers ----------------------------------------------------------------------------------------

    def add_user(self, name: str, *, moderator: bool = False, roles: tuple[str, ...] = ()) -> int:
        user_id = payloads.snowflake()
        self.users[user_id] = payloads.user(user_id, name)
        self.user_roles[user_id] = [str(self.role_ids[role]) for role in roles]
        if moderator:
            self.moderators.add(user_id)
        return user_id

    def upload(self, filename: str, data: bytes, content_type: str = "image/png", **extra: object) -> dict:
        """Put bytes on the fake CDN and return the attachment object an interaction would carry."""
        attachment_id = payloads.snowflake()
        path = f"attachments/{attachment_id}/{filename}"
        self.files[path] = data
        return payloads.attachment(
            attachment_id, filename, len(data), f"{self.base_url}/cdn/{path}", content_type=content_type, **extra
        )

    def registered(self, name: str, guild_id: int | None = None) -> dict:
        for command in self.commands.get(guild_id, []):
            if command["name"] == name:
                return command
        raise KeyError(f"command {name!r} is not registered for guild {guild_id}")

    async def run_command(
        self, user_id: int, name: str, options: dict[str, object] | None = None, *, dm: bool = False
    ) -> FakeInteraction:
        """Dispatch an APPLICATION_COMMAND interaction built from the command the bot registered.

        `name` may be "group subcommand", as typed in Discord.
        """
        return await self._interact(2, user_id, self._command_data(name, options or {}, dm), dm=dm)

    async def autocomplete(
        self, user_id: int, name: str, options: dict[str, object], focused: str, *, dm: bool = False
    ) -> FakeInteraction:
        """Dispatch an APPLICATION_COMMAND_AUTOCOMPLETE interaction: the user is typing option `focused`."""
        data = self._command_data(name, options, dm)
        for option in data["options"]:
            if option["name"] == focused:
                option["focused"] = True
        return await self._interact(4, user_id, data, dm=dm)

    def _command_data(self, name: str, options: dict[str, object], dm: bool) -> dict:
        top, _, subcommand = name.partition(" ")
        command = self.registered(top, None if dm else self.guild_id)
        declared_options = command.get("options", [])
        if subcommand:
            [sub] = [option for option in declared_options if option["name"] == subcommand and option["type"] == 1]
            declared_options = sub.get("options", [])
        declared = {option["name"]: option for option in declared_options}
        data_options, attachments, channels = [], {}, {}
        for option_name, value in options.items():
            declared_option = declared[option_name]  # KeyError: the test used an option the bot did not register
            if declared_option["type"] == OPTION_TYPES["attachment"]:
                attachments[value["id"]] = value
                value = value["id"]
            elif declared_option["type"] == OPTION_TYPES["channel"]:
                channels[str(value)] = payloads.text_channel(value, self.guild_id, "channel") | {"permissions": "0"}
                value = str(value)
            data_options.append({"name": option_name, "type": declared_option["type"], "value": value})
        if subcommand:
            data_options = [{"name": subcommand, "type": 1, "options": data_options}]
        data: dict = {"id": command["id"], "name": top, "type": 1, "options": data_options}
        if not dm:
            data["guild_id"] = str(self.guild_id)
        resolved = {"attachments": attachments, "channels": channels}
        if any(resolved.values()):
            data["resolved"] = {key: value for key, value in resolved.items() if value}
        return data

    async def click(self, user_id: int, message: FakeMessage, custom_id: str) -> FakeInteraction:
        assert custom_id in message.custom_ids(), f"{custom_id} is not on message {message.id}"
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._interact(3, user_id, data, message=message, dm=message.channel_id != self.channel_id)

    async def submit_modal(self, user_id: int, opened_by: FakeInteraction, values: dict[str, str]) -> FakeInteraction:
        modal = opened_by.modal
        assert modal is not None, "no modal was opened"
        rows = []
        for component in modal["components"]:
            inner = component["components"][0] if component["type"] == 1 else component["component"]
            value = {"type": 4, "custom_id": inner["custom_id"], "value": values.get(inner["custom_id"], "")}
            rows.append(
                {"type": 1, "components": [value]} if component["type"] == 1 else {"type": 18, "component": value}
            )
        data = {"custom_id": modal["custom_id"], "components": rows}
        message = opened_by.payload.get("message")
        return await self._interact(
            5, user_id, data, message=self.messages.get(int(message["id"])) if message else None
        )

    def expire(self, interaction: FakeInteraction) -> None:
        """Make the interaction's token as dead as it is 15 minutes after its creation."""
        interaction.expired = True

    def fail(self, method: str, path: str, status: int, code: int, message: str, times: int = 1) -> None:
        self.failures.append(Failure(method, path, status, code, message, times))

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met in time")
            await asyncio.sleep(0.02)

    def channel_messages(self, channel_id: int | None = None) -> list[FakeMessage]:
        channel_id = channel_id or self.channel_id
        return [
            m
            for m in self.messages.values()
            if m.channel_id == channel_id and not m.deleted and not m.interaction_token
        ]

    # -- gateway ---------------------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._sockets.append(socket)
        await socket.send_json({"op": 10, "d": {"heartbeat_interval": 41250}})
        async for message in socket:
            if message.type is not WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            if frame["op"] == 1:
                await socket.send_json({"op": 11})
            elif frame["op"] == 2:
                await self._ready(socket)
            elif frame["op"] == 6:
                await socket.send_json({"op": 9, "d": False})  # no resuming: identify again
        self._sockets.remove(socket)
        return socket

    async def _ready(self, socket: web.WebSocketResponse) -> None:
        ready = {
            "v": 10,
            "user": self.bot_user,
            "guilds": [{"id": str(self.guild_id), "unavailable": True}],
            "session_id": "fake-session",
            "resume_gateway_url": f"{self.base_url.replace('http', 'ws')}/gateway",
            "shard": [0, 1],
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        await self._send(socket, "READY", ready)
        members = [payloads.member(self.bot_user, permissions=payloads.ALL_PERMISSIONS)]
        channel = payloads.text_channel(self.channel_id, self.guild_id, "images")
        other = payloads.text_channel(self.other_channel_id, self.guild_id, "other")
        guild = payloads.guild(self.guild_id, int(self.owner["id"]), [channel, other], members)
        guild["roles"] += [payloads.role(role_id, name) for name, role_id in self.role_ids.items()]
        await self._send(socket, "GUILD_CREATE", guild)
        self.identified.set()

    async def _send(self, socket: web.WebSocketResponse, event: str, data: dict) -> None:
        self._sequence += 1
        await socket.send_json({"op": 0, "t": event, "s": self._sequence, "d": data})

    async def _interact(
        self, kind: int, user_id: int, data: dict, *, message: FakeMessage | None = None, dm: bool = False
    ) -> FakeInteraction:
        await self.identified.wait()
        user = self.users[user_id]
        interaction_id = payloads.snowflake()
        token = f"token-{interaction_id}"
        channel_id = self._dm_channel_id(user_id) if dm else self.channel_id
        body: dict = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": kind,
            "data": data,
            "token": token,
            "version": 1,
            "locale": "en-US",
            "entitlements": [],
            "attachment_size_limit": self.upload_limit,
            "app_permissions": payloads.ALL_PERMISSIONS,
            "channel_id": str(channel_id),
        }
        if dm:
            body |= {"user": user, "channel": payloads.dm_channel(channel_id, user), "context": 1}
            body["authorizing_integration_owners"] = {"1": str(user_id)}
        else:
            is_moderator = user_id in self.moderators or user_id == int(self.owner["id"])
            permissions = payloads.ALL_PERMISSIONS if is_moderator else payloads.MEMBER_PERMISSIONS
            body |= {
                "guild_id": str(self.guild_id),
                "guild_locale": "en-US",
                "member": payloads.member(user, permissions=permissions, roles=self.user_roles.get(user_id, [])),
                "channel": payloads.text_channel(self.channel_id, self.guild_id, "images"),
                "context": 0,
                "authorizing_integration_owners": {"0": str(self.guild_id)},
            }
        if message is not None:
            body["message"] = message.payload()
        interaction = FakeInteraction(interaction_id, token, kind, user_id, channel_id, body)
        self.interactions[token] = interaction
        await self._send(self._sockets[-1], "INTERACTION_CREATE", body)
        return interaction

    def _dm_channel_id(self, user_id: int) -> int:
        return user_id + 1  # stable per user, distinct from any guild channel

    # -- REST ------------------------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["path"]
        self.requests.append((request.method, path))
        body, files = await self._read_body(request)
        operation = self.spec.find(request.method, path)
        if operation is None:
            self.violations.append(f"unknown route {request.method} {path}")
            return _error(404, 0, "404: Not Found")
        self.violations.extend(self.spec.violations(operation, body))
        self.violations.extend(embed_limit_violations(body))
        try:
            self._raise_injected(request.method, path)
            result = await self._handle(operation, request, body, files)
        except DiscordError as exc:
            return _error(exc.status, exc.code, exc.message)
        if result is None:
            return web.Response(status=204)
        return _json(result)

    async def _read_body(self, request: web.Request) -> tuple[object, dict[str, tuple[str, bytes]]]:
        files: dict[str, tuple[str, bytes]] = {}
        if request.content_type == "multipart/form-data":
            body = None
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                else:
                    files[part.name] = (part.filename or part.name, bytes(await part.read()))
            return body, files
        if request.can_read_body:
            return await request.json(), files
        return None, files

    def _raise_injected(self, method: str, path: str) -> None:
        for failure in self.failures:
            if failure.times > 0 and failure.method == method and re.fullmatch(failure.path, path):
                failure.times -= 1
                raise DiscordError(failure.status, failure.code, failure.message)

    async def _handle(self, operation: Operation, request: web.Request, body, files) -> object:
        params = dict(zip(re.findall(r"{(\w+)}", operation.template), _path_values(operation, request), strict=True))
        key = f"{operation.method} {operation.template}"
        handler = self._routes().get(key)
        if handler is None:
            self.violations.append(f"route not implemented by the fake: {key}")
            raise DiscordError(404, 0, "not implemented")
        return handler(params, body, files)

    def _routes(self) -> dict[str, Callable]:
        return {
            "GET /gateway/bot": lambda p, b, f: {
                "url": f"{self.base_url.replace('http', 'ws')}/gateway",
                "shards": 1,
                "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1},
            },
            "GET /users/@me": lambda p, b, f: self.bot_user,
            "GET /oauth2/applications/@me": lambda p, b, f: self._application(),
            "PUT /applications/{application_id}/commands": lambda p, b, f: self._register(None, b),
            "PUT /applications/{application_id}/guilds/{guild_id}/commands": lambda p, b, f: self._register(
                int(p["guild_id"]), b
            ),
            "GET /applications/{application_id}/commands": lambda p, b, f: self.commands.get(None, []),
            "GET /applications/{application_id}/guilds/{guild_id}/commands": lambda p, b, f: self.commands.get(
                int(p["guild_id"]), []
            ),
            "POST /interactions/{interaction_id}/{interaction_token}/callback": self._callback,
            "GET /webhooks/{webhook_id}/{webhook_token}/messages/@original": lambda p, b, f: self._original(
                p
            ).payload(),
            "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/@original": lambda p, b, f: self._edit(
                self._original(p), b, f
            ),
            "DELETE /webhooks/{webhook_id}/{webhook_token}/messages/@original": lambda p, b, f: self._delete(
                self._original(p)
            ),
            "POST /webhooks/{webhook_id}/{webhook_token}": self._followup,
            "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/{message_id}": lambda p, b, f: self._edit(
                self._webhook_message(p), b, f
            ),
            "DELETE /webhooks/{webhook_id}/{webhook_token}/messages/{message_id}": lambda p, b, f: self._delete(
                self._webhook_message(p)
            ),
            "POST /channels/{channel_id}/messages": lambda p, b, f: self._create(int(p["channel_id"]), b, f).payload(),
            "PATCH /channels/{channel_id}/messages/{message_id}": lambda p, b, f: self._edit(self._message(p), b, f),
            "DELETE /channels/{channel_id}/messages/{message_id}": lambda p, b, f: self._delete(self._message(p)),
            "POST /users/@me/channels": lambda p, b, f: payloads.dm_channel(
                self._dm_channel_id(int(b["recipient_id"])), self.users[int(b["recipient_id"])]
            ),
        }

    def _application(self) -> dict:
        return {
            "id": str(self.application_id),
            "name": "lcm-bot",
            "icon": None,
            "description": "",
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "owner": self.owner,
            "team": None,
            "flags": 0,
        }

    def _register(self, guild_id: int | None, commands: list[dict]) -> list[dict]:
        registered = []
        for command in commands:
            registered.append(
                {
                    "id": str(payloads.snowflake()),
                    "application_id": str(self.application_id),
                    "version": str(payloads.snowflake()),
                    "type": command.get("type", 1),
                    "default_member_permissions": None,
                    "nsfw": False,
                    **({"guild_id": str(guild_id)} if guild_id else {}),
                    **command,
                }
            )
        self.commands[guild_id] = registered
        return registered

    def _interaction(self, token: str) -> FakeInteraction:
        interaction = self.interactions.get(token)
        if interaction is None or interaction.expired:
            raise DiscordError(401, 50027, "Invalid Webhook Token")
        return interaction

    def _callback(self, params: dict, body: dict, files) -> dict:
        interaction = self.interactions.get(params["interaction_token"])
        if interaction is None or time.monotonic() - interaction.created_at > ACK_DEADLINE:
            raise DiscordError(404, 10062, "Unknown interaction")
        if interaction.callback_type is not None:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        interaction.callback_type = body["type"]
        interaction.acknowledged_at = time.monotonic()
        data = body.get("data") or {}
        message = None
        if body["type"] in (4, 5):
            flags = (data.get("flags") or 0) & EPHEMERAL | (LOADING if body["type"] == 5 else 0)
            message = self._new_message(interaction.channel_id, flags, interaction.token)
            self._apply(message, data, files)
            interaction.original = message
        elif body["type"] == 7:
            message = self.messages[int(interaction.payload["message"]["id"])]
            self._apply(message, data, files)
        elif body["type"] == 9:
            interaction.modal = data
        elif body["type"] == 8:
            interaction.choices = data["choices"]
        response: dict = {"interaction": {"id": str(interaction.id), "type": interaction.type}}
        if message is not None:
            response["interaction"] |= {
                "response_message_id": str(message.id),
                "response_message_loading": message.loading,
                "response_message_ephemeral": message.ephemeral,
            }
            response["resource"] = {"type": body["type"], "message": message.payload()}
        return response

    def _original(self, params: dict) -> FakeMessage:
        interaction = self._interaction(params["webhook_token"])
        if interaction.original is None:
            if interaction.callback_type == 6 and "message" in interaction.payload:
                return self.messages[int(interaction.payload["message"]["id"])]
            raise DiscordError(404, 10008, "Unknown Message")
        if interaction.original.deleted:
            raise DiscordError(404, 10008, "Unknown Message")
        return interaction.original

    def _webhook_message(self, params: dict) -> FakeMessage:
        interaction = self._interaction(params["webhook_token"])
        for message in interaction.messages():
            if message.id == int(params["message_id"]):
                return message
        raise DiscordError(404, 10008, "Unknown Message")

    def _message(self, params: dict) -> FakeMessage:
        message = self.messages.get(int(params["message_id"]))
        if message is None or message.deleted or message.channel_id != int(params["channel_id"]):
            raise DiscordError(404, 10008, "Unknown Message")
        return message

    def _followup(self, params: dict, body: dict, files) -> dict:
        interaction = self._interaction(params["webhook_token"])
        if interaction.original is not None and interaction.original.loading and not interaction.original.deleted:
            # Discord: the first followup after a deferral replaces the "thinking" message, keeping its flags.
            message = interaction.original
            message.flags &= ~LOADING
        else:
            message = self._new_message(interaction.channel_id, (body.get("flags") or 0) & EPHEMERAL, interaction.token)
            interaction.followups.append(message)
        self._apply(message, body, files)
        return message.payload()

    def _create(self, channel_id: int, body: dict, files) -> FakeMessage:
        if channel_id not in (self.channel_id, self.other_channel_id) and channel_id - 1 not in self.users:
            raise DiscordError(404, 10003, "Unknown Channel")
        message = self._new_message(channel_id, 0, None)
        self._apply(message, body, files)
        return message

    def _edit(self, message: FakeMessage, body: dict, files) -> dict:
        message.flags &= ~LOADING
        self._apply(message, body, files)
        return message.payload()

    def _delete(self, message: FakeMessage) -> None:
        message.deleted = True

    def _new_message(self, channel_id: int, flags: int, token: str | None) -> FakeMessage:
        message = FakeMessage(payloads.snowflake(), channel_id, self.bot_user, flags=flags, interaction_token=token)
        self.messages[message.id] = message
        return message

    def _apply(self, message: FakeMessage, body: dict, files: dict[str, tuple[str, bytes]]) -> None:
        for key in ("content", "embeds", "components"):
            if body.get(key) is not None:
                setattr(message, key, body[key])
        if "attachments" in body or files:
            kept = {item["id"]: item for item in message.attachments}
            attachments = []
            for item in body.get("attachments") or []:
                if str(item["id"]) in kept:
                    attachments.append(kept[str(item["id"])])
                    continue
                filename, data = files[f"files[{item['id']}]"]
                if len(data) > self.upload_limit:
                    raise DiscordError(413, 40005, "Request entity too large")
                attachments.append(self._store_attachment(message, filename, data))
            message.attachments = attachments

    def _store_attachment(self, message: FakeMessage, filename: str, data: bytes) -> dict:
        attachment_id = str(payloads.snowflake())
        path = f"attachments/{message.channel_id}/{attachment_id}/{filename}"
        self.files[path] = data
        message.files[attachment_id] = data
        extra: dict = {"content_type": "image/png" if filename.endswith(".png") else "application/octet-stream"}
        try:
            with Image.open(io.BytesIO(data)) as image:
                extra |= {"width": image.width, "height": image.height}
        except OSError:
            pass
        return payloads.attachment(int(attachment_id), filename, len(data), f"{self.base_url}/cdn/{path}", **extra)

    async def _cdn(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["path"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data)


def _path_values(operation: Operation, request: web.Request) -> list[str]:
    path = "/" + request.match_info["path"]
    regex = re.sub(r"\\\{[^}]+\\\}", "([^/]+)", re.escape(operation.template))
    match = re.fullmatch(regex, path)
    assert match is not None
    return list(match.groups())


def _json(data: object, status: int = 200) -> web.Response:
    # Exactly "application/json", no charset: discord.py compares the header verbatim.
    return web.Response(body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"})


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"code": code, "message": message}, status)

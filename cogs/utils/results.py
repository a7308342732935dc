"""The result message: its embed is both what users read and the state the buttons act on.

Buttons must work after a restart without a database, so everything Reroll, Variation and Remix need (kind,
prompt, negative, steps, guidance, size, seeds) is written into the embed and parsed back from the message
the button sits on. `ResultState.from_embed(build_embed(...))` gives back what went in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import discord

from bot.engine.executor import JobResult
from bot.engine.requests import GenerationRequest, Kind, denoising_steps

SEED_PATTERN = re.compile(r"`(\d+)`")
SIZE_PATTERN = re.compile(r"(\d+)x(\d+) \((\d+:\d+)\)")
COLOUR = discord.Colour.from_rgb(88, 101, 242)


@dataclass(frozen=True)
class ResultState:
    kind: Kind
    prompt: str
    negative: str | None
    steps: int
    guidance: float
    aspect: str
    seeds: tuple[int, ...]
    style: str | None = None

    @classmethod
    def from_embed(cls, embed: discord.Embed) -> ResultState:
        fields = {field.name: field.value for field in embed.fields}
        size = SIZE_PATTERN.fullmatch(fields["Size"] or "")
        if embed.title is None or size is None or embed.description is None:
            raise ValueError("not a result embed")
        return cls(
            kind=Kind(embed.title.removeprefix("/")),
            prompt=embed.description,
            negative=fields.get("Negative"),
            steps=int(fields["Steps"].split()[0]),
            guidance=float(fields["Guidance"]),
            aspect=size.group(3),
            seeds=tuple(int(seed) for seed in SEED_PATTERN.findall(fields["Seeds"])),
            style=fields.get("Style"),
        )


def build_embed(request: GenerationRequest, result: JobResult, requester_name: str) -> discord.Embed:
    embed = discord.Embed(title=f"/{request.kind}", description=request.prompt, colour=COLOUR)
    embed.add_field(name="Seeds", value=" ".join(f"`{seed}`" for seed in result.seeds))
    ran = denoising_steps(request.steps, request.strength)
    embed.add_field(name="Steps", value=str(request.steps) if ran == request.steps else f"{request.steps} ({ran} run)")
    embed.add_field(name="Guidance", value=f"{request.guidance:g}")
    embed.add_field(name="Size", value=f"{request.width}x{request.height} ({request.aspect})")
    if request.kind is not Kind.IMAGINE:
        embed.add_field(name="Strength", value=f"{request.strength:g}")
    if request.style:
        embed.add_field(name="Style", value=request.style)
    if request.negative:
        embed.add_field(name="Negative", value=request.negative, inline=False)
    embed.add_field(
        name="Time",
        value=f"{result.generation_time:.1f} s generating, {result.queue_wait:.1f} s in queue",
        inline=False,
    )
    embed.set_footer(text=f"Requested by {requester_name}")
    return embed


def status_text(position: int | None, eta: float) -> str:
    """Coarse on purpose: the message is edited only when this text changes, so a second-by-second countdown
    would cost an edit per job every few seconds for no real information."""
    if position == 0:
        return f"Generating… {_about(eta)} left."
    return f"Queued: position {position}, {_about(eta)}."


def _about(seconds: float) -> str:
    if seconds < 10:
        return "a few seconds"
    if seconds < 60:
        return f"about {5 * round(seconds / 5)} s"
    return f"about {round(seconds / 60)} min"

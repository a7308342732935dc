from __future__ import annotations

import io

from PIL import Image

from tests.fakediscord import FakeDiscord


def png(size: tuple[int, int], colour: str = "orange", mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_imagine_delivers_pngs_of_the_bucket_size(fake: FakeDiscord, start_bot, buckets) -> None:
    await start_bot()
    user = fake.add_user("alice")
    interaction = await fake.run_command(user, "imagine", {"prompt": "a red fox", "aspect": "16:9", "count": 2})
    await fake.wait_for(lambda: interaction.original is not None and interaction.original.attachments)
    message = interaction.original
    assert [image.size for image in message.images()] == [buckets["16:9"]] * 2
    assert message.embeds[0]["description"] == "a red fox"
    assert interaction.ack_latency < 1.0

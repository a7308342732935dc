"""The Prometheus series the executor reports, and the HTTP endpoints, in-process and in a real bot process."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.engine.executor import Executor
from bot.engine.requests import GenerationRequest, Kind, check_inputs
from bot.errors import GenerationFailed, JobCancelled
from bot.metrics import Health, Metrics, serve_metrics
from tests.fakediscord import FakeDiscord
from tests.support.bot_process import start_bot_process
from tests.support.runners import RecordingRunner
from tests.support.tiny_model import TinyModel

# The series the README documents, as Prometheus sees them (histograms by their _count sample).
DOCUMENTED = (
    "lcm_bot_jobs_total",
    "lcm_bot_images_total",
    "lcm_bot_queue_wait_seconds_count",
    "lcm_bot_generation_seconds_count",
    "lcm_bot_batch_images_count",
    "lcm_bot_queue_depth",
    "lcm_bot_workers",
    "lcm_bot_gpu_memory_bytes",
)


def samples(exposition: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = exposition.decode() if isinstance(exposition, bytes) else exposition
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics.exposition())[(name, tuple(sorted(labels.items())))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def imagine(buckets, prompt: str, **options: object) -> GenerationRequest:
    return check_inputs(Kind.IMAGINE, prompt, buckets=buckets, steps=1, **options)


async def test_executor_reports_jobs_images_waits_and_batches(pipes, buckets) -> None:
    runner = RecordingRunner(pipes)
    runner.gate.clear()
    executor = Executor(
        runner, model_name="tiny", max_batch_images=4, queue_max=10, user_max_pending=10, batch_timeout=60
    )
    metrics = executor.metrics
    executor.start()
    first = executor.submit(imagine(buckets, "a fox"), user_id=1)
    await asyncio.to_thread(runner.waiting.wait, 10)  # the GPU thread holds the first batch
    owl = executor.submit(imagine(buckets, "an owl", count=2), user_id=2)
    boom = executor.submit(imagine(buckets, "boom"), user_id=3)  # batched with the owl, fails, is isolated
    cat = executor.submit(imagine(buckets, "a cat"), user_id=4)
    executor.cancel(cat.id)
    assert value(metrics, "lcm_bot_queue_depth") == 2
    assert value(metrics, "lcm_bot_workers") == 1
    runner.gate.set()
    await first.result()
    await owl.result()
    with pytest.raises(GenerationFailed):
        await boom.result()
    with pytest.raises(JobCancelled):
        await cat.result()
    await executor.close()

    assert value(metrics, "lcm_bot_jobs_total", status="done") == 2
    assert value(metrics, "lcm_bot_jobs_total", status="failed") == 1
    assert value(metrics, "lcm_bot_jobs_total", status="cancelled") == 1
    assert value(metrics, "lcm_bot_images_total") == 3
    assert value(metrics, "lcm_bot_queue_wait_seconds_count") == 3  # once per job that ran, retries included
    assert value(metrics, "lcm_bot_batch_images_count") == 2  # the fox, then the owl alone after the failure
    assert value(metrics, "lcm_bot_batch_images_sum") == 3
    assert value(metrics, "lcm_bot_generation_seconds_count") == 2
    assert value(metrics, "lcm_bot_workers") == 0
    assert value(metrics, "lcm_bot_gpu_memory_bytes") == 0  # no GPU here


async def test_endpoints_serve_the_series_and_the_health_state() -> None:
    metrics, port = Metrics(), free_port()
    state = Health(ok=True, detail={"discord": True, "engine": True})
    async with serve_metrics(port, metrics, lambda: state, host="127.0.0.1"), aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=")
            names = {name for name, _ in samples(await response.text())}
        async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 200 and (await response.json())["ok"] is True
        state = Health(ok=False, detail={"discord": False, "engine": True})
        async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 503 and (await response.json())["discord"] is False
    assert {"lcm_bot_queue_depth", "lcm_bot_workers", "lcm_bot_gpu_memory_bytes"} <= names


async def test_a_running_bot_serves_metrics_and_health(
    fake: FakeDiscord, tiny_model: TinyModel, tmp_path: Path
) -> None:
    port = free_port()
    process = await start_bot_process(fake, tiny_model, tmp_path / "bot.sqlite3", METRICS_PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def health() -> int:
                async with http.get(f"{base}/healthz") as response:
                    return response.status

            status = 0
            for _ in range(100):
                status = await health()
                if status == 200:
                    break
                await asyncio.sleep(0.1)
            assert status == 200
            interaction = await fake.run_command(fake.add_user("ada"), "imagine", {"prompt": "a lighthouse"})
            await fake.wait_for(lambda: any(message.attachments for message in interaction.messages()), 120)
            async with http.get(f"{base}/metrics") as response:
                exposed = samples(await response.text())
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0
    assert {name for name, _ in exposed} >= set(DOCUMENTED)
    assert exposed[("lcm_bot_jobs_total", (("status", "done"),))] == 1
    assert exposed[("lcm_bot_images_total", ())] == 1

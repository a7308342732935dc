"""A real redis-server and `lcm-bot worker` processes on the tiny model, for the scale-out tests and benchmark."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from bot.queue.celery_app import make_celery
from bot.settings import Settings
from tests.support.bot_process import REPOSITORY


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    def __init__(self, folder: Path) -> None:
        self.port, self.folder = free_port(), folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen([*command, "--dir", str(self.folder)], stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    return
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


class Workers:
    """`lcm-bot worker` processes, started and killed on demand."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = make_celery(settings)
        self.processes: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        """A new worker, once it answers Celery's ping (with every other running worker)."""
        process = self.launch()
        expected = sum(1 for running in self.processes if running.poll() is None)
        deadline = time.monotonic() + 120
        while len(self.app.control.ping(timeout=0.5)) < expected:
            assert process.poll() is None, "the worker exited at start"
            assert time.monotonic() < deadline, "the worker did not come up"
        return process

    def launch(self) -> subprocess.Popen:
        """A new worker process, without waiting for it: it connects to Redis whenever Redis is there."""
        environment = {
            **os.environ,
            "PYTHONPATH": str(REPOSITORY),
            "HF_HUB_OFFLINE": "1",
            **{name.upper(): str(value) for name, value in self.settings.model_dump().items() if value is not None},
            "LOG_LEVEL": "WARNING",
        }
        environment.pop("DISCORD_TOKEN", None)
        environment["LIMIT_EXEMPT_ROLES"] = "[]"
        process = subprocess.Popen([sys.executable, "-m", "bot", "worker"], cwd=REPOSITORY, env=environment)
        self.processes.append(process)
        return process

    @contextlib.contextmanager
    def restarted_when_they_exit(self) -> Iterator[None]:
        """Start a new worker for each that exits, as the compose file's `restart: unless-stopped` does. Celery's
        Redis transport can fail to close its channel when Redis goes away mid-task, and then the worker exits
        ("Unrecoverable error"); its supervisor brings it back, and the jobs the bot sends again reach it."""
        stop = threading.Event()

        def supervise() -> None:
            while not stop.wait(0.2):
                for process in [process for process in self.processes if process.poll() is not None]:
                    self.processes.remove(process)
                    self.launch()

        supervisor = threading.Thread(target=supervise, name="worker-supervisor", daemon=True)
        supervisor.start()
        try:
            yield
        finally:
            stop.set()
            supervisor.join()

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(30)
            if process.poll() is None:
                process.kill()

"""The Celery application both sides share: where Redis is, how messages are encoded, when they are acknowledged.

- msgpack only (`accept_content`): a message in any other encoding, pickle above all, is refused unread, so
  whoever can write to Redis still cannot make a worker run code.
- Late acknowledgement, and rejection when the worker process is lost: a task is removed from Redis only after
  it finished, so a worker killed mid-job leaves it to be delivered again, to another worker, once the
  visibility timeout (`REDIS_VISIBILITY_TIMEOUT`) has passed.
- A prefetch multiplier of 1: a worker holds no more tasks than it has threads (see `bot.queue.worker`).
- Errors travel as result values (`{"error": ...}`), not as pickled or reconstructed exceptions.
"""

from __future__ import annotations

from celery import Celery

from bot.settings import Settings

GENERATE_TASK = "lcm_bot.generate"
RESULT_TTL_SECONDS = 24 * 3600  # long enough for a bot restarted after a crash to collect finished results


def make_celery(settings: Settings) -> Celery:
    app = Celery("lcm_bot", broker=settings.redis_url, backend=settings.redis_url)
    transport = {"visibility_timeout": settings.redis_visibility_timeout}
    app.conf.update(
        task_serializer="msgpack",
        result_serializer="msgpack",
        accept_content=["msgpack"],
        result_accept_content=["msgpack"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        result_expires=RESULT_TTL_SECONDS,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app

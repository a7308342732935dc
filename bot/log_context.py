"""Every log record carries the id of the job it concerns (`job_id`, "-" when none), so one job's story can be
followed through a busy log. The id lives in a context variable: set once in the task (or worker thread) that
handles the job, it reaches every record logged there, whichever module logs it."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextvars import ContextVar

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [job %(job_id)s]: %(message)s"

current_job: ContextVar[str] = ContextVar("current_job", default="-")


def for_jobs(job_ids: Iterable[str]) -> None:
    """Name the job (or the jobs of a batch) this task or thread is working on from now on."""
    current_job.set(",".join(job_ids) or "-")


def install(level: str) -> None:
    """Root logging with the job id in every line; records of any library get the field too."""
    make_record = logging.getLogRecordFactory()

    def with_job_id(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        record.job_id = current_job.get()
        return record

    logging.setLogRecordFactory(with_job_id)
    logging.basicConfig(level=level, format=LOG_FORMAT)

"""Scale-out over Redis with Celery (`QUEUE_BACKEND=redis`): the bot sends jobs, `lcm-bot worker`s run them.

The bot keeps the fair queue and the caps (`bot.engine.executor.JobQueue`) and releases jobs to Redis only as
fast as the workers take them, so fairness holds across every worker. Each worker runs the local executor, so
it still batches the jobs it holds.
"""

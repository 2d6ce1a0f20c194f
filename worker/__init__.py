"""mpq worker: Celery tasks, the Redis job store and the embedded Redis default."""

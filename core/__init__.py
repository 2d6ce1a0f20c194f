"""What mpq's producers and workers agree on: the job contract, every Redis key, the job
store and its Lua, settings, and dispatch (task names, queues, publishing). Importing it
builds no Celery app and starts nothing."""

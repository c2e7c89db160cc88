"""`ftctl serve`: the HTTP face of the same core verbs (FastAPI + uvicorn).

Reads (versions, status, reports, metrics) call the core functions in the API process; every
mutating verb runs as the real `ftctl --json ...` command line in a separate process (a job run
by the worker, or a short synchronous run for deploy/promote/rollback). So a job takes the same
run lock, prints the same JSON and logs the same events as the CLI, and a crash inside it never
takes the API down. Jobs are persisted in SQLite under .ftctl/serve/.
"""

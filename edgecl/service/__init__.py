"""The learner's HTTP service (API v1), its status page and the CLI's HTTP client.

Needs the ``learner`` extra (FastAPI, uvicorn, python-multipart, httpx); ``edgecl learn``
starts it. The reference is docs/learner.md.
"""

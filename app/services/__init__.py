"""Use cases shared by the API, the worker and the CLI. Services own the commit."""

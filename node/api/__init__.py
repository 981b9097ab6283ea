"""The operator, management and (later) regulator HTTP API (FastAPI, OpenAPI)."""

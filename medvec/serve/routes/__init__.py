"""The HTTP API's routes, one module per area; `http_api.create_app` puts them together."""

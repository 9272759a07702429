"""Servers: the HTTP API with its web page, the MCP tool server, the NIM-protocol embed server."""

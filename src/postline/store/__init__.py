"""Persistence: the schema and one module of named queries per aggregate."""

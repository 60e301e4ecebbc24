"""The backend client: mTLS context, connection pool, CONNECT proxy, SSE parser.

Nothing is imported here: ``goose_proxy.upstream.sse`` (public through the
package's lazy names) stays free of anyio; import the modules themselves.
"""

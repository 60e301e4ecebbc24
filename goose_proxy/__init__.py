"""goose-proxy: a Chat Completions ⇄ Responses API translation proxy with mTLS."""

__version__ = "0.1.0"

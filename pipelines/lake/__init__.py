"""The lake: versioned tables with atomic publication, and the ingest that fills them."""

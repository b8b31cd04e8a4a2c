"""AI enrichment: topics, entities, themes and a summary per document, from a Gemini model.

Sits beside library/ and stores/ and is called by the applier (sync/)
through `enricher.Enricher.for_upload`; it reuses the Gemini client
construction and the Pacer of stores/. Results are cached by content in the
state database, so a model is asked once per (content, version). Importing
the package does not import the SDK (pending.py must stay light for status).
"""
